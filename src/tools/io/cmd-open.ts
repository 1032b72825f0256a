// blk-io's open, close and reopen, and openfile() shared with the program's own options:
// cache/discard/aio modes, QemuOpts-style -o strings, QEMU's open messages, -s overlays.
import { resolve } from 'node:path';
import { bdrvCreate } from '../../block/create.js';
import { BlockDriverState } from '../../block/node.js';
import { isBlockError } from '../../block/errors.js';
import { protocolPrefix } from '../../block/path.js';
import type { ToolOutput } from '../shared/output.js';
import { attachTrace } from './trace.js';
import { errText, errnoText, type IoSession, type OpenFlags } from './session.js';
import { EINVAL, OptFail, getopts, image, usage, type CmdInfo } from './command.js';

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

/**
 * QemuOpts "key=value,key2=value2" (",," is a literal comma). A bare word is the deprecated
 * short form of a boolean ("foo" = foo=on, "nofoo" = foo=off), with QEMU's warning.
 */
export function parseKeyValues(o: ToolOutput, text: string): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < text.length) {
    let key = '';
    while (i < text.length && text[i] !== '=' && text[i] !== ',') key += text[i++];
    if (text[i] !== '=') {
      i++;
      const off = key.startsWith('no');
      const name = off ? key.slice(2) : key;
      const value = off ? 'off' : 'on';
      o.warn(`short-form boolean option '${key}' deprecated`);
      o.errRaw(`Please use ${name}=${value} instead\n`);
      out.set(name, value);
      continue;
    }
    i++;
    let val = '';
    while (i < text.length) {
      if (text[i] === ',') {
        if (text[i + 1] === ',') {
          val += ',';
          i += 2;
          continue;
        }
        i++;
        break;
      }
      val += text[i++];
    }
    out.set(key, val);
  }
  return out;
}

let snapshotCounter = 0;

/**
 * openfile(): open `name` with `flags` and the -o options; messages as qemu-io prints them.
 * Returns false after reporting a failure.
 */
export async function openfile(
  s: IoSession,
  name: string | null,
  flags: OpenFlags,
  opts: Map<string, string> = new Map(),
): Promise<boolean> {
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
  const extra = new Map(opts);
  const driver = extra.get('driver');
  if (driver !== undefined) f.format = driver;
  extra.delete('driver');
  const plainName = extra.get('filename');
  const childName = extra.get('file.filename');
  extra.delete('file.filename');
  extra.delete('filename');
  if (extra.get('file.driver') === 'file') extra.delete('file.driver');
  const ro = extra.get('read-only');
  if (ro !== undefined) {
    f.readOnly = ro === 'on' || ro === 'true';
    extra.delete('read-only');
  }
  // Without a path, "filename" names the image, or a driver plus its "file.filename" child.
  if (name === null && plainName === undefined && driver === undefined) return fail('Must specify either driver or file');
  const target = name ?? plainName ?? childName ?? null;
  if (target === null) return fail('A block device must be specified for "file"');
  if (target === '') return fail("The 'file' block driver requires a file name");
  for (const key of ['cache.direct', 'cache.no-flush']) {
    const v = extra.get(key);
    if (v === undefined) continue;
    if (key === 'cache.direct') f.nocache = v === 'on';
    else f.noFlush = v === 'on';
    extra.delete(key);
  }
  if (f.forceShare && !f.readOnly) return fail('force-share=on can only be used with read-only images');
  if (f.nativeAio && !f.nocache) {
    return fail('aio=native was specified, but it requires cache.direct=on, which was not specified.');
  }
  // blkdebug's own option (its rules file), taken when blkdebug is the driver asked for.
  let driverOptions: Record<string, string> | undefined;
  const config = extra.get('config');
  if (config !== undefined && f.format === 'blkdebug') {
    driverOptions = { config };
    extra.delete('config');
  }
  let bs: BlockDriverState;
  try {
    bs = await BlockDriverState.open(target, {
      driverOptions,
      format: f.format,
      readOnly: f.readOnly || f.snapshot,
      noFlush: f.noFlush,
      forceShare: f.forceShare,
      copyOnRead: f.copyOnRead && !f.readOnly,
    });
  } catch (e) {
    return fail(errText(e));
  }
  const fmt = bs.driver.formatName;
  for (const key of extra.keys()) {
    await bs.close().catch(() => undefined);
    // QEMU words it by the kind of node that refused it.
    if (bs.driver.protocolName !== undefined) return fail(`Block protocol '${fmt}' doesn't support the option '${key}'`);
    return fail(`Block format '${fmt}' does not support the option '${key}'`);
  }
  if (f.format === undefined && fmt === 'raw') {
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
        opts = new Map([...opts, ...parseKeyValues(s.o, a)]);
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
    ok = await openfile(s, null, f, parseKeyValues(s.o, args[g.optind]));
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
      opts = new Map([...opts, ...parseKeyValues(s.o, a)]);
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
