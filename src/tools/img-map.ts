// blk-img map: the allocation map through the backing chain, merged into extents the way
// qemu-img map merges them (human: data extents only; json: every extent with its depth).
import type { BlockDriverState } from '../index.js';
import { cvtnum, errorExit, parseOptions, ToolExit } from './common.js';
import {
  HelpRequest,
  LONG_FORCE_SHARE,
  LONG_FORMAT,
  LONG_HELP,
  LONG_IMAGE_OPTS,
  LONG_OBJECT,
  LONG_OUTPUT,
  OPT_OUTPUT,
  closeQuietly,
  imgOpen,
  imgSharedOption,
  parseOutputFormat,
  type ImgEnv,
  type SharedImgOptions,
} from './img-util.js';
import { ERRNO_MESSAGES, isBlockError } from '../block/errors.js';

export interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
  offset: number;
  hasOffset: boolean;
  depth: number;
  present: boolean;
  filename: string | null;
}

/** The status flags of one layer with the generic block layer's rules for unallocated ranges. */
export interface LayerStatus {
  pnum: number;
  allocated: boolean;
  data: boolean;
  zero: boolean;
  offset?: number;
  file?: BlockDriverState;
}

/**
 * bdrv_block_status for one node: the driver's answer, plus "unallocated reads as zeros" when
 * there is no backing file or the range starts past the backing file's end.
 */
export async function layerStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<LayerStatus> {
  const st = await bs.blockStatus(offset, bytes);
    // ALLOCATED is what the driver itself claims (data or a zero marker); the generic layer's
  // "reads as zero" for unallocated ranges does not make them present.
  const r: LayerStatus = { pnum: st.pnum, allocated: st.allocated, data: st.data, zero: st.zero };
  if (st.offset !== undefined) {
    r.offset = st.offset;
    r.file = st.file;
  }
  if (!r.allocated && bs.driver.supportsBacking) {
    if (!bs.backing) r.zero = true;
    else if (offset >= (await bs.backing.getLength())) r.zero = true;
  }
  return r;
}

/** The node holding the bytes at `offset` is named as it was opened (a filter keeps its prefix). */
function nodeFilename(file: BlockDriverState | undefined): string | null {
  return file ? file.filename : null;
}

