/**
 * Bug found by the qcow2 corruption fuzz (`npm run fuzz -- --format qcow2 --seed 20261208
 * --runs 2000 --narrow --only corruption`): an L1 entry past the table's used part pointing at
 * cluster 10 and an L2 entry pointing at cluster 0, then `check -r`: the repair allocates a
 * typed array sized from the damaged entries (RangeError: Invalid typed array length) instead
 * of failing with a BlockError. The check now refuses a file with more clusters than it can
 * count (EFBIG), as QEMU fails to allocate its table.
 */
import { it } from 'vitest';
import { runCorruptCase, type CorruptCase } from '../property/corruption.js';
import { QCOW2_PROFILE } from '../property/qcow2-profile.js';

const counterexample = {"geom": {"clusterSize": 512, "tableSize": 1, "size": 76288, "backing": "none", "backingSize": 76288, "backingClusterSize": 4096, "seed": 1, "formatOptions": {}}, "inBacking": false, "writes": [{"kind": "write", "span": {"at": 0, "len": 0, "place": "any"}, "seed": 0}, {"kind": "write", "span": {"at": 2746880, "len": 0, "place": "any"}, "seed": 0}, {"kind": "write", "span": {"at": 5493760, "len": 0, "place": "any"}, "seed": 0}, {"kind": "write", "span": {"at": 592271159, "len": 202, "place": "any"}, "seed": 208242}, {"kind": "write", "span": {"at": 0, "len": 0, "place": "any"}, "seed": 0}], "mutations": [{"kind": "l1", "index": 323, "value": {"k": "cluster", "n": 10}}, {"kind": "l2", "table": 0, "index": 0, "value": {"k": "cluster", "n": 0}}], "ops": [{"kind": "write", "span": {"at": 827702683, "len": 1978281061, "place": "any"}, "seed": 0}]} as unknown as CorruptCase;

it('check -r on damaged L1/L2 entries ends in a result or a BlockError', async () => {
  await runCorruptCase(counterexample, QCOW2_PROFILE);
});
