// blk-io's reopen: the image's mode changed in place (read-only, cache), with qemu-io 7.2's
// checks and messages in bdrv_reopen's order.
import { isBlockError } from '../../index.js';
import { errText, errnoText, type IoSession, type OpenFlags } from './session.js';
import { EINVAL, cmdOptions, image, imageNode, type CmdInfo, type CmdOption } from './command.js';
import { FLAG_OPTIONS } from './cmd-open.js';
import { parseBool, validDiscardMode } from './modes.js';
import { QEMU_IO_OPEN_OPTS } from '../../index.js';
import { parseOptsNoisily } from '../shared/image-opts.js';

type ReopenArgs = OpenFlags & { hasRw: boolean; hasCache: boolean; opts: Map<string, string> };

/** -r / -w: at most one of them. */
const mode = (short: string, readOnly: boolean): CmdOption<ReopenArgs> => ({
  short,
  set: (a, _arg, s) => {
    if (a.hasRw) {
      s.o.error('Only one -r/-w option may be given');
      return EINVAL;
    }
    a.readOnly = readOnly;
    a.hasRw = true;
  },
});

const REOPEN_OPTIONS: readonly CmdOption<ReopenArgs>[] = [
  {
    short: 'c',
    arg: 1,
    set: (a, arg, s) => {
      const r = FLAG_OPTIONS.cache.set(a, arg, s);
      if (r !== undefined) return r;
      a.hasCache = true;
    },
  },
  {
    short: 'o',
    arg: 1,
    set: (a, arg, s) => {
      const parsed = parseOptsNoisily(s.o, arg, QEMU_IO_OPEN_OPTS);
      if (parsed === null) return EINVAL;
      a.opts = new Map([...a.opts, ...parsed]);
    },
  },
  mode('r', true),
  mode('w', false),
];

export async function reopenF(s: IoSession, argv: string[]): Promise<number> {
  const a: ReopenArgs = { ...s.flags, hasRw: false, hasCache: false, opts: new Map() };
  const p = cmdOptions(s, argv, reopenCmd, REOPEN_OPTIONS, a, 0, 0);
  if (typeof p === 'number') return p;
  const { hasRw, hasCache, opts, ...f } = a;
  const blk = image(s);
  const bs = imageNode(s);
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
      if (!bs.readOnly) await blk.flush();
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
    await blk.reopen({ readOnly: f.readOnly, noFlush: f.noFlush });
  } catch (e) {
    if (isBlockError(e) && e.op === 'reopen_flush') s.o.error(`Error flushing drive: ${errnoText(e)}`);
    else s.o.error(errText(e));
    return EINVAL;
  }
  s.flags = { ...f };
  return 0;
}

export const reopenCmd: CmdInfo = { name: 'reopen', cfunc: reopenF, argmin: 0, argmax: -1, args: '[(-r|-w)] [-c cache] [-o options]', oneline: 'reopens an image with new options' };
