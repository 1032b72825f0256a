/**
 * The blkdebug filter: sits where a protocol node would (`blkdebug:CONFIG:IMAGE`, or
 * `blkdebug::IMAGE` without rules) and passes every request to IMAGE's protocol node, unless an
 * armed rule says the request must fail. Format drivers announce debug events on their `file`
 * child (`await bs.file.debugEvent('l2_update')`); when that child is blkdebug, the events arm
 * errors, change state and hit breakpoints (see state.ts).
 *
 * Rules come from the config file (QEMU's ini syntax, read through the protocol layer so a
 * `mem:` config works too) or from driverOptions: `config` (a path, used when the filename
 * names none) and `configText` (the rules themselves). A filename without the `blkdebug:`
 * prefix is the image itself (`qemu-io -f blkdebug x.raw`).
 */
import type { BlockDriver, BlockStatus, OpenOptions, WriteFlags, WriteZeroesFlags } from '../../block/driver.js';
import { BlockError, toBlockError } from '../../block/errors.js';
import type { BlkDebugEvent } from '../../block/events.js';
import type { IOVector } from '../../block/iovec.js';
import { BlockDriverState } from '../../block/node.js';
import { parseBlkdebugConfig, parseEventName, type BlkdebugIOType, type BlkdebugRule } from './config.js';
import { BlkdebugState } from './state.js';

export const BLKDEBUG_PREFIX = 'blkdebug:';

/**
 * Split `blkdebug:CONFIG:IMAGE` (CONFIG may be empty) at the first colon, as QEMU does, except
 * that a CONFIG naming a protocol (`mem:rules`), as `isProtocol` tells, keeps its own colon.
 * A name without the prefix (`-f blkdebug x.raw`) is the image itself, with no config: as in
 * QEMU, the rules then come from the options only (config=, or none).
 */
export function blkdebugParseFilename(
  filename: string,
  isProtocol: (name: string) => boolean = (n) => n === 'mem',
): { config: string; image: string } {
  if (!filename.startsWith(BLKDEBUG_PREFIX)) return { config: '', image: filename };
  const rest = filename.slice(BLKDEBUG_PREFIX.length);
  let c = rest.indexOf(':');
  if (c > 0 && isProtocol(rest.slice(0, c))) c = rest.indexOf(':', c + 1);
  if (c < 0) {
    throw new BlockError('EINVAL', 'blkdebug requires both config file and image path', {
      op: 'open',
      path: filename,
    });
  }
  const image = rest.slice(c + 1);
  if (image === '') {
    throw new BlockError('EINVAL', 'blkdebug requires both config file and image path', {
      op: 'open',
      path: filename,
    });
  }
  return { config: rest.slice(0, c), image };
}

/** Open `filename` as a bare protocol (or filter) node, as QEMU's BDRV_O_PROTOCOL open. */
export async function openProtocolNode(
  parent: BlockDriverState,
  filename: string,
  options: OpenOptions,
): Promise<BlockDriverState> {
  const drv = parent.registry.findProtocol(filename);
  return BlockDriverState.open(filename, {
    // The filter passes requests through it: a child, which may grow under a format.
    child: true,
    readOnly: options.readOnly,
    noFlush: options.noFlush,
    forceShare: options.forceShare,
    clock: parent.clock,
    registry: parent.registry,
    depth: parent.depth,
    format: drv.formatName,
  });
}

async function readConfigFile(parent: BlockDriverState, path: string): Promise<string> {
  let node: BlockDriverState;
  try {
    // QEMU fopen()s the name: an empty one is simply not there.
    if (path === '') throw new BlockError('ENOENT', '', { op: 'open', path });
    node = await openProtocolNode(parent, path, { readOnly: true });
  } catch (e) {
    const err = toBlockError(e, { op: 'open', path });
    throw new BlockError(err.code, `Could not read blkdebug config file: ${err.errnoMessage}`, {
      op: 'open',
      path,
      cause: err,
    });
  }
  try {
    const len = await node.getLength();
    // A rules file is a few lines; anything huge is not one (and must not size our buffer).
    if (len > 1 << 20) {
      throw new BlockError('EFBIG', `blkdebug config file '${path}' is too large (${len} bytes)`, {
        op: 'open',
        path,
      });
    }
    const buf = new Uint8Array(len);
    await node.pread(0, buf);
    return new TextDecoder().decode(buf);
  } finally {
    await node.close();
  }
}

