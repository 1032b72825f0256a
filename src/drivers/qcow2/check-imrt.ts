/**
 * The in-memory refcount table of a check (QEMU's IMRT, calculate_refcounts): every host
 * cluster's count as the metadata says, from the header, the active L1 and its L2 tables,
 * snapshot L1 tables and theirs, the snapshot table, the reftable, the refcount blocks and the
 * bitmap directory. Its size follows the file, never a number read from the image: a
 * reference a cluster or more past the end of the file is a corruption, not a reason to grow.
 */
import { qcow2CheckBitmapsRefcounts } from './bitmap-store.js';
import type { CheckFix, CheckResult } from '../../block/driver.js';
import { BlockError, ERRNO_MESSAGES, toBlockError } from '../../block/errors.js';
import { qcow2WriteL1Entry } from './cluster.js';
import { checkRefcountsL2 } from './check-l2.js';
import type { CheckSeen } from './check-seen.js';
import { L1E_OFFSET_MASK, L1E_RESERVED_MASK, REFT_OFFSET_MASK, REFT_RESERVED_MASK, nextUsedSlot, tableWords, usedEntries } from './entries.js';
import { type BDRVQcow2State, qcow2File } from './state.js';

export interface Imrt {
  /** Count per host cluster; `n` of them are meaningful. */
  counts: Float64Array;
  n: number;
  /** Clusters referenced more often than the refcount width can count. */
  overflowed: Set<number>;
}

/** One pass of a check. */
export interface CheckRun {
  s: BDRVQcow2State;
  res: CheckResult;
  report: (line: string) => void;
  imrt: Imrt;
  /** Length of the image file (a repair may grow it). */
  fileLen: number;
  /** The refcount structure must be rebuilt. */
  rebuild: boolean;
  /** Clusters holding metadata, by kind (filled before any data reference is counted). */
  metadata: Map<number, string>;
  /** The active tables' data entries, for the COPIED pass (none kept when absent). */
  seen?: CheckSeen;
  /** The buffer checkRefcountsL2 reads each table into (made on first use). */
  l2Buf?: Uint8Array;
}

const hex = (v: bigint | number): string => v.toString(16);

/** Make room for `n` counts (new ones 0). */
export function growImrt(imrt: Imrt, n: number): void {
  if (n <= imrt.n) return;
  if (n > imrt.counts.length) {
    const bigger = new Float64Array(Math.max(n, Math.ceil(imrt.counts.length * 1.5)));
    bigger.set(imrt.counts.subarray(0, imrt.n));
    imrt.counts = bigger;
  }
  imrt.n = n;
}

/** Count one reference to every cluster of [offset, offset+size) (qcow2_inc_refcounts_imrt). */
export function incRefcounts(c: CheckRun, offset: number, size: number): void {
  if (size <= 0) return;
  const cs = c.s.clusterSize;
  // The last cluster may be written only partly, so a reference may reach a little past the
  // end of the file, but less than a cluster.
  if (offset + size - c.fileLen >= cs) {
    c.report(
      `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${hex(offset)} size 0x${hex(size)}`,
    );
    c.res.corruptions++;
    return;
  }
  const first = Math.floor(offset / cs);
  const last = Math.floor((offset + size - 1) / cs);
  growImrt(c.imrt, last + 1);
  for (let k = first; k <= last; k++) {
    if (c.imrt.counts[k] >= c.s.refcountMax) {
      c.report(`ERROR: overflow cluster offset=0x${hex(k * cs)}`);
      c.report(
        'Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing',
      );
      c.res.corruptions++;
      c.imrt.overflowed.add(k);
      continue;
    }
    c.imrt.counts[k]++;
  }
}

/** Read up to `bytes` at `offset`, zeros past the end of the file, never more than the file. */
async function readTableBytes(c: CheckRun, offset: number, bytes: number): Promise<Uint8Array> {
  const avail = Math.max(0, Math.min(bytes, c.fileLen - offset));
  const buf = new Uint8Array(avail);
  if (avail > 0) await qcow2File(c.s).pread(offset, buf);
  return buf;
}

