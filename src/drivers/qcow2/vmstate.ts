/**
 * The VM state area (QEMU's qcow2_save_vmstate / qcow2_load_vmstate): guest RAM and device
 * state saved with a snapshot live in the image itself, mapped by the active L1 right after
 * the guest disk, from the first L2 table boundary at or past its end. They go through the
 * ordinary request path; a write there grows the L1 as needed.
 */
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { qcow2CoPwritev } from './io.js';
import { qcow2CoPreadv } from './read.js';
import { sizeToL1 } from './header.js';
import { type BDRVQcow2State, qcow2File, qcow2State } from './state.js';

/** qcow2_vm_state_offset: the guest offset where the VM state starts. */
export function qcow2VmStateOffset(s: BDRVQcow2State): number {
  const l2Span = s.clusterSize * s.l2Size;
  return sizeToL1(s.header.size, s.clusterBits, s.extendedL2) * l2Span;
}

export async function qcow2SaveVmstate(bs: BlockDriverState, qiov: IOVector, pos: number): Promise<void> {
  const s = qcow2State(bs);
  await qcow2File(s).debugEvent('vmstate_save');
  await qcow2CoPwritev(s, qcow2VmStateOffset(s) + pos, qiov.size, qiov);
}

export async function qcow2LoadVmstate(bs: BlockDriverState, qiov: IOVector, pos: number): Promise<void> {
  const s = qcow2State(bs);
  await qcow2File(s).debugEvent('vmstate_load');
  await qcow2CoPreadv(s, qcow2VmStateOffset(s) + pos, qiov.size, qiov);
}
