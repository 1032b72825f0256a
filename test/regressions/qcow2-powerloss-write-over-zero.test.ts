/**
 * Bug found by the qcow2 powerloss property (fuzz seed 11, 100 runs): a flushed write
 * over the whole image (cluster size 2048, image 2560 bytes), write-zeroes over [1, 2560)
 * (cluster 1 becomes a zero cluster that keeps its host cluster), then a write of [0, 2049).
 * That write keeps both clusters in place, and handleAllocSpace (io.ts) zeroes the host range
 * of the whole allocation, cluster 0 included, before the data goes out: the power goes after
 * the zeroing and guest byte 0, which nothing zeroed, reads 0. Zeroing must stop at clusters
 * whose old contents nobody reads: Qcow2L2Meta.overwritesData marks such runs (alloc.ts), and
 * handleAllocSpace skips them (the same cause as qcow2-failed-write-over-zero).
 */
import { it } from 'vitest';
import { propPowerLoss } from '../property/powerloss-props.js';
import { QCOW2_PROFILE } from '../property/qcow2-profile.js';

const counterexample = {
  geom: { clusterSize: 2048, tableSize: 1, size: 2560, backing: 'none', backingSize: 2560, backingClusterSize: 4096, seed: 1, formatOptions: {} },
  ops: [
    { w: { kind: 'write', span: { at: 0, len: 41046016, place: 'any' }, seed: 0 }, flushAfter: true, withNext: false },
    { w: { kind: 'zero', span: { at: 748410881, len: 755753470, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
    { w: { kind: 'write', span: { at: 0, len: 15434752, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
  ],
  crashAfter: 15,
  crashSeed: 585112294,
  after: [],
  repairCrash: null,
};

it('a power loss after a write over a zeroed cluster leaves every sector old or new', async () => {
  await propPowerLoss({ numRuns: 1, format: QCOW2_PROFILE, examples: [[counterexample]] });
});
