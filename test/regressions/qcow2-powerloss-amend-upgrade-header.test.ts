/**
 * Found by the qcow2 powerloss fuzz (`npm run fuzz -- --format qcow2 --seed 20261208 --runs
 * 1500 --narrow --only powerloss`, its 701st case): a v2 image over a qcow2 backing file is
 * amended (compat upgrade) and the power is cut, with torn sectors, inside the amend. The
 * image then did not open: its backing file name read as NULs. The upgrade rewrote the header,
 * its extensions and the backing file name in one write spanning two sectors, and the cut
 * kept the new sector 0 (pointing at the name's new place) without the sector holding it.
 * header-update.ts now orders a rewrite so that every cut leaves a header that opens.
 */
import { it } from 'vitest';
import { propPowerLoss } from '../property/powerloss-props.js';
import { QCOW2_PROFILE } from '../property/qcow2-profile.js';

it('a power cut inside an amend upgrade leaves a header that opens', async () => {
  await propPowerLoss({ seed: 20261208, numRuns: 701, wide: false, format: QCOW2_PROFILE });
}, 120_000);
