/**
 * One L2 table of a check (QEMU's check_refcounts_l2): count what its entries reference, report
 * what is wrong with them and, with -r all, rewrite the entries that can be made right.
 *
 * Rewrites are single entries written synchronously (QEMU's bdrv_pwrite_sync of the entry),
 * each after the overlap check, so that a repair interrupted half-way leaves every entry either
 * old or new and never a torn table. Entries rewritten here reference nothing afterwards, so
 * they are not counted.
 *
 * Besides QEMU's checks, three of ours: an entry with reserved bits set (QEMU only reports it)
 * loses them when it is otherwise valid; a zero entry in a v2 image (which QEMU's own reads
 * refuse) is a corruption, a plain one repaired into "unallocated" when there is no backing
 * file; and a data or compressed reference into metadata (header, L1/L2 tables, refcount
 * structures, snapshot table) is a corruption, repaired into a zero cluster (v3) or an
 * unallocated one (v2 without backing file) so the guest can never write over metadata.
 */
import type { CheckFix } from '../../block/driver.js';
import { ERRNO_MESSAGES, toBlockError } from '../../block/errors.js';
import type { CheckRun } from './check-imrt.js';
import type { CheckSeen } from './check-seen.js';
import { incRefcounts } from './check-imrt.js';
import { QCOW2_OL_ACTIVE_L2, QCOW2_OL_INACTIVE_L2, qcow2PreWriteOverlapCheck } from './corrupt.js';
import {
  L2E_OFFSET_MASK,
  L2E_STD_RESERVED_MASK,
  QCOW_L2_BITMAP_ALL_ALLOC,
  QCOW_L2_BITMAP_ALL_ZEROES,
  QCOW_OFLAG_COPIED,
  QCOW_OFLAG_ZERO,
  clusterType,
  decodeCompressed,
  nextUsedSlot,
  tableWords,
} from './entries.js';
import { qcow2File } from './state.js';
import { qcow2HasDataFile } from './data-file.js';

const hex = (v: bigint | number): string => v.toString(16);

/**
 * The walk of one table. Positions are in clusters (fractional when misaligned), not bytes: a
 * byte offset past 2 GiB is no small integer, and the first one stored in a field made V8
 * change the object's shape and throw away countPlainEntries's optimised code.
 */
interface L2Walk {
  c: CheckRun;
  fix: CheckFix;
  /** Where the table lies. */
  l2Cluster: number;
  active: boolean;
  table: Uint8Array;
  /** Where the next data cluster would follow the last one (0: none yet). */
  nextCluster: number;
  /** Where this table's entries are kept for the COPIED pass; dropped at the first other entry. */
  seen: CheckSeen | undefined;
}

/** Write entry `i` (and its bitmap) synchronously; false when the write failed (reported). */
async function rewriteEntry(w: L2Walk, i: number, entry: bigint, bitmap: bigint | null): Promise<boolean> {
  const { c } = w;
  const s = c.s;
  const l2Offset = w.l2Cluster * s.clusterSize;
  const at = l2Offset + i * s.l2EntrySize;
  const buf = new Uint8Array(bitmap === null ? 8 : 16);
  const v = new DataView(buf.buffer);
  v.setBigUint64(0, entry);
  if (bitmap !== null) v.setBigUint64(8, bitmap);
  try {
    qcow2PreWriteOverlapCheck(s, w.active ? QCOW2_OL_ACTIVE_L2 : QCOW2_OL_INACTIVE_L2, at, buf.length);
  } catch (e) {
    c.report('ERROR: Overlap check failed');
    c.res.checkErrors++;
    // Something is seriously wrong: stop checking this table.
    throw e;
  }
  try {
    const file = qcow2File(s);
    await file.pwrite(at, buf);
    await file.flush();
  } catch (e) {
    c.report(`ERROR: Failed to overwrite L2 table entry: ${ERRNO_MESSAGES[toBlockError(e).code]}`);
    c.res.checkErrors++;
    return false;
  }
  // A cached copy of the table is stale now, and so is what the check kept of any table.
  s.l2Cache.discard(l2Offset);
  c.seen?.forgetAll();
  new DataView(w.table.buffer).setBigUint64(i * s.l2EntrySize, entry);
  return true;
}

/**
 * The entry a cluster that must not be used becomes: a zero cluster (v3; with extended L2 an
 * all-zero bitmap), or unallocated in a v2 image without backing file (reads stay zero);
 * null when neither keeps the guest's view (v2 over a backing file).
 */
function harmlessEntry(w: L2Walk): { entry: bigint; bitmap: bigint | null } | null {
  const s = w.c.s;
  if (s.extendedL2) return { entry: 0n, bitmap: QCOW_L2_BITMAP_ALL_ZEROES };
  if (s.header.version >= 3) return { entry: QCOW_OFLAG_ZERO, bitmap: null };
  return s.backingFile === null ? { entry: 0n, bitmap: null } : null;
}

