// `blk-img bench`'s options: qemu-img 7.2's, validated in its order with its messages.
import type { OptionDef } from '../shared/getopt.js';
import { ToolExit, errorExit, type ToolOutput } from '../shared/output.js';
import { cvtnum, cvtnumFull } from '../shared/size.js';
import { parseImgOptions } from './options.js';

/** What `blk-img bench` writes to; the blk-img dispatcher hands its own sinks. */
export interface BenchSinks {
  stdout(s: string): void;
  stderr(s: string): void;
}

export type CacheMode = 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';
export type AioMode = 'threads' | 'native' | 'io_uring';

export interface BenchOptions {
  filename: string;
  format: string | undefined;
  count: number;
  depth: number;
  offset: number;
  bufSize: number;
  /** 0 means "the buffer size" (qemu-img's default). */
  step: number;
  pattern: number;
  write: boolean;
  flushInterval: number;
  drainOnFlush: boolean;
  quiet: boolean;
  cache: CacheMode;
  aio: AioMode;
  forceShare: boolean;
  /** --image-opts: the file name is an option string. */
  imageOpts: boolean;
}

const INT_MAX = 2147483647;
const CACHE_MODES: readonly CacheMode[] = ['none', 'writeback', 'writethrough', 'directsync', 'unsafe'];
const AIO_MODES: readonly AioMode[] = ['threads', 'native', 'io_uring'];

export const BENCH_USAGE =
  'bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] ' +
  '[-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename';

/**
 * qemu_strtoul with base 0 as qemu-img uses it for counts: decimal, 0x hex or 0 octal, the
 * whole string, no suffix. A leading '-' wraps like strtoul, so it always ends up out of range.
 */
export function parseCInteger(s: string): number | null {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(s);
  if (m === null) return null;
  const digits = m[2];
  let v: bigint;
  if (digits.length > 2 && (digits[1] === 'x' || digits[1] === 'X')) v = BigInt(digits);
  else if (digits.length > 1 && digits[0] === '0') v = BigInt(`0o${digits.slice(1)}`);
  else v = BigInt(digits);
  if (m[1] === '-' && v !== 0n) return Number.MAX_SAFE_INTEGER; // wraps to a huge unsigned value
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

function intOption(o: ToolOutput, arg: string, max: number, what: string): number {
  const v = parseCInteger(arg);
  if (v === null || v > max) {
    o.error(`Invalid ${what} specified`);
    throw new ToolExit(1);
  }
  return v;
}

/** qemu-img bench's defaults: 75000 reads of 4 KiB, 64 in flight, from offset 0. */
export function defaultBenchOptions(): BenchOptions {
  return {
    filename: '',
    format: undefined,
    count: 75000,
    depth: 64,
    offset: 0,
    bufSize: 4096,
    step: 0,
    pattern: 0,
    write: false,
    flushInterval: 0,
    drainOnFlush: true,
    quiet: false,
    cache: 'writeback',
    aio: 'threads',
    forceShare: false,
    imageOpts: false,
  };
}

type BenchArgs = BenchOptions & { help: boolean };
type BenchOption = OptionDef<BenchArgs, { o: ToolOutput }>;

/** A count option: qemu_strtoul's forms, at most `max`, else "Invalid WHAT specified". */
const count = (short: string | undefined, long: string | undefined, max: number, what: string, set: (s: BenchArgs, v: number) => void): BenchOption => ({
  short,
  long,
  arg: 1,
  set: (s, arg, { o }) => set(s, intOption(o, arg, max, what)),
});

/** One of `modes` or `message`, exit 1. */
function oneOf<T extends string>(modes: readonly T[], arg: string, o: ToolOutput, message: string): T {
  if (!(modes as readonly string[]).includes(arg)) {
    o.error(message);
    throw new ToolExit(1);
  }
  return arg as T;
}

const BENCH_OPTIONS: readonly BenchOption[] = [
  { short: 'h', long: 'help', set: (s) => void (s.help = true) },
  count('c', undefined, INT_MAX, 'request count', (s, v) => void (s.count = v)),
  count('d', undefined, INT_MAX, 'queue depth', (s, v) => void (s.depth = v)),
  { short: 'f', arg: 1, set: (s, arg) => void (s.format = arg) },
  { short: 'n', set: (s) => void (s.aio = 'native') },
  { short: 'i', arg: 1, set: (s, arg, { o }) => void (s.aio = oneOf(AIO_MODES, arg, o, `Invalid aio option: ${arg}`)) },
  { short: 'o', arg: 1, set: (s, arg, { o }) => void (s.offset = cvtnum(o, 'offset', arg)) },
  { short: 'q', set: (s) => void (s.quiet = true) },
  { short: 's', arg: 1, set: (s, arg, { o }) => void (s.bufSize = cvtnumFull(o, 'buffer size', arg, 0n, BigInt(INT_MAX))) },
  { short: 'S', arg: 1, set: (s, arg, { o }) => void (s.step = cvtnumFull(o, 'step_size', arg, 0n, BigInt(INT_MAX))) },
  { short: 't', arg: 1, set: (s, arg, { o }) => void (s.cache = oneOf(CACHE_MODES, arg, o, 'Invalid cache mode')) },
  { short: 'w', set: (s) => void (s.write = true) },
  count(undefined, 'flush-interval', INT_MAX, 'flush interval', (s, v) => void (s.flushInterval = v)),
  count(undefined, 'pattern', 0xff, 'pattern byte', (s, v) => void (s.pattern = v)),
  { long: 'no-drain', set: (s) => void (s.drainOnFlush = false) },
  { short: 'U', long: 'force-share', set: (s) => void (s.forceShare = true) },
  { long: 'image-opts', set: (s) => void (s.imageOpts = true) },
];

/**
 * Parse `bench` arguments (without the subcommand name) in qemu-img's order: option errors as
 * they come, then the file name, then the cross-option checks. Throws ToolExit after printing.
 */
export function parseBenchArgs(o: ToolOutput, args: readonly string[]): BenchOptions {
  const state: BenchArgs = { ...defaultBenchOptions(), help: false };
  const rest = parseImgOptions({ o }, ['bench', ...args], BENCH_OPTIONS, state);
  const { help, ...opts } = state;
  if (help) {
    o.out(`usage: ${o.prog} ${BENCH_USAGE}\n`);
    throw new ToolExit(0);
  }
  if (rest.length !== 1) errorExit(o, 'Expecting one image file name');
  opts.filename = rest[0];
  if (opts.flushInterval !== 0 && !opts.write) {
    o.error('--flush-interval is only available in write tests');
    throw new ToolExit(1);
  }
  if (opts.flushInterval !== 0 && opts.flushInterval < opts.depth) {
    o.error("Flush interval can't be smaller than depth");
    throw new ToolExit(1);
  }
  // qemu-img 7.2 accepts -d 0 and then waits forever for requests it never sends; refuse it
  // instead of hanging (a count of 0 sends nothing and is fine, as there).
  if (opts.depth === 0 && opts.count > 0) {
    o.error('Invalid queue depth specified');
    throw new ToolExit(1);
  }
  return opts;
}
