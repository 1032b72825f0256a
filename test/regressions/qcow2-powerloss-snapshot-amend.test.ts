/**
 * Open bug found by the qcow2 powerloss fuzz (`npm run fuzz -- --format qcow2 --seed 20261208
 * --runs 2000 --narrow --only powerloss`): after the open-time repair, check still finds 2
 * corruptions and 3 leaks. The shrunk case: a lazy-refcounts image, a write, a snapshot create,
 * an amend to compat=0.10 (refused: the zero clusters of an image with snapshots are not
 * expanded), the power cut at request 24. Replayed alone, that case passes: it depends on state
 * left by the earlier cases of the same run, so this test replays the run up to the failure
 * (its 14th case), on the profile's geometries of that time (no subclusters). Flip `it.fails`
 * to `it` once fixed.
 */
import { it } from 'vitest';
import { propPowerLoss } from '../property/fault-props.js';
import { QCOW2_PROFILE_NO_EXTL2 } from '../property/qcow2-profile.js';

it.fails('a power loss around a snapshot and a refused downgrade leaves only leaks after repair', async () => {
  await propPowerLoss({ seed: 20261208, numRuns: 14, wide: false, format: QCOW2_PROFILE_NO_EXTL2 });
}, 120_000);