/** Report (and with -r all repair) an entry of ours; true when it was rewritten. */
async function ourCorruption(w: L2Walk, i: number, what: string, repairable: boolean): Promise<boolean> {
  const { c } = w;
  const repl = repairable && w.fix.errors && w.active ? harmlessEntry(w) : null;
  c.report(`${repl ? 'Repairing' : 'ERROR'} ${what}`);
  if (repl && (await rewriteEntry(w, i, repl.entry, repl.bitmap))) {
    c.res.corruptionsFixed++;
    return true;
  }
  c.res.corruptions++;
  return false;
}

/** The kind of metadata a data range overlaps, or undefined. */
function metadataAt(c: CheckRun, offset: number, length: number): string | undefined {
  const cs = c.s.clusterSize;
  if (length <= 0) return undefined;
  for (let k = Math.floor(offset / cs); k <= Math.floor((offset + length - 1) / cs); k++) {
    const kind = c.metadata.get(k);
    if (kind) return kind;
  }
  return undefined;
}

/**
 * Count the plain data entries of `w.table` from slot `i` on, as the 'normal' branch of
 * checkRefcountsL2 does when there is nothing to report (an aligned data cluster that is not
 * metadata); returns the first used slot that is anything else, or the table's size. Most
 * entries are these: one synchronous loop in cluster numbers (small integers, where byte
 * offsets past 2 GiB are not) that V8 optimises once, instead of the async walk's per-entry
 * step (which V8 deoptimised at the first offset past 2 GiB).
 */
function countPlainEntries(w: L2Walk, i: number, plainEntries: boolean): number {
  const { c, table } = w;
  const s = c.s;
  const end = s.l2Size;
  const words = tableWords(table);
  const es = s.l2EntrySize;
  if (!plainEntries) return nextUsedSlot(words, i, end, es);
  const cs = s.clusterSize;
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  // Offset bits 32-55 (the high word's low 24 bits) in clusters: cs divides 2^32.
  const hiClusters = 2 ** 32 / cs;
  const bits = s.clusterBits;
  const max = s.refcountMax;
  const { res, metadata } = c;
  let next = w.nextCluster;
  let counts = c.imrt.counts;
  for (i = nextUsedSlot(words, i, end, es); i < end; i = nextUsedSlot(words, i + 1, end, es)) {
    // Read signed: a word of 2^31 or more as an unsigned number is no small integer, and V8
    // threw away the loop's optimised code at the first offset past 2 GiB to compile it again.
    const hi = view.getInt32(i * es);
    const lo = view.getInt32(i * es + 4);
    // Not plain (compressed, zero, reserved bits: plainDataOffset) or not cluster aligned.
    if ((hi & 0x7f000000) !== 0 || (lo & 0x1ff) !== 0 || (lo & (cs - 1)) !== 0) break;
    const k = (hi & 0x00ffffff) * hiClusters + (lo >>> bits);
    if (k === 0 || metadata.has(k)) break;
    if (w.active) {
      res.allocatedClusters++;
      if (next !== 0 && k !== next) res.fragmentedClusters++;
      next = k + 1;
      if (w.seen && !w.seen.push(k, hi >>> 31 === 1)) w.seen = undefined;
    }
    // incRefcounts's common case inline: k below the count table's end lies within the file.
    if (k < c.imrt.n && counts[k] < max) counts[k]++;
    else {
      incRefcounts(c, k * cs, cs);
      counts = c.imrt.counts;
    }
  }
  w.nextCluster = next;
  return i;
}

/**
 * Check and count one L2 table (check_refcounts_l2). `l1Index`: the active L1 entry that
 * points at it, or -1 when reached from a snapshot's L1 table.
 */
