// blk-io's open, close and reopen, and openfile() shared with the program's own options:
// cache/discard/aio modes, QemuOpts-style -o strings, QEMU's open messages, -s overlays.
import { resolve } from 'node:path';
import { bdrvCreate } from '../block/create.js';
import { BlockDriverState } from '../block/node.js';
import { isBlockError } from '../block/errors.js';
import { protocolPrefix } from '../block/path.js';
import { QEMU_IO_OPEN_OPTS, type FlatQDict } from '../block/index.js';
import { applyForceShare, openWithOptions, parseOptsNoisily } from './image-opts.js';
import { attachTrace } from './io-trace.js';
import { errText, errnoText, type IoSession, type OpenFlags } from './io-session.js';
import { EINVAL, OptFail, getopts, image, usage, type CmdInfo } from './io-cmd-util.js';

/** bdrv_parse_cache_mode. */
export function parseCacheMode(mode: string, f: OpenFlags): boolean {
  switch (mode) {
    case 'off':
    case 'none':
      f.nocache = true;
      f.noFlush = false;
      f.writethrough = false;
      return true;
    case 'directsync':
      f.nocache = true;
      f.noFlush = false;
      f.writethrough = true;
      return true;
    case 'writeback':
      f.nocache = false;
      f.noFlush = false;
      f.writethrough = false;
      return true;
    case 'unsafe':
      f.nocache = false;
      f.noFlush = true;
      f.writethrough = false;
      return true;
    case 'writethrough':
      f.nocache = false;
      f.noFlush = false;
      f.writethrough = true;
      return true;
    default:
      return false;
  }
}

/** QEMU's boolean option words (qapi_bool_parse); null for anything else. */
export function parseBool(v: string): boolean | null {
  if (['on', 'yes', 'true', 'y'].includes(v)) return true;
  if (['off', 'no', 'false', 'n'].includes(v)) return false;
  return null;
}

export function validDiscardMode(mode: string): boolean {
  return ['off', 'ignore', 'on', 'unmap'].includes(mode);
}

/** bdrv_parse_aio; returns whether it is the native (O_DIRECT-only) mode, or null if invalid. */
export function parseAioMode(mode: string): boolean | null {
  if (mode === 'threads' || mode === 'io_uring') return false;
  if (mode === 'native') return true;
  return null;
}

let snapshotCounter = 0;

/**
 * openfile(): open `name` with `flags` and the options (`-o`, `--image-opts`: QEMU's QDict);
 * messages as qemu-io prints them. Returns false after reporting a failure.
 */
export async function openfile(s: IoSession, name: string | null, flags: OpenFlags, opts: FlatQDict | null = null): Promise<boolean> {
  if (s.bs !== null) {
    s.o.error("file open already, try 'help close'");
    return false;
  }
  const where = name === null ? "can't open: " : `can't open device ${name}: `;
  const fail = (msg: string): false => {
    s.o.error(where + msg);
    return false;
  };
  const f: OpenFlags = { ...flags };
  const qdict: FlatQDict = new Map(opts ?? []);
  // -U: the image's options must not say otherwise; then force-share=on is one of them.
  if (f.forceShare && !applyForceShare(s.o, qdict, '-U conflicts with image options')) return false;
  if (qdict.size === 1 && f.forceShare) qdict.delete('force-share');
  // The session's cache mode (its write cache, reopen) follows the cache options.
  for (const key of ['cache.direct', 'cache.no-flush']) {
    const v = qdict.get(key);
    if (typeof v !== 'string') continue;
    if (key === 'cache.direct') f.nocache = v === 'on';
    else f.noFlush = v === 'on';
  }
  if (f.forceShare && !f.readOnly) return fail('force-share=on can only be used with read-only images');
  if (f.nativeAio && !f.nocache) {
    return fail('aio=native was specified, but it requires cache.direct=on, which was not specified.');
  }
  if (name === '' && qdict.size === 0) return fail("The 'file' block driver requires a file name");
  let bs: BlockDriverState;
  try {
    bs = await openWithOptions(name, qdict, {
      format: f.format,
      readOnly: f.readOnly || f.snapshot,
      noFlush: f.noFlush,
      forceShare: f.forceShare,
      copyOnRead: f.copyOnRead && !f.readOnly,
      onWarning: (m) => s.o.warn(m),
    });
  } catch (e) {
    return fail(errText(e));
  }
  // The options may have made the image read-only, or writable under -r (read-only=off).
  f.readOnly = bs.readOnly && !f.snapshot;
  const target = name ?? bs.filename;
  if (bs.openOptions.format === undefined && bs.driver.formatName === 'raw') {
    s.o.errRaw(
      `WARNING: Image format was not specified for '${target}' and probing guessed raw.\n` +
        '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
        "         Specify the 'raw' format explicitly to remove the restrictions.\n",
    );
  }
  if (f.copyOnRead && f.readOnly) {
    await bs.close().catch(() => undefined);
    return fail("Can't use copy-on-read on read-only device");
  }
  if (f.snapshot) {
    // -s: writes go to a temporary overlay (in memory here) over the read-only image.
    try {
      bs = await snapshotOverlay(bs, target, f);
    } catch (e) {
      return fail(errText(e));
    }
  }
  attachTrace(s.o, s.trace, bs);
  s.bs = bs;
  s.filename = target;
  s.flags = f;
  s.blkWritePerm = !f.readOnly;
  nameNodes(s, bs);
  return true;
}