/**
 * Count an L1 table, its L2 tables and what they reference (check_refcounts_l1). The active
 * table comes from memory (written through on every change), a snapshot's from the file.
 */
async function checkRefcountsL1(
  c: CheckRun,
  fix: CheckFix,
  l1Offset: number,
  l1Size: number,
  active: BigUint64Array | null,
): Promise<void> {
  const { s, res } = c;
  incRefcounts(c, l1Offset, l1Size * 8);
  let entries: BigUint64Array | bigint[];
  if (active) {
    entries = active;
  } else {
    let raw: Uint8Array;
    try {
      raw = await readTableBytes(c, l1Offset, l1Size * 8);
    } catch (e) {
      c.report('ERROR: I/O error in check_refcounts_l1');
      res.checkErrors++;
      throw e;
    }
    const v = new DataView(raw.buffer);
    entries = [];
    for (let i = 0; (i + 1) * 8 <= raw.length; i++) entries.push(v.getBigUint64(i * 8));
  }
  for (let i = 0; i < entries.length; i++) {
    let entry = entries[i];
    if (entry === 0n) continue;
    const l2Offset = Number(entry & L1E_OFFSET_MASK);
    const aligned = l2Offset % s.clusterSize === 0;
    if ((entry & L1E_RESERVED_MASK) !== 0n) {
      // Ours: an otherwise valid active entry loses its reserved bits (QEMU only reports).
      if (fix.errors && active && aligned) {
        c.report(`Repairing L1 entry with reserved bits set: ${hex(entry)}`);
        active[i] = entry & ~L1E_RESERVED_MASK;
        try {
          await qcow2WriteL1Entry(s, i);
          entry = active[i];
          res.corruptionsFixed++;
        } catch (e) {
          active[i] = entry;
          c.report(`ERROR: Failed to overwrite L1 table entry: ${ERRNO_MESSAGES[toBlockError(e).code]}`);
          res.checkErrors++;
        }
      } else {
        c.report(`ERROR found L1 entry with reserved bits set: ${hex(entry)}`);
        res.corruptions++;
      }
    }
    incRefcounts(c, l2Offset, s.clusterSize);
    if (!aligned) {
      c.report(`ERROR l2_offset=${hex(l2Offset)}: Table is not cluster aligned; L1 entry corrupted`);
      res.corruptions++;
    }
    await checkRefcountsL2(c, fix, l2Offset, active !== null ? i : -1);
  }
}

/**
 * Count every refcount block and check it (check_refblocks): reserved bits or a misaligned
 * offset need a rebuild; a block past the end of the file grows the file (-r all); a block
 * whose count is not 1 needs a rebuild.
 */
