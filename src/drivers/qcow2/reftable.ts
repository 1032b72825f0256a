/**
 * Reftable growth (QEMU's qcow2_refcount_area): when a refcount block is needed beyond the end
 * of the refcount table, new self-describing structures are laid after everything in use —
 * the missing refcount blocks, then a table with room to spare — written in that order, and
 * the header switched to the new table with one synchronous write before the old one is freed.
 */
import { BlockError } from '../../block/errors.js';
import { REFT_OFFSET_MASK } from './entries.js';
import { QCOW_MAX_REFTABLE_SIZE } from './header.js';
import { refcountMetadataSize } from './refcount-codec.js';
import { qcow2GetRefcount } from './refcount.js';
import { type BDRVQcow2State, qcow2File } from './state.js';
import { qcow2SwitchTable, REFCOUNT_TABLE } from './table-switch.js';

/**
 * Create a new reftable and the refcount blocks covering themselves plus `additional`
 * clusters, starting at `startOffset` (the end of everything in use), and switch to it
 * (qcow2_refcount_area). Returns the offset after the new structures.
 */
export async function qcow2RefcountArea(
  s: BDRVQcow2State,
  startOffset: number,
  additional: number,
  exactSize: boolean,
  newRefblockIndex: number,
  newRefblockOffset: number,
): Promise<number> {
  const cs = s.clusterSize;
  const { blocks: totalBlocks } = refcountMetadataSize(startOffset / cs + additional, cs, s.refcountOrder, !exactSize);
  if (totalBlocks > QCOW_MAX_REFTABLE_SIZE) throw new BlockError('EFBIG', undefined, { op: 'refcount' });
  const areaIndex = Math.floor(startOffset / cs / s.refcountBlockEntries);
  let tableSize = exactSize ? totalBlocks : totalBlocks + Math.ceil(totalBlocks / 2);
  const perCluster = cs / 8;
  tableSize = Math.ceil(tableSize / perCluster) * perCluster;
  const tableClusters = (tableSize * 8) / cs;
  if (tableSize > QCOW_MAX_REFTABLE_SIZE) throw new BlockError('EFBIG', undefined, { op: 'refcount' });

  const newTable = new BigUint64Array(tableSize);
  newTable.set(s.refcountTable.subarray(0, Math.min(tableSize, s.refcountTable.length)));
  if (newRefblockOffset !== 0) newTable[newRefblockIndex] = BigInt(newRefblockOffset);

  let additionalBlocks = 0;
  for (let i = areaIndex; i < totalBlocks; i++) if (newTable[i] === 0n) additionalBlocks++;
  const tableOffset = startOffset + additionalBlocks * cs;
  const endOffset = tableOffset + tableClusters * cs;

  let blockOffset = startOffset;
  for (let i = areaIndex; i < totalBlocks; i++) {
    let e;
    if (newTable[i] !== 0n) {
      e = await s.refcountCache.get(Number(newTable[i] & REFT_OFFSET_MASK), 'refblock_load');
    } else {
      e = await s.refcountCache.getEmpty(blockOffset);
      s.refcountCache.markDirty(e);
      newTable[i] = BigInt(blockOffset);
      blockOffset += cs;
    }
    const firstCovered = i * s.refcountBlockEntries * cs;
    if (firstCovered < endOffset) {
      // Every new structure gets refcount 1.
      let j = firstCovered < startOffset ? (startOffset - firstCovered) / cs : 0;
      const endIndex = Math.min((endOffset - firstCovered) / cs, s.refcountBlockEntries);
      for (; j < endIndex; j++) s.setRefcount(e.data, j, 1);
      s.refcountCache.markDirty(e);
    }
    s.refcountCache.put(e);
  }

  const file = qcow2File(s);
  // Blocks first, then the table that points at them, then the header that points at it.
  await file.debugEvent('refblock_alloc_write_blocks');
  await s.refcountCache.flush();
  const old = { offset: s.refcountTableOffset, bytes: s.refcountTable.length * 8 };
  await qcow2SwitchTable(s, REFCOUNT_TABLE, newTable, tableOffset, [tableOffset, tableClusters], old, () => {
    s.refcountTable = newTable;
    s.refcountTableOffset = tableOffset;
  });
  return endOffset;
}


/** The last cluster with a non-zero refcount, -1 if none (qcow2_get_last_cluster). */
export async function qcow2GetLastCluster(s: BDRVQcow2State, fileSize: number): Promise<number> {
  for (let i = Math.ceil(fileSize / s.clusterSize) - 1; i >= 0; i--) {
    if ((await qcow2GetRefcount(s, i)) > 0) return i;
  }
  return -1;
}