function state(bs: BlockDriverState): BlkdebugState {
  const s = bs.opaque;
  if (!(s instanceof BlkdebugState)) {
    throw new BlockError('EBADF', `blkdebug node '${bs.filename}' is not open`, { op: 'blkdebug', path: bs.filename });
  }
  return s;
}

function child(bs: BlockDriverState): BlockDriverState {
  if (!bs.file) throw new BlockError('EBADF', `blkdebug node '${bs.filename}' has no image`, { op: 'blkdebug' });
  return bs.file;
}

/**
 * QEMU's rule_check: fail the request if an armed rule covers it, after a yield unless
 * `immediately`. Resolves true when the request must not reach the image: a rule with a
 * negative errno makes QEMU return a positive value, which every caller takes for success.
 */
async function ruleCheck(bs: BlockDriverState, offset: number, bytes: number, iotype: BlkdebugIOType, op: string): Promise<boolean> {
  const hit = state(bs).ruleCheck(offset, bytes, iotype, op);
  if (!hit) return false;
  // Not immediately: the error comes back from a later turn of the event loop, as QEMU
  // reschedules the coroutine before returning it.
  if (!hit.immediately) await new Promise<void>((resolve) => queueMicrotask(resolve));
  if (hit.error) throw hit.error;
  return true;
}

async function blkdebugOpen(bs: BlockDriverState, options: OpenOptions): Promise<void> {
  const { config, image } = blkdebugParseFilename(bs.filename, (n) => {
    const d = bs.registry.find(n);
    return d !== undefined && d.protocolName === n;
  });
  // A config named in the filename wins over the option, as in QEMU (its filename parsing
  // overwrites the option); an option given empty is still a file to read, and fails.
  const configPath = config !== '' ? config : options.driverOptions?.config;
  let rules: BlkdebugRule[] = [];
  if (configPath !== undefined) rules = parseBlkdebugConfig(await readConfigFile(bs, configPath), configPath);
  const inline = options.driverOptions?.configText;
  if (inline !== undefined) rules = [...rules, ...parseBlkdebugConfig(inline, 'configText')];
  const s = new BlkdebugState(rules);
  bs.file = await openProtocolNode(bs, image, options);
  bs.opaque = s;
}

async function blkdebugClose(bs: BlockDriverState): Promise<void> {
  const s = bs.opaque;
  // A request parked at a breakpoint would otherwise wait forever.
  if (s instanceof BlkdebugState) s.resumeAll();
  bs.opaque = null;
}

export const blkdebugDriver: BlockDriver = {
  formatName: 'blkdebug',
  protocolName: 'blkdebug',
  isFilter: true,
  debugBreakpoint: (bs, event, tag) => blkdebugBreak(bs, event, tag),
  debugRemoveBreakpoint: (bs, tag) => blkdebugRemoveBreak(bs, tag),
  debugResume: (bs, tag) => blkdebugResume(bs, tag),
  debugIsSuspended: (bs, tag) => blkdebugIsSuspended(bs, tag),
  requestAlignment: 1,
  // The rules file, when the filename names none (config= in -o / --image-opts / json:).
  runtimeOptions: [{ name: 'config', type: 'string', help: 'Path to the configuration file' }],

  open: blkdebugOpen,
  close: blkdebugClose,

  async coPreadv(bs, offset, bytes, qiov: IOVector) {
    if (await ruleCheck(bs, offset, bytes, 'read', 'read')) return;
    await child(bs).preadv(offset, qiov);
  },

  async coPwritev(bs, offset, bytes, qiov: IOVector, flags: WriteFlags) {
    if (await ruleCheck(bs, offset, bytes, 'write', 'write')) return;
    await child(bs).pwritev(offset, qiov, flags);
  },

  async coFlush(bs) {
    // QEMU checks flush rules in blkdebug's flush_to_disk hook, skipped when nothing was written.
    if (bs.flushToDiskDue && (await ruleCheck(bs, 0, 0, 'flush', 'flush'))) return;
    await child(bs).flush();
  },

  async coWriteZeroes(bs, offset, bytes, flags: WriteZeroesFlags) {
    if (await ruleCheck(bs, offset, bytes, 'write-zeroes', 'write_zeroes')) return;
    await child(bs).writeZeroes(offset, bytes, flags);
  },

  async coDiscard(bs, offset, bytes) {
    if (await ruleCheck(bs, offset, bytes, 'discard', 'discard')) return;
    await child(bs).discard(offset, bytes);
  },

  async coBlockStatus(bs, offset, bytes): Promise<BlockStatus> {
    // A negative errno here would hand QEMU's caller -errno as status flags; not modelled:
    // the query goes on to the image.
    await ruleCheck(bs, offset, bytes, 'block-status', 'block_status');
    return child(bs).blockStatus(offset, bytes);
  },

  async truncate(bs, size, prealloc) {
    await child(bs).truncate(size, prealloc);
  },
  truncatePreallocates: true,

  getLength(bs) {
    return child(bs).getLength();
  },

  getAllocatedFileSize(bs) {
    return child(bs).getAllocatedFileSize();
  },

  async debugEvent(bs, event: BlkDebugEvent) {
    await state(bs).debugEvent(event);
  },
};