/** get_block_status of qemu-img map: walk down the chain until a layer decides. */
export async function getBlockStatus(top: BlockDriverState, offset: number, bytes: number): Promise<MapEntry> {
  let bs: BlockDriverState | null = top;
  let depth = 0;
  let n = bytes;
  let st: LayerStatus = { pnum: n, allocated: false, data: false, zero: false };
  while (bs) {
    st = await layerStatus(bs, offset, n);
    n = st.pnum;
    if (st.zero || st.data) break;
    if (!bs.backing) {
      st = { pnum: n, allocated: false, data: false, zero: false };
      break;
    }
    bs = bs.backing;
    depth++;
  }
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

function dumpMapEntry(env: ImgEnv, fmt: 'human' | 'json', e: MapEntry, next: MapEntry | null): void {
  if (fmt === 'human') {
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
    return;
  }
  let s = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
  if (e.hasOffset) s += `, "offset": ${e.offset}`;
  s += '}';
  if (next) s += ',\n';
  env.o.out(s);
}

export async function imgMap(env: ImgEnv, argv: string[]): Promise<number> {
  let fmt: string | undefined;
  let outputArg: string | null = null;
  let forceShare = false;
  let startOffset = 0;
  let maxLength = Number.MAX_SAFE_INTEGER;
  const shared: SharedImgOptions = { imageOpts: false };
  const rest = parseOptions(
    env.o,
    argv,
    ':f:hU',
    [
      LONG_HELP,
      LONG_FORMAT,
      LONG_OUTPUT,
      LONG_OBJECT,
      LONG_IMAGE_OPTS,
      LONG_FORCE_SHARE,
      { name: 'start-offset', hasArg: 1, val: 's' },
      { name: 'max-length', hasArg: 1, val: 'l' },
    ],
    (opt, arg = '') => {
      switch (opt) {
        case 'h':
          throw new HelpRequest();
        case 'f':
          fmt = arg;
          break;
        case 'U':
          forceShare = true;
          break;
        case OPT_OUTPUT:
          outputArg = arg;
          break;
        case 's':
          startOffset = cvtnum(env.o, 'start offset', arg);
          break;
        case 'l':
          maxLength = cvtnum(env.o, 'max length', arg);
          break;
        default:
          imgSharedOption(env, opt, arg, shared);
      }
    },
  );
  if (rest.length !== 1) errorExit(env.o, 'Expecting one image file name');
  const output = outputArg === null ? 'human' : parseOutputFormat(env, outputArg);

  const bs = await imgOpen(env, rest[0], { imageOpts: shared.imageOpts, format: fmt, readOnly: true, forceShare });
  try {
    let length = await bs.getLength();
    if (output === 'human') env.o.out(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
    else env.o.out('[');
    let curr: MapEntry = { start: startOffset, length: 0, data: false, zero: false, offset: 0, hasOffset: false, depth: 0, present: false, filename: null };
    length = Math.min(startOffset + maxLength, length);
    while (curr.start + curr.length < length) {
      const offset = curr.start + curr.length;
      // Probe up to 1 GiB at a time.
      const n = Math.min(2 ** 30, length - offset);
      let next: MapEntry;
      try {
        next = await getBlockStatus(bs, offset, n);
      } catch (e) {
        env.o.error(`Could not read file metadata: ${isBlockError(e) ? ERRNO_MESSAGES[e.code] : String(e)}`);
        return 1;
      }
      if (entryMergeable(curr, next)) {
        curr.length += next.length;
        continue;
      }
      if (curr.length > 0) dumpMapEntry(env, output, curr, next);
      curr = next;
    }
    dumpMapEntry(env, output, curr, null);
    if (output === 'json') env.o.out(']\n');
    return 0;
  } finally {
    await closeQuietly(bs);
  }
}

export const BDRV_BLOCK_DATA = 0x01;
export const BDRV_BLOCK_ZERO = 0x02;
export const BDRV_BLOCK_OFFSET_VALID = 0x04;
export const BDRV_BLOCK_ALLOCATED = 0x10;
export const BDRV_BLOCK_EOF = 0x20;

/**
 * bdrv_block_status_above(bs, base): the status through the chain down to (not including)
 * `base`, as QEMU's flag word. A layer that is shorter than the one above it reads as
 * allocated zeros past its end; EOF is set when the answer reaches the end of `bs`.
 */
export async function blockStatusAboveFlags(
  bs: BlockDriverState,
  base: BlockDriverState | null,
  offset: number,
  bytes: number,
): Promise<{ flags: number; pnum: number }> {
  const toFlags = (s: LayerStatus): number =>
    (s.data ? BDRV_BLOCK_DATA : 0) |
    (s.zero ? BDRV_BLOCK_ZERO : 0) |
    (s.offset !== undefined ? BDRV_BLOCK_OFFSET_VALID : 0) |
    (s.allocated ? BDRV_BLOCK_ALLOCATED : 0);
  const topLen = await bs.getLength();
  let st = await layerStatus(bs, offset, bytes);
  let flags = toFlags(st);
  let pnum = st.pnum;
  if (!st.allocated && bs !== base) {
    for (let p = bs.backing; p && p !== base; p = p.backing) {
      if (offset >= (await p.getLength())) {
        // The layer above deferred to a shorter one: synthesised zeros count as allocated here.
        flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        break;
      }
      st = await layerStatus(p, offset, pnum);
      flags = toFlags(st);
      pnum = st.pnum;
      if (st.allocated) break;
    }
  }
  if (offset + pnum === topLen) flags |= BDRV_BLOCK_EOF;
  return { flags, pnum };
}
