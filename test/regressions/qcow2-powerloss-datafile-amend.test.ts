/**
 * Found by the qcow2 powerloss fuzz (`npm run fuzz -- --format qcow2 --seed 3 --runs 200
 * --only powerloss`, wide geometries): after power loss, a guest sector of an image with an
 * external data file over a qcow2 backing file read as zeros, neither its old content nor a
 * written one. The L2 cache's "data-file flush before my entries" was dropped when an amend
 * (refcount_bits=1) switched the cache dependencies; see dataFileAmendCase.
 */
import { expect, it } from 'vitest';
import { dataFileAmendCase, runPowerLossCase } from '../property/powerloss-props.js';
import { QCOW2_PROFILE } from '../property/qcow2-profile.js';

it('an amend between a COW into the data file and its L2 entry keeps data before the entry', async () => {
  // pick 105 is the refcount_bits=1 amend: the case depends on it.
  expect(QCOW2_PROFILE.amendChoices?.[105 % QCOW2_PROFILE.amendChoices.length]).toEqual({ refcountBits: 1 });
  await runPowerLossCase(dataFileAmendCase, QCOW2_PROFILE);
});