/**
 * QEMU names every node it opens "#block" + a process-wide counter + two random digits
 * (id_generate): a format's file before the format (the generic layer opens it first), a
 * filter before the image it opens itself, a backing chain after its overlay. Only the
 * image's own name is ever printed (a refused reopen), so only that one is kept.
 */
function nameNodes(s: IoSession, top: BlockDriverState): void {
  const order: BlockDriverState[] = [];
  const visit = (n: BlockDriverState): void => {
    if (n.driver.isFilter === true) order.push(n);
    if (n.file) visit(n.file);
    if (n.driver.isFilter !== true) order.push(n);
    if (n.backing) visit(n.backing);
  };
  visit(top);
  const rand = Math.floor(Math.random() * 100);
  s.nodeName = `#block${s.nodeCounter + order.indexOf(top)}${String(rand).padStart(2, '0')}`;
  s.nodeCounter += order.length;
}

async function snapshotOverlay(base: BlockDriverState, target: string, f: OpenFlags): Promise<BlockDriverState> {
  const size = await base.getLength();
  const fmt = base.driver.formatName;
  await base.close();
  const overlay = `mem:blk-io-snapshot-${process.pid}-${++snapshotCounter}`;
  await bdrvCreate(overlay, {
    format: 'qed',
    // A host path is made absolute (the overlay lives elsewhere); mem: and filter names stay.
    options: { size, backingFile: protocolPrefix(target) === null ? resolve(target) : target, backingFmt: fmt },
  });
  return BlockDriverState.open(overlay, {
    format: 'qed',
    backingFormat: fmt,
    noFlush: f.noFlush,
    copyOnRead: f.copyOnRead,
  });
}

export async function closeImage(s: IoSession): Promise<void> {
  await s.drain();
  const bs = s.bs;
  s.bs = null;
  if (bs !== null) {
    // bdrv_close reports nothing: a failing flush at close is as silent as in qemu-io.
    await bs.close().catch(() => undefined);
  }
}

