// What every blk-io command is built from: its descriptor, its option table read with qemu-io's
// getopt messages, number arguments, and the options several commands share.
import type { BlockBackend, BlockDriverState } from '../../index.js';
import { rootOf } from '../shared/open.js';
import { getoptTable, type OptionDef, type OptionTable } from '../shared/getopt.js';
import { cvtnum, parsePattern, printCvtnumErr } from './format.js';
import { toolError, type IoSession } from './session.js';

/** Negative errno-like return values of the commands (only the sign matters for the exit code). */
export const EINVAL = -22;
export const EIO = -5;
export const ENOTSUP = -95;

export interface CmdInfo {
  name: string;
  altname?: string;
  cfunc: (s: IoSession, argv: string[]) => Promise<number>;
  argmin: number;
  /** -1: no maximum. */
  argmax: number;
  /** Runs without an open image (CMD_NOFILE_OK). */
  nofile?: boolean;
  /** Needs write permission on the image (BLK_PERM_WRITE). */
  write?: boolean;
  /** Argument synopsis; null prints none, '' prints an empty one ("map  --"). */
  args: string | null;
  oneline: string;
}

export function usage(s: IoSession, ct: CmdInfo): void {
  s.o.out(`${ct.name} ${ct.args ?? '(null)'} -- ${ct.oneline}\n`);
}

/** The image; commands run only once `command()` checked it is open. */
export function image(s: IoSession): BlockBackend {
  if (s.blk === null) throw toolError('ENOMEDIUM', 'command');
  return s.blk;
}

/** The image's root node, for what is asked of the node itself (format, info, breakpoints). */
export function imageNode(s: IoSession): BlockDriverState {
  return rootOf(image(s));
}

export type CmdOption<S> = OptionDef<S, IoSession>;

/**
 * Read a command's options with getopt(3) (glibc's permuting parser; its two messages on stderr
 * with the command word as program name, then the command's usage), then check that `min` to
 * `max` arguments follow. Returns the (permuted) argv and those arguments, or the value the
 * command returns: EINVAL after a message, or what an option's `set` stopped with.
 */
export function cmdOptions<S>(
  s: IoSession,
  argv: string[],
  ct: CmdInfo,
  table: OptionTable<S, IoSession>,
  state: S,
  min: number,
  max = Infinity,
): { argv: string[]; args: string[] } | number {
  const r = getoptTable(argv, table, state, s);
  if (r.kind === 'stop') return r.value;
  if (r.kind === 'error') {
    const what = r.error === 'unknown' ? 'invalid option' : 'option requires an argument';
    s.o.errRaw(`${argv[0]}: ${what} -- '${r.opt}'\n`);
  }
  const args = r.g.rest();
  if (r.kind === 'error' || args.length < min || args.length > max) {
    usage(s, ct);
    return EINVAL;
  }
  return { argv: r.g.argv, args };
}

/** A C-style "bail out with this value" from a number parser. */
export class OptFail {
  constructor(readonly ret: number) {}
}

export function parseNum(s: IoSession, arg: string): number | OptFail {
  const r = parseNumBig(s, arg);
  return r instanceof OptFail ? r : r.value;
}

/** cvtnum keeping the exact value too (messages print int64 values exactly). */
export function parseNumBig(s: IoSession, arg: string): { value: number; big: bigint } | OptFail {
  const r = cvtnum(s.o, arg);
  if (!r.ok) {
    printCvtnumErr(s.o, r.error, arg);
    return new OptFail(r.error === 'EINVAL' ? EINVAL : -34);
  }
  return r;
}

/** The `off len` of read, write and discard, exact values kept for the messages that print them. */
export function offsetAndCount(s: IoSession, args: readonly string[]): { offset: number; count: number; offsetBig: bigint; countBig: bigint } | number {
  const o = parseNumBig(s, args[0]);
  if (o instanceof OptFail) return o.ret;
  const c = parseNumBig(s, args[1]);
  if (c instanceof OptFail) return c.ret;
  return { offset: o.value, count: c.value, offsetBig: o.big, countBig: c.big };
}

/** The alignment messages of read -b / write -b / write -c. */
export function checkSectorAligned(s: IoSession, offset: bigint, count: bigint): boolean {
  if (offset % 512n !== 0n) {
    s.o.out(`${offset} is not a sector-aligned value for 'offset'\n`);
    return false;
  }
  if (count % 512n !== 0n) {
    s.o.out(`${count} is not a sector-aligned value for 'count'\n`);
    return false;
  }
  return true;
}

// Options several commands share, each with qemu-io's meaning.

/** -C: statistics in the machine-parsable form. */
export const STATS: CmdOption<{ cflag: boolean }> = { short: 'C', set: (a) => void (a.cflag = true) };
/** -q: no statistics. */
export const QUIET: CmdOption<{ qflag: boolean }> = { short: 'q', set: (a) => void (a.qflag = true) };
/** -v: dump what was read. */
export const VERBOSE: CmdOption<{ vflag: boolean }> = { short: 'v', set: (a) => void (a.vflag = true) };
/** -f: Force Unit Access. */
export const FUA: CmdOption<{ fua: boolean }> = { short: 'f', set: (a) => void (a.fua = true) };
/** -P pattern: the byte to write, or to verify a read against. */
export const PATTERN: CmdOption<{ pflag: boolean; pattern: number }> = {
  short: 'P',
  arg: 1,
  set: (a, arg, s) => {
    a.pflag = true;
    a.pattern = parsePattern(s.o, arg);
    if (a.pattern < 0) return EINVAL;
  },
};

/** What read, readv and aio_read share. */
export interface ReadFlags {
  cflag: boolean;
  qflag: boolean;
  vflag: boolean;
  pflag: boolean;
  pattern: number;
}

export function readFlags(): ReadFlags {
  return { cflag: false, qflag: false, vflag: false, pflag: false, pattern: 0 };
}

/** What write, writev and aio_write share (the default pattern is 0xcd). */
export interface WriteFlags {
  cflag: boolean;
  qflag: boolean;
  fua: boolean;
  pflag: boolean;
  pattern: number;
}

export function writeFlags(): WriteFlags {
  return { cflag: false, qflag: false, fua: false, pflag: false, pattern: 0xcd };
}
