// blk-img map: the allocation map through the backing chain, merged into extents the way
// qemu-img map merges them (human: data extents only; json: every extent with its depth).
import { BDRV_BLOCK_ALLOCATED, BDRV_BLOCK_DATA, BDRV_BLOCK_OFFSET_VALID, BDRV_BLOCK_ZERO, ERRNO_MESSAGES, StatusExtents, backingLengthNow, isBlockError, type BlockDriverState } from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { ToolExit } from '../shared/output.js';
import { cvtnum } from '../shared/size.js';
import { layerStatus, layerStatusNow, type LayerStatus } from './block-status.js';
import type { ImgEnv } from './env.js';
import { MapJsonWriter, type MapJsonEntry } from './map-json.js';
import { imgOpen } from './open.js';
import { FORCE_SHARE, FORMAT_LONG, HELP, IMAGE_OPTS, OBJECT, OUTPUT, imgArgs, oneFilename, parseImgOptions, parseOutputFormat, type ImgArgs, type ImgOption } from './options.js';

export interface MapEntry extends MapJsonEntry {
  filename: string | null;
}

/** The node holding the bytes at `offset` is named as it was opened (a filter keeps its prefix). */
function nodeFilename(file: BlockDriverState | undefined): string | null {
  return file ? file.filename : null;
}

function mapEntry(offset: number, n: number, st: LayerStatus, depth: number): MapEntry {
  const hasOffset = st.offset !== undefined;
  return {
    start: offset,
    length: n,
    data: st.data,
    zero: st.zero,
    offset: st.offset ?? 0,
    hasOffset,
    depth,
    present: st.allocated,
    filename: hasOffset ? nodeFilename(st.file) : null,
  };
}

const UNALLOCATED: LayerStatus = { pnum: 0, allocated: false, data: false, zero: false };

/** get_block_status of qemu-img map: walk down the chain until a layer decides. */
export async function getBlockStatus(top: BlockDriverState, offset: number, bytes: number): Promise<MapEntry> {
  let bs: BlockDriverState | null = top;
  let depth = 0;
  let n = bytes;
  let st: LayerStatus = UNALLOCATED;
  while (bs) {
    st = await layerStatus(bs, offset, n);
    n = st.pnum;
    if (st.zero || st.data) break;
    if (!bs.backing) {
      st = UNALLOCATED;
      break;
    }
    bs = bs.backing;
    depth++;
  }
  return mapEntry(offset, n, st, depth);
}

/**
 * The same walk now, when every layer it meets answers without waiting (layerStatusNow);
 * null otherwise, and getBlockStatus then asks. Map meets an extent per answer, tens of
 * thousands in a fragmented image: most of them come from a table already read.
 */
export function getBlockStatusNow(top: BlockDriverState, offset: number, bytes: number): MapEntry | null {
  let bs: BlockDriverState | null = top;
  let depth = 0;
  let n = bytes;
  let st: LayerStatus | null = UNALLOCATED;
  while (bs) {
    st = layerStatusNow(bs, offset, n);
    if (st === null) return null;
    n = st.pnum;
    if (st.zero || st.data) break;
    if (!bs.backing) {
      st = UNALLOCATED;
      break;
    }
    bs = bs.backing;
    depth++;
  }
  return mapEntry(offset, n, st, depth);
}

function entryMergeable(curr: MapEntry, next: MapEntry): boolean {
  if (curr.length === 0) return false;
  if (
    curr.zero !== next.zero ||
    curr.data !== next.data ||
    curr.depth !== next.depth ||
    curr.present !== next.present ||
    (curr.filename === null) !== (next.filename === null) ||
    curr.hasOffset !== next.hasOffset
  ) {
    return false;
  }
  if (curr.filename !== null && curr.filename !== next.filename) return false;
  if (curr.hasOffset && curr.offset + curr.length !== next.offset) return false;
  return true;
}

const hex = (n: number): string => (n === 0 ? '0' : `0x${n.toString(16)}`);

function dumpMapEntry(env: ImgEnv, json: MapJsonWriter | null, e: MapEntry, next: MapEntry | null): void {
  if (json !== null) {
    json.entry(e, next === null);
    return;
  }
  if (e.data && !e.hasOffset) {
    env.o.error('File contains external, encrypted or compressed clusters.');
    throw new ToolExit(1);
  }
  if (e.data && !e.zero) {
    env.o.out(`${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${hex(e.hasOffset ? e.offset : 0).padEnd(16)}${e.filename ?? ''}\n`);
  }
  // Human output does not tell zero from unallocated: normalise to coalesce more.
  if (next && (!next.data || next.zero)) {
    next.data = false;
    next.zero = true;
  }
}

/**
 * The map entry of extent `i` of a batch from the top layer (bdrvBlockStatusExtents), into
 * `e`: false when the top layer does not decide it, and getBlockStatus walks down instead.
 * Unallocated reads as zeros without a backing file or past its end, as layerStatusNow says.
 */
