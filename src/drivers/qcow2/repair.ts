/**
 * Open-time repair of a dirty image (lazy refcounts after a crash), as QEMU 7.2's
 * qcow2_do_open: the refcounts on disk may be lower than the references, so a full
 * `check -r all` runs before anything is allocated. Its lines go to `report` as a check's do
 * (QEMU prints them on stderr); a repair that leaves an error fails the open. The check clears
 * the dirty bit once nothing is left wrong.
 */
import { BlockError, ERRNO_MESSAGES, toBlockError } from '../../block/errors.js';
import { qcow2Check } from './check.js';
import type { BDRVQcow2State } from './state.js';

const FAILED = 'Could not repair dirty image';

export async function qcow2RepairDirty(s: BDRVQcow2State, report?: (line: string) => void): Promise<void> {
  let checkErrors: number;
  try {
    ({ checkErrors } = await qcow2Check(s, { leaks: true, errors: true, report }));
  } catch (e) {
    const be = toBlockError(e);
    throw new BlockError(be.code, `${FAILED}: ${ERRNO_MESSAGES[be.code]}`, { op: 'open', cause: e });
  }
  if (checkErrors > 0) throw new BlockError('EIO', `${FAILED}: ${ERRNO_MESSAGES.EIO}`, { op: 'open' });
}
