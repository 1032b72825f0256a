/**
 * The `raw` format: guest bytes are the protocol's bytes, at the same offsets (QEMU's raw /
 * raw-format). Everything passes through to `bs.file`. No node: imports.
 */
import { CoMutex } from '../../block/coroutine.js';
import {
  BDRV_SECTOR_SIZE,
  type BlockDriver,
  type BlockDriverHook,
  type BlockDriverInfo,
  type BlockMeasureInfo,
  type BlockStatus,
  type CreateContext,
  type CreateOptions,
  type OpenOptions,
  SENDFILE_DECLINED,
  type SendfileReply,
  type WriteZeroesFlags,
  driverState,
} from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { roundUp } from '../../block/io/requests.js';
import { BLOCK_PROBE_BUF_SIZE } from '../../block/registry.js';

interface RawState {
  /**
   * Opened by probing, not by an explicit format. Then a guest could write another format's
   * header into the first bytes and be reopened as that format (e.g. a QED header naming a host
   * file as backing file): such writes are refused.
   */
  probed: boolean;
  /** Serialises guarded head writes, so two of them cannot both pass the check on old bytes. */
  headLock: CoMutex;
}

/** The bytes a prober reads: every write touching them is checked on a probed image. */
export const RAW_PROBE_GUARD_BYTES = BLOCK_PROBE_BUF_SIZE;

function state(bs: BlockDriverState): RawState {
  return driverState<RawState>(bs, 'raw');
}

function child(bs: BlockDriverState): BlockDriverState {
  const f = bs.file;
  if (f === null) throw new BlockError('EBADF', `raw node '${bs.filename}' has no file child`, { op: 'raw', path: bs.filename });
  return f;
}

/** Any bytes can be a raw image, so raw answers weakly and any real format wins. */
function rawProbe(_buf: Uint8Array, _filename: string): number {
  return 1;
}

async function rawOpen(bs: BlockDriverState, options: OpenOptions): Promise<void> {
  child(bs);
  const probed = options.format === undefined;
  bs.opaque = { probed, headLock: new CoMutex() } satisfies RawState;
}

/** QEMU's raw_open warning: a probed, writable raw image has its first bytes guarded. */
function rawOpenWarning(bs: BlockDriverState): string | undefined {
  if (!state(bs).probed || bs.readOnly) return undefined;
  return (
    `WARNING: Image format was not specified for '${bs.filename}' and probing guessed raw.\n` +
    '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
    "         Specify the 'raw' format explicitly to remove the restrictions.\n"
  );
}

async function rawClose(bs: BlockDriverState): Promise<void> {
  bs.opaque = null;
}

async function rawCreate(filename: string, options: CreateOptions, ctx: CreateContext): Promise<void> {
  const size = typeof options.size === 'number' ? options.size : 0;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new BlockError('EINVAL', 'Invalid image size specified', { op: 'create', path: filename });
  }
  // Like QEMU's file creation: whole sectors. raw has no options of its own besides the size:
  // the rest (preallocation, nocow, extent_size_hint) are the protocol's, passed on with the
  // size so that the file is created at its length in one go (sparse unless preallocated).
  const rounded = Math.ceil(size / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
  const file = await ctx.createFile(filename, { ...options, size: rounded });
  try {
    // A context that ignored the size (an older createFile) still gets a file of that length.
    if ((await file.getLength()) !== rounded) await file.truncate(rounded);
  } finally {
    await file.close();
  }
}

/**
 * On a probed image, refuse a write into the probed head bytes when the head it leaves behind
 * would be claimed by another format. `src` null means zeroes.
 */
async function rawCheckHeadWrite(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  src: IOVector | null,
): Promise<void> {
  const file = child(bs);
  const curLen = Math.min(await file.getLength(), RAW_PROBE_GUARD_BYTES);
  const newLen = Math.min(RAW_PROBE_GUARD_BYTES, Math.max(curLen, offset + bytes));
  const head = new Uint8Array(newLen);
  if (curLen > 0) await file.pread(0, head.subarray(0, curLen));
  const n = Math.min(newLen - offset, bytes);
  if (src !== null) src.copyTo(head.subarray(offset, offset + n), 0, n);
  else head.fill(0, offset, offset + n);
  // The registry the node was opened with: the one that did the probing.
  for (const drv of bs.registry.list()) {
    if (drv === bs.driver || drv.formatName === 'raw' || drv.probe === undefined) continue;
    if (drv.isProtocol === true || drv.isFilter === true) continue;
    if (drv.probe(head, bs.filename) > 0) {
      throw new BlockError(
        'EPERM',
        `Write to the first bytes of '${bs.filename}' refused: the image was probed as raw and would now look like ${drv.formatName} (specify the raw format explicitly to allow it)`,
        { op: 'write', offset, path: bs.filename },
      );
    }
  }
}

