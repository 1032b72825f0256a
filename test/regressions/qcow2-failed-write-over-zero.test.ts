/**
 * Found by the qcow2 blkdebug property: a write over a zeroed cluster and a partial tail
 * cluster that still held data (cluster size 1024, image 1536 bytes) failing at write_aio left
 * guest sector 2 reading neither its old bytes nor the new ones after the reopen. The
 * allocation kept both clusters (zero-alloc and normal) and zeroed the whole range before the
 * data write, tail data included. The failed request must leave every sector old or new.
 */
import { it } from 'vitest';
import { propBlkdebug } from '../property/fault-props.js';
import { QCOW2_PROFILE } from '../property/qcow2-profile.js';

const counterexample = {
  geom: { clusterSize: 1024, tableSize: 1, size: 1536, backing: 'none', backingSize: 1536, backingClusterSize: 4096, seed: 1, formatOptions: {} },
  before: [
    { kind: 'write', span: { at: 0, len: 1024, place: 'any' }, seed: 0 },
    { kind: 'zero', span: { at: 0, len: 246215679, place: 'any' }, seed: 0 },
  ],
  target: { kind: 'write', span: { at: 0, len: 1109513220, place: 'edge' }, seed: 0 },
  event: 'write_aio',
  errno: 5,
  immediately: false,
  cold: false,
  targetKind: 'write',
};

it('a failed write over a zeroed cluster leaves every sector old or new', async () => {
  await propBlkdebug({ numRuns: 1, format: QCOW2_PROFILE, examples: [[counterexample]] });
});
