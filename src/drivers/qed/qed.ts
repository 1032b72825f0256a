/**
 * The QED block driver: open/close and the metadata hooks, assembled into `qedDriver`.
 * The request path lives in io.ts, the check in check.ts, creation in create.ts.
 */
import { CoalescedRun, CoMutex, CoQueue } from '../../block/coroutine.js';
import {
  BDRV_SECTOR_SIZE,
  type BlockDriver,
  type BlockDriverHook,
  type BlockDriverInfo,
  type CheckFix,
  type CheckResult,
  type OpenOptions,
  type WriteZeroesFlags,
} from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { qedCheck } from './check.js';
import { qedCreate, qedCreateOptions, qedCreateWarnings } from './create.js';
import { qedBlockStatusExtents, qedBlockStatusNow, qedCoBlockStatus, qedCoIsAllocated } from './status.js';
import {
  decodeHeader,
  encodeHeader,
  QED_AUTOCLEAR_FEATURE_MASK,
  QED_COMPAT_FEATURE_MASK,
  QED_F_BACKING_FILE,
  QED_F_BACKING_FORMAT_NO_PROBE,
  QED_F_NEED_CHECK,
  QED_HEADER_STRUCT_SIZE,
  QED_L2_CACHE_SIZE,
  QED_MAGIC,
  qedIsImageSizeValid,
  type QEDHeader,
  validateHeader,
} from './header.js';
import {
  QED_AIOCB_WRITE,
  qedAioSetup,
  qedCoRequest,
  qedCoWriteZeroes,
  qedPreadvNow,
  qedReadHostNow,
} from './io.js';
import { L2Cache } from './l2-cache.js';
import { cancelNeedCheckTimer, qedDrainBegin, qedNeedCheckTimerCb } from './need-check.js';
import { type BDRVQEDState, qedFile, qedState, qedWaitAllocPending, qedWriteHeaderSync } from './state.js';
import { QEDTable, qedReadL1Table } from './table.js';

/** Probe: the magic is all QED has; a match is certain. */
export function qedProbe(buf: Uint8Array): number {
  if (buf.length < QED_HEADER_STRUCT_SIZE) return 0;
  const magic = buf[0] | (buf[1] << 8) | (buf[2] << 16) | (buf[3] << 24);
  return magic === QED_MAGIC ? 100 : 0;
}

/** Read the header and everything derived from it; leaves bs.opaque set on success. */
async function qedDoOpen(bs: BlockDriverState, options: OpenOptions): Promise<void> {
  const file = bs.file;
  if (!file) throw new BlockError('EINVAL', 'QED needs a file to open', { op: 'open', path: bs.filename });
  const fileLength = await file.getLength();
  const buf = new Uint8Array(QED_HEADER_STRUCT_SIZE);
  if (fileLength > 0) await file.pread(0, buf.subarray(0, Math.min(fileLength, buf.length)));
  const { header, fileSize } = validateHeader(decodeHeader(buf), fileLength);

  const tableNelems = (header.clusterSize * header.tableSize) / 8;
  const s: BDRVQEDState = {
    bs,
    header,
    fileSize,
    tableNelems,
    l2Span: tableNelems * header.clusterSize,
    l1Table: new QEDTable(tableNelems),
    l2Cache: new L2Cache(tableNelems, QED_L2_CACHE_SIZE, (name, args) => {
      if (bs.events.traceListened) bs.trace(name, args);
    }),
    allocLock: new CoMutex(),
    allocPending: 0,
    allocPendingDone: new CoQueue(),
    allocReservations: [],
    // The COW data flush (io.ts, qedFlushWrittenData): concurrent callers share flushes.
    dataFlush: new CoalescedRun<void>(
      () => qedFile(s).flush(),
      () => undefined,
    ),
    needCheckTimer: null,
    timerTask: null,
    zeroPad: null,
    corruptionsRemain: false,
    openOptions: options,
    closed: false,
  };

  let backingFile = '';
  let backingFormat = '';
  if ((header.features & QED_F_BACKING_FILE) !== 0n) {
    if (header.backingFilenameSize > 0) {
      const name = new Uint8Array(header.backingFilenameSize);
      await file.pread(header.backingFilenameOffset, name);
      backingFile = new TextDecoder().decode(name);
    }
    if ((header.features & QED_F_BACKING_FORMAT_NO_PROBE) !== 0n) backingFormat = 'raw';
  }

  const writable = !bs.readOnly && !options.inactive;
  // Unknown autoclear bits are knocked out by a writer that does not understand them, so a
  // newer program can tell its extension data is stale.
  if ((header.autoclearFeatures & ~QED_AUTOCLEAR_FEATURE_MASK) !== 0n && writable) {
    const old = header.autoclearFeatures;
    header.autoclearFeatures &= QED_AUTOCLEAR_FEATURE_MASK;
    try {
      await qedWriteHeaderSync(s);
      await file.flush();
    } catch (e) {
      header.autoclearFeatures = old;
      throw e;
    }
  }

  await qedReadL1Table(s);

  // An image not closed cleanly is checked (and repaired) before read-write use. Read-only and
  // inactive opens skip it, which allows recovery reads; a check open runs its own check.
  if ((header.features & QED_F_NEED_CHECK) !== 0n && writable && !options.check) {
    const result = await qedCheck(s, true);
    if (result.checkErrors > 0) {
      throw new BlockError('EIO', 'Image corrupted', { op: 'open', path: bs.filename });
    }
  }

  s.needCheckTimer = bs.clock.newTimer(() => qedNeedCheckTimerCb(s));
  bs.backingFile = backingFile;
  bs.backingFormat = backingFormat;
  bs.opaque = s;
}