export async function checkRefcountsL2(c: CheckRun, fix: CheckFix, l2Offset: number, l1Index: number): Promise<void> {
  const { s, res } = c;
  const active = l1Index >= 0;
  const cs = s.clusterSize;
  const bytes = s.l2Size * s.l2EntrySize;
  // One buffer for every table of the check: a fresh one per table was zeroed, then faulted
  // in page by page by the read (8 MiB for a 64 GiB image), and nothing keeps a table.
  const table = c.l2Buf?.length === bytes ? c.l2Buf : (c.l2Buf = new Uint8Array(bytes));
  try {
    const len = await qcow2File(s).getLength();
    const avail = Math.max(0, Math.min(bytes, len - l2Offset));
    if (avail > 0) await qcow2File(s).pread(l2Offset, table.subarray(0, avail));
    // Past the end of the file a table reads as zeros (already reported as a corruption).
    table.fill(0, avail);
  } catch (e) {
    c.report('ERROR: I/O error in check_refcounts_l2');
    res.checkErrors++;
    throw e;
  }
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const es = s.l2EntrySize;
  // Plain data entries are decoded without a BigInt (standard entries in the image file).
  const plainEntries = !s.extendedL2 && !qcow2HasDataFile(s);
  // An active table of plain data entries only is kept for the COPIED pass (check-seen.ts).
  const seen = active && plainEntries ? c.seen : undefined;
  const seenStart = seen?.length ?? 0;
  const w: L2Walk = { c, fix, l2Cluster: l2Offset / cs, active, table, nextCluster: 0, seen };
  for (let i = countPlainEntries(w, 0, plainEntries); i < s.l2Size; i = countPlainEntries(w, i + 1, plainEntries)) {
    w.seen = undefined;
    let entry = view.getBigUint64(i * es);
    const bitmap = s.extendedL2 ? view.getBigUint64(i * es + 8) : 0n;
    const type = clusterType(entry, !s.extendedL2, qcow2HasDataFile(s));

    if (type !== 'compressed' && (entry & L2E_STD_RESERVED_MASK) !== 0n) {
      const cleared = entry & ~L2E_STD_RESERVED_MASK;
      if (fix.errors && active && Number(cleared & L2E_OFFSET_MASK) % cs === 0) {
        c.report(`Repairing l2 entry with reserved bits set: ${hex(entry)}`);
        if (await rewriteEntry(w, i, cleared, null)) {
          entry = cleared;
          res.corruptionsFixed++;
        } else {
          res.corruptions++;
        }
      } else {
        c.report(`ERROR found l2 entry with reserved bits set: ${hex(entry)}`);
        res.corruptions++;
      }
    }

    switch (type) {
      case 'compressed': {
        if ((entry & QCOW_OFLAG_COPIED) !== 0n) {
          c.report(`ERROR: coffset=0x${hex(entry & s.compressed.offsetMask)}: copied flag must never be set for compressed clusters`);
          entry &= ~QCOW_OFLAG_COPIED;
          res.corruptions++;
        }
        if (qcow2HasDataFile(s)) {
          c.report(`ERROR compressed cluster ${i} with data file, entry=0x${hex(entry)}`);
          res.corruptions++;
          break;
        }
        if (bitmap !== 0n) {
          c.report(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex(entry)}`);
          res.corruptions++;
          break;
        }
        const ext = decodeCompressed(entry, s.compressed);
        const kind = metadataAt(c, ext.offset, ext.length);
        if (kind && (await ourCorruption(w, i, `compressed cluster l2_entry=${hex(entry)} overlaps with ${kind}`, true))) break;
        if (!kind) incRefcounts(c, ext.offset, ext.length);
        if (active) {
          res.allocatedClusters++;
          res.compressedClusters++;
          // Compressed clusters are fragmented by nature: neighbours share sectors.
          res.fragmentedClusters++;
        }
        break;
      }
      case 'zero-alloc':
      case 'normal': {
        const offset = Number(entry & L2E_OFFSET_MASK);
        if (((bitmap >> 32n) & bitmap) !== 0n) {
          res.corruptions++;
          c.report(`ERROR offset=${hex(offset)}: Allocated cluster has corrupted subcluster allocation bitmap`);
        }
        if (offset % cs !== 0) {
          res.corruptions++;
          const containsData = s.extendedL2 ? (bitmap & QCOW_L2_BITMAP_ALL_ALLOC) !== 0n : (entry & QCOW_OFLAG_ZERO) === 0n;
          if (!containsData) {
            c.report(`${fix.errors ? 'Repairing' : 'ERROR'} offset=${hex(offset)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`);
            if (fix.errors) {
              const zero = s.extendedL2 ? 0n : QCOW_OFLAG_ZERO;
              if (await rewriteEntry(w, i, zero, null)) {
                res.corruptions--;
                res.corruptionsFixed++;
                // Unused now: not counted.
                continue;
              }
            }
          } else {
            c.report(`ERROR offset=${hex(offset)}: Data cluster is not properly aligned; L2 entry corrupted.`);
          }
        } else {
          if (s.header.version < 3 && type === 'zero-alloc' && !s.extendedL2) {
            c.report(`ERROR zero cluster entry in a pre-v3 image: l2_entry=${hex(entry)}`);
            res.corruptions++;
          }
          const kind = !qcow2HasDataFile(s) ? metadataAt(c, offset, cs) : undefined;
          if (kind) {
            await ourCorruption(w, i, `data cluster l2_entry=${hex(entry)} overlaps with ${kind}`, true);
            // Not counted either way: the cluster belongs to the metadata.
            continue;
          }
        }
        if (active) {
          res.allocatedClusters++;
          if (w.nextCluster !== 0 && offset / cs !== w.nextCluster) res.fragmentedClusters++;
          w.nextCluster = offset / cs + 1;
        }
        // With an external data file the data clusters are not counted here.
        if (!qcow2HasDataFile(s)) incRefcounts(c, offset, cs);
        break;
      }
      case 'zero-plain':
        if (s.header.version < 3) await ourCorruption(w, i, `zero cluster entry in a pre-v3 image: l2_entry=${hex(entry)}`, s.backingFile === null);
        break;
      case 'unallocated':
        if ((bitmap & QCOW_L2_BITMAP_ALL_ALLOC) !== 0n) {
          res.corruptions++;
          c.report('ERROR: Unallocated cluster has non-zero subcluster allocation map');
        }
        break;
    }
  }
  if (w.seen) w.seen.keep(l1Index, l2Offset, seenStart);
  else seen?.drop(seenStart);
}