async function checkRefblocks(c: CheckRun, fix: CheckFix): Promise<void> {
  const { s, res } = c;
  const cs = s.clusterSize;
  // An entry of 0 has nothing to check or count: only the used ones are read (each read of
  // a table's entry makes a BigInt, and a table has thousands). The words are read as the
  // walk goes, not listed first: a repair may change entries ahead of it.
  const n = s.refcountTable.length;
  const words = tableWords(s.refcountTable);
  for (let i = nextUsedSlot(words, 0, n, 8); i < n; i = nextUsedSlot(words, i + 1, n, 8)) {
    const raw = s.refcountTable[i];
    const offset = Number(raw & REFT_OFFSET_MASK);
    const cluster = Math.floor(offset / cs);
    if ((raw & REFT_RESERVED_MASK) !== 0n) {
      c.report(`ERROR refcount table entry ${i} has reserved bits set`);
      res.corruptions++;
      c.rebuild = true;
      continue;
    }
    if (offset % cs !== 0) {
      c.report(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      res.corruptions++;
      c.rebuild = true;
      continue;
    }
    if (cluster >= c.imrt.n) {
      c.report(`${fix.errors ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
      if (!fix.errors) {
        res.corruptions++;
        continue;
      }
      try {
        // A block far past the end is garbage, not a tail lost in a crash: the rebuild is the
        // repair then, not a file (and a count table) grown by what the entry says.
        if (offset + cs > c.fileLen + Math.max(16 * cs, Math.floor(c.fileLen / 2))) {
          throw new BlockError('EFBIG', undefined, { op: 'check', offset });
        }
        // The file grows to hold the block (zeros: all its counts are 0), which the rebuild
        // or the refcount fix below then fills in.
        await qcow2File(s).truncate(offset + cs);
        c.fileLen = await qcow2File(s).getLength();
        growImrt(c.imrt, Math.ceil(c.fileLen / cs));
        if (cluster >= c.imrt.n) throw new BlockError('EINVAL', undefined, { op: 'check', offset });
      } catch (e) {
        res.corruptions++;
        c.rebuild = true;
        c.report(`ERROR could not resize image: ${ERRNO_MESSAGES[toBlockError(e).code]}`);
        continue;
      }
      res.corruptionsFixed++;
      incRefcounts(c, offset, cs);
      continue;
    }
    if (offset === 0) continue;
    incRefcounts(c, offset, cs);
    if (c.imrt.counts[cluster] !== 1) {
      c.report(`ERROR refcount block ${i} refcount=${c.imrt.counts[cluster]}`);
      res.corruptions++;
      c.rebuild = true;
    }
  }
}

/** Where the metadata lies, before any data reference is counted (for the overlap decision). */
function mapMetadata(c: CheckRun): void {
  const { s, metadata } = c;
  const cs = s.clusterSize;
  const mark = (offset: number, size: number, kind: string): void => {
    if (size <= 0 || offset + size - c.fileLen >= cs) return;
    for (let k = Math.floor(offset / cs); k <= Math.floor((offset + size - 1) / cs); k++) if (!metadata.has(k)) metadata.set(k, kind);
  };
  mark(0, cs, 'qcow2_header');
  mark(s.l1TableOffset, s.l1Table.length * 8, 'active L1 table');
  // Entries of 0 point nowhere.
  for (const i of usedEntries(s.l1Table)) {
    const off = Number(s.l1Table[i] & L1E_OFFSET_MASK);
    if (off !== 0 && off % cs === 0) mark(off, cs, 'active L2 table');
  }
  mark(s.refcountTableOffset, s.refcountTable.length * 8, 'refcount table');
  for (const i of usedEntries(s.refcountTable)) {
    const e = s.refcountTable[i];
    const off = Number(e & REFT_OFFSET_MASK);
    if (off !== 0 && off % cs === 0 && (e & REFT_RESERVED_MASK) === 0n) mark(off, cs, 'refcount block');
  }
  mark(s.extents.snapshotsOffset, s.extents.snapshotsSize, 'snapshot table');
  for (const l1 of s.extents.inactiveL1) mark(l1.offset, l1.size, 'inactive L1 table');
  if (s.extents.bitmapDirectory) mark(s.extents.bitmapDirectory.offset, s.extents.bitmapDirectory.size, 'bitmap directory');
}

/** Build the IMRT (calculate_refcounts). Repairs of entries happen on the way when `fix.errors`. */
export async function calculateRefcounts(c: CheckRun, fix: CheckFix): Promise<void> {
  const { s } = c;
  mapMetadata(c);
  incRefcounts(c, 0, s.clusterSize);
  await checkRefcountsL1(c, fix, s.l1TableOffset, s.l1Table.length, s.l1Table);
  for (const l1 of s.extents.inactiveL1) await checkRefcountsL1(c, fix, l1.offset, l1.size / 8, null);
  incRefcounts(c, s.extents.snapshotsOffset, s.extents.snapshotsSize);
  incRefcounts(c, s.refcountTableOffset, s.refcountTable.length * 8);
  await qcow2CheckBitmapsRefcounts(
    s,
    (offset, size) => incRefcounts(c, offset, size),
    () => void c.res.corruptions++,
  );
  await checkRefblocks(c, fix);
}