export async function openF(s: IoSession, argv: string[]): Promise<number> {
  const f: OpenFlags = { ...s.flags, readOnly: false, copyOnRead: false, snapshot: false, forceShare: false };
  f.nocache = false;
  f.noFlush = false;
  f.writethrough = true;
  f.nativeAio = false;
  f.format = undefined;
  let opts = new Map<string, string>();
  let fail: OptFail | null = null;
  const g = getopts(s, argv, 'snCro:ki:t:d:U', (c, arg) => {
    const a = arg ?? '';
    switch (c) {
      case 's':
        f.snapshot = true;
        break;
      case 'n':
        f.nocache = true;
        f.writethrough = false;
        break;
      case 'C':
        f.copyOnRead = true;
        break;
      case 'r':
        f.readOnly = true;
        break;
      case 'k':
        f.nativeAio = true;
        break;
      case 't':
        if (!parseCacheMode(a, f)) {
          s.o.error(`Invalid cache option: ${a}`);
          fail = new OptFail(EINVAL);
          return false;
        }
        break;
      case 'd':
        if (!validDiscardMode(a)) {
          s.o.error(`Invalid discard option: ${a}`);
          fail = new OptFail(EINVAL);
          return false;
        }
        break;
      case 'i': {
        const native = parseAioMode(a);
        if (native === null) {
          s.o.error(`Invalid aio option: ${a}`);
          fail = new OptFail(EINVAL);
          return false;
        }
        f.nativeAio = native;
        break;
      }
      case 'o': {
        if (s.imageOpts) {
          s.o.out("--image-opts and 'open -o' are mutually exclusive\n");
          fail = new OptFail(EINVAL);
          return false;
        }
        const parsed = parseOptsNoisily(s.o, a, QEMU_IO_OPEN_OPTS);
        if (parsed === null) {
          fail = new OptFail(EINVAL);
          return false;
        }
        // One merged list: a later -o adds to (and overrides) the earlier ones.
        opts = new Map([...opts, ...parsed]);
        break;
      }
      case 'U':
        f.forceShare = true;
        break;
    }
    return true;
  });
  if (g === null) {
    usage(s, openCmd);
    return EINVAL;
  }
  if (fail !== null) return (fail as OptFail).ret;
  const args = g.rest;
  let ok: boolean;
  if (s.imageOpts && g.optind === args.length - 1) {
    // With --image-opts the argument is itself the option string.
    const parsed = parseOptsNoisily(s.o, args[g.optind], QEMU_IO_OPEN_OPTS);
    if (parsed === null) return EINVAL;
    ok = await openfile(s, null, f, new Map([...opts, ...parsed]));
  } else if (g.optind === args.length - 1) ok = await openfile(s, args[g.optind], f, opts);
  else if (g.optind === args.length) ok = await openfile(s, null, f, opts);
  else {
    usage(s, openCmd);
    return EINVAL;
  }
  s.poll();
  return ok ? 0 : EINVAL;
}

export async function closeF(s: IoSession): Promise<number> {
  await closeImage(s);
  return 0;
}