/** Run `write` after the probe guard when it touches the head of a probed image. */
async function rawGuardedWrite(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  src: IOVector | null,
  write: () => Promise<void>,
): Promise<void> {
  const s = state(bs);
  if (!s.probed || offset >= RAW_PROBE_GUARD_BYTES || bytes === 0) return write();
  return s.headLock.run(async () => {
    await rawCheckHeadWrite(bs, offset, bytes, src);
    await write();
  });
}

/** Pure pass-through: the child's promise itself, no extra async frame (errors still reject). */
function rawCoPreadv(bs: BlockDriverState, offset: number, _bytes: number, qiov: IOVector): Promise<void> {
  const f = bs.file;
  if (f === null) {
    return Promise.reject(new BlockError('EBADF', `raw node '${bs.filename}' has no file child`, { op: 'raw', path: bs.filename }));
  }
  if (f.debugWatched) return f.debugEvent('read_aio').then(() => f.preadv(offset, qiov));
  return f.preadv(offset, qiov);
}

/** Pass-through: the file child reads now if it can (not when its events are watched). */
function rawPreadvNow(bs: BlockDriverState, offset: number, _bytes: number, qiov: IOVector): boolean {
  const f = bs.file;
  if (f === null || f.debugWatched) return false;
  return f.preadvNow(offset, qiov);
}

/** Pass-through, as rawPreadvNow. */
function rawSendfileNow(bs: BlockDriverState, offset: number, bytes: number, reply: SendfileReply): number {
  const f = bs.file;
  if (f === null || f.debugWatched) return SENDFILE_DECLINED;
  return f.sendfileNow(offset, bytes, reply);
}

/**
 * Past the probed head (nearly every write), nothing to guard: the child's promise itself, no
 * extra async frame, as rawCoPreadv. The guard, the debug event and errors take the slow path.
 */
const rawCoPwritev: BlockDriverHook<'coPwritev'> = (bs, offset, bytes, qiov, flags) => {
  const f = bs.file;
  const s = bs.opaque as RawState | null;
  if (f !== null && s !== null && !f.debugWatched && (offset >= RAW_PROBE_GUARD_BYTES || !s.probed)) {
    return f.pwritev(offset, qiov, flags);
  }
  return rawCoPwritevSlow(bs, offset, bytes, qiov, flags);
};

/** The same pass-through with a completion callback: the file starts the write now, if it can. */
const rawPwritevSubmit: BlockDriverHook<'pwritevSubmit'> = (bs, offset, _bytes, qiov, flags, done) => {
  const f = bs.file;
  const s = bs.opaque as RawState | null;
  // A watched file is not asked here: its own gate (fastPathOk) refuses, and the slow path
  // announces the event.
  if (f === null || s === null || (offset < RAW_PROBE_GUARD_BYTES && s.probed)) return false;
  return f.pwritevSubmit(offset, qiov, done, flags);
};

const rawCoPwritevSlow: BlockDriverHook<'coPwritev'> = async (bs, offset, bytes, qiov, flags) => {
  const file = child(bs);
  if (offset >= RAW_PROBE_GUARD_BYTES || !state(bs).probed) {
    if (file.debugWatched) await file.debugEvent('write_aio');
    await file.pwritev(offset, qiov, flags);
    return;
  }
  // The event comes after the guard's check, as in QEMU.
  await rawGuardedWrite(bs, offset, bytes, qiov, async () => {
    if (file.debugWatched) await file.debugEvent('write_aio');
    await file.pwritev(offset, qiov, flags);
  });
};

/**
 * Zeroing goes to the protocol with its flags (mayUnmap, noFallback), as QEMU's raw format
 * passes them: the protocol zeroes natively (mem chunks, fallocate on host files) or answers
 * ENOTSUP, and then the generic layer writes a zero buffer unless noFallback forbids it.
 */
async function rawCoWriteZeroes(
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  flags: WriteZeroesFlags,
): Promise<void> {
  const file = child(bs);
  await rawGuardedWrite(bs, offset, bytes, null, () => file.writeZeroes(offset, bytes, flags));
}

/** Discard goes to the protocol at the same offsets (a punched hole on host files). */
async function rawCoDiscard(bs: BlockDriverState, offset: number, bytes: number): Promise<void> {
  await child(bs).discard(offset, bytes);
}

async function rawCoFlush(bs: BlockDriverState): Promise<void> {
  await child(bs).flush();
}

