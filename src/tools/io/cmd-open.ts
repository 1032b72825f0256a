// blk-io's open and close, and openfile() shared with the program's own options: QEMU's open
// messages, -o options (QEMU's option model, src/block/options.ts), -s overlays, node names.
import { BlockBackend, QEMU_IO_OPEN_OPTS, bdrvCreate, defaultRegistry, protocolPrefix, type BlockDriver, type BlockDriverState, type FlatQDict } from '../../index.js';
import { toolHost } from '../shared/host.js';
import { applyForceShare, openWithOptions, parseOptsNoisily } from '../shared/image-opts.js';
import { closeQuietly, printOpenWarning, rootOf } from '../shared/open.js';
import { attachTrace } from './trace.js';
import { errText, defaultOpenFlags, type IoSession, type OpenFlags } from './session.js';
import { EINVAL, cmdOptions, type CmdInfo, type CmdOption } from './command.js';
import { parseAioMode, parseCacheMode, validDiscardMode } from './modes.js';

let snapshotCounter = 0;

/**
 * openfile(): open `name` with `flags` and the options (`-o`, `--image-opts`: QEMU's QDict,
 * handed to the block layer as blk_new_open does); messages as qemu-io prints them. Returns
 * false after reporting a failure.
 */
export async function openfile(s: IoSession, name: string | null, flags: OpenFlags, opts: FlatQDict | null = null): Promise<boolean> {
  if (s.blk !== null) {
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
  let blk: BlockBackend;
  try {
    blk = await openWithOptions(name, qdict, {
      format: f.format,
      readOnly: f.readOnly || f.snapshot,
      noFlush: f.noFlush,
      forceShare: f.forceShare,
      copyOnRead: f.copyOnRead && !f.readOnly,
      objects: s.objects,
      onWarning: (m) => s.o.warn(m),
      onErrorPrintf: (m) => s.o.errRaw(m),
      onReport: (line) => s.o.errRaw(`${line}\n`),
    });
  } catch (e) {
    return fail(errText(e));
  }
  const bs = rootOf(blk);
  // The options may have made the image read-only, or writable under -r (read-only=off).
  f.readOnly = bs.readOnly && !f.snapshot;
  const target = name ?? bs.filename;
  printOpenWarning(s.o, bs);
  if (f.copyOnRead && f.readOnly) {
    await closeQuietly(blk);
    return fail("Can't use copy-on-read on read-only device");
  }
  if (f.snapshot) {
    // -s: writes go to a temporary overlay (in memory here) over the read-only image.
    try {
      blk = await snapshotOverlay(blk, target, f);
    } catch (e) {
      return fail(errText(e));
    }
  }
  attachTrace(s.o, s.trace, rootOf(blk));
  s.blk = blk;
  s.filename = target;
  s.flags = f;
  s.blkWritePerm = !f.readOnly;
  nameNodes(s, rootOf(blk));
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

/** The format of -s overlays: the first one registered that can have any backing file. */
function overlayDriver(): BlockDriver {
  const drv = defaultRegistry.list().find((d) => d.supportsBacking === true && d.create !== undefined);
  if (drv === undefined) throw new Error('no image format can hold a temporary snapshot');
  return drv;
}

async function snapshotOverlay(base: BlockBackend, target: string, f: OpenFlags): Promise<BlockBackend> {
  const size = await base.getLength();
  const fmt = rootOf(base).driver.formatName;
  const format = overlayDriver().formatName;
  await base.close();
  const overlay = `mem:blk-io-snapshot-${toolHost().pid}-${++snapshotCounter}`;
  await bdrvCreate(overlay, {
    format,
    // A host path is made absolute (the overlay lives elsewhere); mem: and filter names stay.
    options: { size, backingFile: protocolPrefix(target) === null ? toolHost().resolvePath(target) : target, backingFmt: fmt },
  });
  return BlockBackend.open(overlay, {
    format,
    backingFormat: fmt,
    noFlush: f.noFlush,
    copyOnRead: f.copyOnRead,
  });
}

export async function closeImage(s: IoSession): Promise<void> {
  await s.drain();
  const bs = s.blk;
  s.blk = null;
  if (bs !== null) {
    // bdrv_close reports nothing: a failing flush at close is as silent as in qemu-io.
    await closeQuietly(bs);
  }
}

/**
 * The open flags as options (qemu-io's own and `open`'s letters), each printing QEMU's message
 * and stopping with EINVAL when its value is invalid. blk-io's table gives them long names.
 */
export const FLAG_OPTIONS = {
  snapshot: { short: 's', set: (f) => void (f.snapshot = true) },
  nocache: {
    short: 'n',
    set: (f) => {
      f.nocache = true;
      f.writethrough = false;
    },
  },
  copyOnRead: { short: 'C', set: (f) => void (f.copyOnRead = true) },
  readOnly: { short: 'r', set: (f) => void (f.readOnly = true) },
  nativeAio: { short: 'k', set: (f) => void (f.nativeAio = true) },
  cache: { short: 't', arg: 1, set: (f, a, s) => (parseCacheMode(a, f) ? undefined : invalid(s, `Invalid cache option: ${a}`)) },
  discard: { short: 'd', arg: 1, set: (_f, a, s) => (validDiscardMode(a) ? undefined : invalid(s, `Invalid discard option: ${a}`)) },
  aio: {
    short: 'i',
    arg: 1,
    set: (f, a, s) => {
      const native = parseAioMode(a);
      if (native === null) return invalid(s, `Invalid aio option: ${a}`);
      f.nativeAio = native;
    },
  },
  forceShare: { short: 'U', set: (f) => void (f.forceShare = true) },
} satisfies Record<string, CmdOption<OpenFlags>>;

function invalid(s: IoSession, msg: string): number {
  s.o.error(msg);
  return EINVAL;
}

type OpenArgs = OpenFlags & { opts: Map<string, string> };

const OPEN_OPTIONS: readonly CmdOption<OpenArgs>[] = [
  FLAG_OPTIONS.snapshot,
  FLAG_OPTIONS.nocache,
  FLAG_OPTIONS.copyOnRead,
  FLAG_OPTIONS.readOnly,
  {
    short: 'o',
    arg: 1,
    set: (a, arg, s) => {
      if (s.imageOpts) {
        s.o.out("--image-opts and 'open -o' are mutually exclusive\n");
        return EINVAL;
      }
      const parsed = parseOptsNoisily(s.o, arg, QEMU_IO_OPEN_OPTS);
      if (parsed === null) return EINVAL;
      // One merged list: a later -o adds to (and overrides) the earlier ones.
      a.opts = new Map([...a.opts, ...parsed]);
    },
  },
  FLAG_OPTIONS.nativeAio,
  FLAG_OPTIONS.aio,
  FLAG_OPTIONS.cache,
  FLAG_OPTIONS.discard,
  FLAG_OPTIONS.forceShare,
];

export async function openF(s: IoSession, argv: string[]): Promise<number> {
  const state: OpenArgs = { ...defaultOpenFlags(), opts: new Map() };
  const p = cmdOptions(s, argv, openCmd, OPEN_OPTIONS, state, 0, 1);
  if (typeof p === 'number') return p;
  const { opts, ...f } = state;
  let ok: boolean;
  // With --image-opts the argument is itself the option string.
  if (p.args.length === 0) ok = await openfile(s, null, f, opts);
  else if (s.imageOpts) {
    const parsed = parseOptsNoisily(s.o, p.args[0], QEMU_IO_OPEN_OPTS);
    if (parsed === null) return EINVAL;
    ok = await openfile(s, null, f, parsed);
  } else ok = await openfile(s, p.args[0], f, opts);
  s.poll();
  return ok ? 0 : EINVAL;
}

export async function closeF(s: IoSession): Promise<number> {
  await closeImage(s);
  return 0;
}

export const openCmd: CmdInfo = { name: 'open', cfunc: openF, argmin: 1, argmax: -1, nofile: true, args: '[-rsCnkU] [-t cache] [-d discard] [-o options] [path]', oneline: 'open the file specified by path' };