export async function reopenF(s: IoSession, argv: string[]): Promise<number> {
  const f: OpenFlags = { ...s.flags };
  let hasRw = false;
  let hasCache = false;
  let opts = new Map<string, string>();
  let fail: OptFail | null = null;
  const g = getopts(s, argv, 'c:o:rw', (c, arg) => {
    const a = arg ?? '';
    if (c === 'c') {
      if (!parseCacheMode(a, f)) {
        s.o.error(`Invalid cache option: ${a}`);
        fail = new OptFail(EINVAL);
        return false;
      }
      hasCache = true;
    } else if (c === 'o') {
      const parsed = parseOptsNoisily(s.o, a, QEMU_IO_OPEN_OPTS);
      if (parsed === null) {
        fail = new OptFail(EINVAL);
        return false;
      }
      opts = new Map([...opts, ...parsed]);
    } else if (c === 'r' || c === 'w') {
      if (hasRw) {
        s.o.error('Only one -r/-w option may be given');
        fail = new OptFail(EINVAL);
        return false;
      }
      f.readOnly = c === 'r';
      hasRw = true;
    }
    return true;
  });
  if (g === null) {
    usage(s, reopenCmd);
    return EINVAL;
  }
  if (fail !== null) return (fail as OptFail).ret;
  if (g.optind !== g.rest.length) {
    usage(s, reopenCmd);
    return EINVAL;
  }
  const bs = image(s);
  // qemu-io drains a node it is about to make read-only and gives up the write permission
  // before looking at the options, so even a reopen refused below has let QED mark the image
  // clean.
  if (f.readOnly) {
    await s.drain();
    s.blkWritePerm = false;
  }
  // Values are checked by bdrv_reopen (after its drain); a bad one leaves the mode as it was.
  const bad: { key: string | null } = { key: null };
  const boolOpt = (key: string): boolean | undefined => {
    const v = opts.get(key);
    if (v === undefined) return undefined;
    opts.delete(key);
    const b = parseBool(v);
    if (b === null) bad.key ??= key;
    return b ?? undefined;
  };
  if (opts.has('read-only')) {
    if (hasRw) {
      s.o.error("Cannot set both -r/-w and 'read-only'");
      return EINVAL;
    }
    f.readOnly = boolOpt('read-only') ?? f.readOnly;
  }
  if (opts.has('cache.direct') || opts.has('cache.no-flush')) {
    if (hasCache) {
      s.o.error('Cannot set both -c and the cache options');
      return EINVAL;
    }
    f.nocache = boolOpt('cache.direct') ?? f.nocache;
    f.noFlush = boolOpt('cache.no-flush') ?? f.noFlush;
  }
  // Accepted with no effect here: auto-read-only (only matters at open), discard (as open -d),
  // cache.direct of the file (O_DIRECT means nothing to our file driver).
  boolOpt('auto-read-only');
  boolOpt('file.cache.direct');
  const discard = opts.get('discard');
  const detectZeroes = opts.get('detect-zeroes');
  // bdrv_reopen drains the node, checks the values, flushes it (under the old cache mode: a
  // failed flush leaves everything as it was), and only then refuses options it cannot change.
  await s.drain();
  if (bad.key !== null) {
    s.o.error(`Parameter '${bad.key}' expects 'on' or 'off'`);
    return EINVAL;
  }
  if (discard !== undefined) {
    if (!validDiscardMode(discard)) {
      s.o.error('Invalid discard option');
      return EINVAL;
    }
    opts.delete('discard');
  }
  if (detectZeroes !== undefined) {
    if (!['off', 'on', 'unmap'].includes(detectZeroes)) {
      s.o.error(`invalid parameter value: ${detectZeroes}`);
      return EINVAL;
    }
    // Zero detection is not implemented: only "off", what every image here already does.
    if (detectZeroes === 'off') opts.delete('detect-zeroes');
  }
  // Naming what the nodes already are changes nothing.
  if (opts.get('driver') === bs.driver.formatName) opts.delete('driver');
  if (bs.file !== null) {
    if (opts.get('file.driver') === bs.file.driver.formatName) opts.delete('file.driver');
    if (opts.get('file.filename') === bs.file.filename) opts.delete('file.filename');
  }
  // read-only=on alone keeps the write permission taken at open or by a write: the
  // permission check after the flush refuses the change.
  const permRefused = f.readOnly && !bs.readOnly && s.blkWritePerm;
  if (opts.size > 0 || s.flags.snapshot || permRefused) {
    try {
      if (!bs.readOnly) await bs.flush();
    } catch (e) {
      s.o.error(`Error flushing drive: ${errnoText(e)}`);
      return EINVAL;
    }
    // The image's own options first, then its file's (named without the prefix).
    const keys = [...opts.keys()].sort((a, b) => Number(a.startsWith('file.')) - Number(b.startsWith('file.')));
    for (const key of keys) {
      s.o.error(`Cannot change the option '${key.startsWith('file.') ? key.slice(5) : key}'`);
      return EINVAL;
    }
    if (permRefused) {
      s.o.error(`Read-only block node '${s.nodeName}' cannot support read-write users`);
      return EINVAL;
    }
    // -s: the temporary overlay lives in memory, over the image opened read-only: only the
    // overlay's mode changes, the image itself stays read-only.
    bs.readOnly = f.readOnly;
    s.flags = { ...f, snapshot: true };
    return 0;
  }
  // The same nodes in the new mode: their state (blkdebug rules already armed, QED's caches,
  // flush generations) carries over, as in QEMU. The write cache is the session's (FUA or
  // not); O_DIRECT has no effect on our file driver.
  try {
    await bs.reopen({ readOnly: f.readOnly, noFlush: f.noFlush });
  } catch (e) {
    if (isBlockError(e) && e.op === 'reopen_flush') s.o.error(`Error flushing drive: ${errnoText(e)}`);
    else s.o.error(errText(e));
    return EINVAL;
  }
  s.flags = { ...f };
  return 0;
}

export const openCmd: CmdInfo = {
  name: 'open',
  cfunc: openF,
  argmin: 1,
  argmax: -1,
  nofile: true,
  args: '[-rsCnkU] [-t cache] [-d discard] [-o options] [path]',
  oneline: 'open the file specified by path',
};
export const reopenCmd: CmdInfo = {
  name: 'reopen',
  cfunc: reopenF,
  argmin: 0,
  argmax: -1,
  args: '[(-r|-w)] [-c cache] [-o options]',
  oneline: 'reopens an image with new options',
};