async function qedOpen(bs: BlockDriverState, options: OpenOptions): Promise<void> {
  await qedDoOpen(bs, options);
}

/**
 * Close: stop the timer, wait for its job, make everything durable, and mark the image clean
 * unless a check found corruption it could not repair (qed-format.md §17.5). The generic layer has already
 * waited for every request.
 */
async function qedClose(bs: BlockDriverState): Promise<void> {
  const s = bs.opaque as BDRVQEDState | null;
  if (!s || s.closed) return;
  s.closed = true;
  cancelNeedCheckTimer(s);
  if (s.timerTask) await s.timerTask;
  // The generic layer has drained requests; holding the allocation lock also guarantees that
  // no allocation is half-linked while we decide whether the image is clean.
  await s.allocLock.lock();
  try {
    // Requests past their allocation may still be writing L2 entries; they must be on disk
    // before the flush that precedes marking the image clean.
    await qedWaitAllocPending(s);
    if (!bs.readOnly && !s.openOptions.inactive) {
      const file = qedFile(s);
      await file.flush();
      if ((s.header.features & QED_F_NEED_CHECK) !== 0n && !s.corruptionsRemain) {
        s.header.features &= ~QED_F_NEED_CHECK;
        await qedWriteHeaderSync(s);
        await file.flush();
      }
    }
  } finally {
    s.allocLock.unlock();
    s.l2Cache.clear();
  }
}

// bdrv_qed_aio_readv/writev: one setup, told the direction by its flags.
const qedAioReadv: BlockDriverHook<'aioReadv'> = (bs, sectorNum, qiov, nbSectors, cb) =>
  qedAioSetup(bs, sectorNum, qiov, nbSectors, cb, 0);
const qedAioWritev: BlockDriverHook<'aioWritev'> = (bs, sectorNum, qiov, nbSectors, cb) =>
  qedAioSetup(bs, sectorNum, qiov, nbSectors, cb, QED_AIOCB_WRITE);

async function qedCoPreadv(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const s = qedState(bs);
  // One run of data clusters (every read of a convert out of a QED image, too large for the
  // page cache hook): the file read alone, without a request state and its loop.
  const host = bytes > 0 ? qedReadHostNow(s, offset, bytes) : -1;
  if (host >= 0) await qedFile(s).preadv(host, qiov.size === bytes ? qiov : qiov.slice(0, bytes));
  else await qedCoRequest(bs, offset, bytes, qiov, 0);
}

const qedCoPwritev: BlockDriverHook<'coPwritev'> = async (bs, offset, bytes, qiov, flags) => {
  await qedCoRequest(bs, offset, bytes, qiov, QED_AIOCB_WRITE, flags.onAllocated);
  // QED has no FUA of its own: a flush after the write gives the same durability.
  if (flags.fua) await qedFile(qedState(bs)).flush();
};

async function qedWriteZeroesHook(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  flags: WriteZeroesFlags,
): Promise<void> {
  await qedCoWriteZeroes(bs, offset, bytes, flags.noFallback === true);
}

/** Grow only: the new size goes into the header; tables and file stay as they are. */
async function qedTruncate(bs: BlockDriverState, size: number): Promise<void> {
  const s = qedState(bs);
  if (!Number.isSafeInteger(size) || !qedIsImageSizeValid(size, s.header.clusterSize, s.header.tableSize)) {
    throw new BlockError('EINVAL', 'Invalid image size specified', { op: 'truncate', offset: size });
  }
  if (size < s.header.imageSize) {
    throw new BlockError('ENOTSUP', 'Shrinking images is currently not supported', { op: 'truncate', offset: size });
  }
  const old = s.header.imageSize;
  s.header.imageSize = size;
  try {
    await qedWriteHeaderSync(s);
  } catch (e) {
    s.header.imageSize = old;
    throw e;
  }
}

