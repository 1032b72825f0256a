/**
 * Found by the qcow2 blkdebug fuzz (`npm run fuzz -- --format qcow2 --seed 20261207 --runs
 * 1200 --narrow --only blkdebug`, its 1060th case): an allocating write to an image with an
 * external data file, over a QED backing file, failed in its copy-on-write (EIO injected at
 * read_backing_aio). The abort path gave the allocation's clusters back through the qcow2
 * file's refcounts, but a data file's clusters are counted by nobody: it dropped the
 * reference of whichever qcow2 metadata cluster has that offset (here the header), a
 * corruption for check. QEMU's qcow2_alloc_cluster_abort frees nothing when the image has a
 * data file; nor do we now. The test replays the run up to that case.
 */
import { it } from 'vitest';
import { propBlkdebug } from '../property/fault-props.js';
import { QCOW2_PROFILE } from '../property/qcow2-profile.js';

it('a copy-on-write that fails leaves the refcounts of a data-file image alone', async () => {
  await propBlkdebug({ seed: 20261207, numRuns: 1060, wide: false, format: QCOW2_PROFILE });
}, 120_000);