/** Raw has no metadata: the protocol's answer at the same offset is the answer. */
async function rawCoBlockStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus> {
  const file = child(bs);
  const st = await file.blockStatus(offset, bytes);
  // The sector tail past the end of a file whose length is not a multiple of 512 (see
  // rawGetLength): the protocol has nothing there, and it reads as zeros.
  if (st.pnum === 0) return { pnum: bytes, allocated: true, data: false, zero: true, offset, file };
  return { pnum: st.pnum, allocated: true, data: st.data, zero: st.zero, offset, file };
}

/** The blockStatusNow hook: the protocol's answer now, when it has one (a host file's lseek). */
function rawBlockStatusNow(bs: BlockDriverState, offset: number, bytes: number): BlockStatus | null {
  const file = bs.file;
  if (file === null) return null;
  // The sector tail past the file's end (null there) takes coBlockStatus.
  const st = file.blockStatusNow(offset, bytes);
  return st === null ? null : { pnum: st.pnum, allocated: true, data: st.data, zero: st.zero, offset, file };
}

async function rawTruncate(bs: BlockDriverState, size: number, prealloc?: string): Promise<void> {
  // The preallocation mode is the file's business, as in QEMU.
  await child(bs).truncate(size, prealloc);
}

/**
 * Whole sectors, as QEMU's block layer counts sizes: a 1001-byte file is a 1024-byte disk whose
 * last 23 bytes read as zeros (the protocol node zero-fills past its end, and a write there
 * grows the file).
 */
function rawGetLength(bs: BlockDriverState): number | Promise<number> {
  const file = child(bs);
  // Synchronous when the protocol knows its length (file, mem): the generic layer's request
  // fast paths need a synchronous length; otherwise (a filter) ask and wait.
  return rawLengthNow(bs) ?? rawGetLengthAsync(file);
}

/**
 * rawGetLength when the protocol knows its length now, else null. The file's own lengthNow,
 * not its knownLength: the user's view that adds can only round up to a sector, which the
 * rounding here does anyway, and this runs twice per request (the backend's bounds, the
 * fast-path gate).
 */
function rawLengthNow(bs: BlockDriverState): number | null {
  const f = bs.file;
  const len = f !== null && f.isOpen ? f.lengthNow() : null;
  // Whole already (the usual case): no arithmetic, which past 2 GiB makes a heap number in
  // V8's lower tiers.
  return len === null || len % BDRV_SECTOR_SIZE === 0 ? len : roundUp(len, BDRV_SECTOR_SIZE);
}

async function rawGetLengthAsync(file: BlockDriverState): Promise<number> {
  const len = await file.getLength();
  return Math.ceil(len / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
}

/** What the file knows (raw_get_info): nothing for nbd or http, no dirty state for a host file. */
async function rawGetInfo(bs: BlockDriverState): Promise<BlockDriverInfo> {
  return child(bs).getInfo();
}

async function rawGetAllocatedFileSize(bs: BlockDriverState): Promise<number> {
  return child(bs).getAllocatedFileSize();
}

async function rawInvalidateCache(bs: BlockDriverState): Promise<void> {
  await child(bs).invalidateCache();
}

/** raw_measure: a raw file holds every byte, allocated or not. */
async function rawMeasure(options: CreateOptions, inBs: BlockDriverState | null): Promise<BlockMeasureInfo> {
  const size = typeof options.size === 'number' ? options.size : 0;
  const required = inBs !== null ? BigInt(await inBs.getLength()) : BigInt(Math.ceil(size / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE);
  return { required, fullyAllocated: required };
}

export const rawDriver: BlockDriver = {
  formatName: 'raw',
  requestAlignment: 1,
  zeroNoFallback: true,
  createOptions: [{ name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' }],
  probe: rawProbe,
  open: rawOpen,
  openWarning: rawOpenWarning,
  close: rawClose,
  create: rawCreate,
  measure: rawMeasure,
  coPreadv: rawCoPreadv,
  preadvNow: rawPreadvNow,
  sendfileNow: rawSendfileNow,
  coPwritev: rawCoPwritev,
  pwritevSubmit: rawPwritevSubmit,
  coWriteZeroes: rawCoWriteZeroes,
  coDiscard: rawCoDiscard,
  coFlush: rawCoFlush,
  coBlockStatus: rawCoBlockStatus,
  blockStatusNow: rawBlockStatusNow,
  truncate: rawTruncate,
  truncatePreallocates: true,
  getLength: rawGetLength,
  lengthNow: rawLengthNow,
  getInfo: rawGetInfo,
  getAllocatedFileSize: rawGetAllocatedFileSize,
  invalidateCache: rawInvalidateCache,
};