function qedGetLength(bs: BlockDriverState): number {
  return qedState(bs).header.imageSize;
}

function qedLengthNow(bs: BlockDriverState): number | null {
  return (bs.opaque as BDRVQEDState | null)?.header.imageSize ?? null;
}

async function qedGetInfo(bs: BlockDriverState): Promise<BlockDriverInfo> {
  const s = qedState(bs);
  return { clusterSize: s.header.clusterSize, isDirty: (s.header.features & QED_F_NEED_CHECK) !== 0n };
}

/**
 * Rewrite header + backing name in one durable write at offset 0. A name is always placed
 * right after the header struct; removing the backing file leaves the old name bytes.
 */
async function qedChangeBackingFile(
  bs: BlockDriverState,
  backingFile: string | null,
  backingFmt: string | null,
): Promise<void> {
  const s = qedState(bs);
  const name = backingFile === null || backingFile === '' ? null : backingFile;
  // With unknown compat features set, what follows the header may be theirs: do not overwrite.
  if (name !== null && (s.header.compatFeatures & ~QED_COMPAT_FEATURE_MASK) !== 0n) {
    throw new BlockError('ENOTSUP', 'Cannot change the backing file: the image uses unknown compatible features', {
      op: 'change_backing_file',
    });
  }
  const nameBytes = new TextEncoder().encode(name ?? '');
  const newHeader: QEDHeader = { ...s.header };
  newHeader.features &= ~(QED_F_BACKING_FILE | QED_F_BACKING_FORMAT_NO_PROBE);
  if (name !== null) {
    newHeader.features |= QED_F_BACKING_FILE;
    if (backingFmt === 'raw') newHeader.features |= QED_F_BACKING_FORMAT_NO_PROBE;
  }
  newHeader.backingFilenameOffset = QED_HEADER_STRUCT_SIZE;
  newHeader.backingFilenameSize = nameBytes.length;
  const len = QED_HEADER_STRUCT_SIZE + nameBytes.length;
  if (len > newHeader.headerSize * newHeader.clusterSize || nameBytes.length >= 4096) {
    throw new BlockError('ENOSPC', 'No space left in the file header', { op: 'change_backing_file' });
  }
  const buf = new Uint8Array(len);
  encodeHeader(newHeader, buf.subarray(0, QED_HEADER_STRUCT_SIZE));
  buf.set(nameBytes, QED_HEADER_STRUCT_SIZE);
  const file = qedFile(s);
  await file.pwrite(0, buf);
  await file.flush();
  s.header = newHeader;
  bs.backingFile = name ?? '';
  bs.backingFormat = name !== null && backingFmt === 'raw' ? 'raw' : '';
}

/** Drop every piece of cached state and read it again from the image. */
async function qedInvalidateCache(bs: BlockDriverState): Promise<void> {
  const s = qedState(bs);
  s.closed = true;
  cancelNeedCheckTimer(s);
  if (s.timerTask) await s.timerTask;
  s.l2Cache.clear();
  bs.opaque = null;
  try {
    await qedDoOpen(bs, s.openOptions);
  } catch (e) {
    // Keep the old state usable rather than leave the node without one.
    s.closed = false;
    bs.opaque = s;
    throw e;
  }
}

async function qedCheckHook(bs: BlockDriverState, fix: CheckFix): Promise<CheckResult> {
  const s = qedState(bs);
  // QEMU treats every repair mode as "fix everything it can".
  return qedCheck(s, fix.errors === true || fix.leaks === true);
}

export const qedDriver: BlockDriver = {
  formatName: 'qed',
  requestAlignment: BDRV_SECTOR_SIZE,
  supportsBacking: true,
  createOptions: qedCreateOptions,
  probe: qedProbe,
  open: qedOpen,
  close: qedClose,
  create: qedCreate,
  coPreadv: qedCoPreadv,
  coPwritev: qedCoPwritev,
  aioReadv: qedAioReadv,
  preadvNow: qedPreadvNow,
  aioWritev: qedAioWritev,
  coBlockStatus: qedCoBlockStatus,
  coIsAllocated: qedCoIsAllocated,
  blockStatusNow: qedBlockStatusNow,
  blockStatusExtents: qedBlockStatusExtents,
  coWriteZeroes: qedWriteZeroesHook,
  truncate: qedTruncate,
  getLength: qedGetLength,
  lengthNow: qedLengthNow,
  getInfo: qedGetInfo,
  changeBackingFile: qedChangeBackingFile,
  invalidateCache: qedInvalidateCache,
  check: qedCheckHook,
  // Read-only and cache flags change in place with no QED work (QEMU's reopen_prepare does
  // nothing either): no reopen hook.
  drainBegin: (bs) => qedDrainBegin(qedState(bs)),
  createWarnings: qedCreateWarnings,
};