// ---------------------------------------------------------------------------------------------
// Breakpoint API for blk-io (break / wait_break / resume / remove_break) and tests.

/**
 * The blkdebug node at or below `bs`, following `file` children (QEMU walks the primary child
 * until a driver with the breakpoint hooks is found).
 */
export function blkdebugFind(bs: BlockDriverState | null): BlockDriverState | null {
  for (let n = bs; n; n = n.file) {
    if (n.driver === blkdebugDriver || n.driver.formatName === 'blkdebug') return n;
  }
  return null;
}

function stateOf(bs: BlockDriverState): BlkdebugState | null {
  const n = blkdebugFind(bs);
  return n && n.opaque instanceof BlkdebugState ? n.opaque : null;
}

function noBlkdebug(op: string): BlockError {
  return new BlockError('ENOTSUP', `${op}: no blkdebug node in this image's stack`, { op });
}

/** `break EVENT TAG`: the next request announcing EVENT parks until resumed. */
export function blkdebugBreak(bs: BlockDriverState, event: string, tag: string): void {
  const s = stateOf(bs);
  if (!s) throw noBlkdebug('break');
  const ev = parseEventNameOrThrow(event);
  s.addBreakpoint(ev, tag);
}

function parseEventNameOrThrow(event: string): BlkDebugEvent {
  const found = parseEventName(event);
  if (!found) throw new BlockError('ENOENT', `Unknown blkdebug event '${event}'`, { op: 'break' });
  return found;
}

/** `resume TAG`: wake the request parked at TAG (ENOENT when none is). */
export function blkdebugResume(bs: BlockDriverState, tag: string): void {
  const s = stateOf(bs);
  if (!s) throw noBlkdebug('resume');
  if (!s.resume(tag)) throw new BlockError('ENOENT', `No suspended request with tag '${tag}'`, { op: 'resume' });
}

/** `remove_break TAG`: forget TAG's breakpoints and wake its parked requests (ENOENT when none). */
export function blkdebugRemoveBreak(bs: BlockDriverState, tag: string): void {
  const s = stateOf(bs);
  if (!s) throw noBlkdebug('remove_break');
  if (!s.removeBreakpoint(tag)) throw new BlockError('ENOENT', `No breakpoint with tag '${tag}'`, { op: 'remove_break' });
}

/** `wait_break TAG` polls this: is a request parked at TAG? */
export function blkdebugIsSuspended(bs: BlockDriverState, tag: string): boolean {
  const s = stateOf(bs);
  if (!s) throw noBlkdebug('wait_break');
  return s.isSuspended(tag);
}

/** Wait until a request is parked at TAG (polls between event-loop turns; bounded by `timeoutMs`). */
export async function blkdebugWaitBreak(bs: BlockDriverState, tag: string, timeoutMs = 10_000): Promise<void> {
  const start = Date.now();
  while (!blkdebugIsSuspended(bs, tag)) {
    if (Date.now() - start > timeoutMs) {
      throw new BlockError('EBUSY', `wait_break: no request reached breakpoint '${tag}'`, { op: 'wait_break' });
    }
    await new Promise<void>((resolve) => setTimeout(resolve, 0));
  }
}

/** The rule engine of the blkdebug node at or below `bs` (tests, introspection). */
export function blkdebugState(bs: BlockDriverState): BlkdebugState | null {
  return stateOf(bs);
}