function extentEntry(bs: BlockDriverState, ext: StatusExtents, i: number, start: number, backingLen: number, e: MapEntry): boolean {
  let flags = ext.flags[i];
  if ((flags & (BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_ZERO)) === 0 && bs.driver.supportsBacking) {
    if (start < backingLen) return false;
    flags |= BDRV_BLOCK_ZERO;
  }
  if ((flags & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO)) === 0) return false;
  const hasOffset = (flags & BDRV_BLOCK_OFFSET_VALID) !== 0;
  e.start = start;
  e.length = ext.pnum[i];
  e.data = (flags & BDRV_BLOCK_DATA) !== 0;
  e.zero = (flags & BDRV_BLOCK_ZERO) !== 0;
  e.offset = hasOffset ? ext.hostOffset[i] : 0;
  e.hasOffset = hasOffset;
  e.depth = 0;
  e.present = (flags & BDRV_BLOCK_ALLOCATED) !== 0;
  e.filename = hasOffset ? nodeFilename(ext.file ?? undefined) : null;
  return true;
}

/** The entry being merged, and a spare one the next extent of a batch is read into. */
interface MapWalk {
  curr: MapEntry;
  spare: MapEntry;
}

/**
 * Merge and print the extents of a batch from `start` on, as far as the top layer decides
 * them; how many it took. A function of its own, apart from the async walk: this loop is what
 * V8 optimises, and the walk's rarer paths (the asks one by one) then do not throw it away.
 */
function takeExtents(env: ImgEnv, json: MapJsonWriter | null, bs: BlockDriverState, ext: StatusExtents, got: number, start: number, w: MapWalk): number {
  const backingLen = backingLengthNow(bs) ?? Infinity;
  let taken = 0;
  for (; taken < got && extentEntry(bs, ext, taken, start, backingLen, w.spare); taken++) {
    const next = w.spare;
    start += next.length;
    if (entryMergeable(w.curr, next)) {
      w.curr.length += next.length;
      continue;
    }
    if (w.curr.length > 0) dumpMapEntry(env, json, w.curr, next);
    w.spare = w.curr;
    w.curr = next;
  }
  return taken;
}

/** Extents asked of the top layer at once. */
const EXTENTS_BATCH = 1024;

interface MapArgs extends ImgArgs {
  startOffset: number;
  maxLength: number;
}

const MAP_OPTIONS: readonly ImgOption<MapArgs>[] = [
  HELP,
  FORMAT_LONG,
  OUTPUT,
  OBJECT,
  IMAGE_OPTS,
  FORCE_SHARE,
  { long: 'start-offset', arg: 1, set: (s, arg, env) => void (s.startOffset = cvtnum(env.o, 'start offset', arg)) },
  { long: 'max-length', arg: 1, set: (s, arg, env) => void (s.maxLength = cvtnum(env.o, 'max length', arg)) },
];

export async function imgMap(env: ImgEnv, argv: string[]): Promise<number> {
  const args: MapArgs = { ...imgArgs(), startOffset: 0, maxLength: Number.MAX_SAFE_INTEGER };
  const filename = oneFilename(env, parseImgOptions(env, argv, MAP_OPTIONS, args));
  const output = parseOutputFormat(env, args.output);
  const { startOffset, maxLength } = args;

  const blk = await imgOpen(env, filename, { imageOpts: args.imageOpts, format: args.fmt, readOnly: true, forceShare: args.forceShare });
  const bs = rootOf(blk);
  try {
    let length = await blk.getLength();
    const json = output === 'json' ? new MapJsonWriter(env.o) : null;
    if (json === null) env.o.out(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
    else env.o.out('[');
    const empty = (): MapEntry => ({ start: startOffset, length: 0, data: false, zero: false, offset: 0, hasOffset: false, depth: 0, present: false, filename: null });
    const w: MapWalk = { curr: empty(), spare: empty() };
    const ext = new StatusExtents(EXTENTS_BATCH);
    length = Math.min(startOffset + maxLength, length);
    try {
      while (w.curr.start + w.curr.length < length) {
        const offset = w.curr.start + w.curr.length;
        // Probe up to 1 GiB at a time.
        const n = Math.min(2 ** 30, length - offset);
        // As many extents as the top layer answers now; the rest is asked one by one.
        const got = bs.blockStatusExtents(offset, n, ext);
        if (got > 0 && takeExtents(env, json, bs, ext, got, offset, w) > 0) continue;
        const curr = w.curr;
        let next: MapEntry;
        try {
          next = getBlockStatusNow(bs, offset, n) ?? (await getBlockStatus(bs, offset, n));
        } catch (e) {
          json?.flush();
          env.o.error(`Could not read file metadata: ${isBlockError(e) ? ERRNO_MESSAGES[e.code] : String(e)}`);
          return 1;
        }
        if (entryMergeable(curr, next)) {
          curr.length += next.length;
          continue;
        }
        if (curr.length > 0) dumpMapEntry(env, json, curr, next);
        w.curr = next;
      }
      dumpMapEntry(env, json, w.curr, null);
    } finally {
      // Lines not yet handed to stdout go before any message on stderr.
      json?.flush();
    }
    if (json !== null) env.o.out(']\n');
    return 0;
  } finally {
    await closeQuietly(blk);
  }
}
