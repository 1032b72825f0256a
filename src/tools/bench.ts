// `blk-img bench`: qemu-img bench's request engine over our block layer. The options, their
// validation order, the messages and the output lines follow qemu-img 7.2 as observed; the
// engine keeps `depth` requests in flight through the AIO API and recycles a fixed set of
// request slots (buffer, vector, callback), so the measured loop allocates nothing per request.
import { ERRNO_MESSAGES, toBlockError } from '../block/errors.js';
import { BDRV_SECTOR_SIZE } from '../block/driver.js';
import { IOVector } from '../block/iovec.js';
import type { BlockError } from '../block/errors.js';
import { BlockDriverState } from '../index.js';
import { openImageOpts } from './image-opts.js';
import {
  ToolExit,
  ToolOutput,
  cvtnum,
  cvtnumFull,
  errorExit,
  errorMessage,
  formatFixed,
  parseOptions,
  type LongOption,
} from './common.js';

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

const LONG_OPTIONS: readonly LongOption[] = [
  { name: 'help', hasArg: 0, val: 'h' },
  { name: 'flush-interval', hasArg: 1, val: 'flush-interval' },
  { name: 'pattern', hasArg: 1, val: 'pattern' },
  { name: 'no-drain', hasArg: 0, val: 'no-drain' },
  { name: 'force-share', hasArg: 0, val: 'U' },
  { name: 'image-opts', hasArg: 0, val: 'image-opts' },
];

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

/**
 * Parse `bench` arguments (without the subcommand name) in qemu-img's order: option errors as
 * they come, then the file name, then the cross-option checks. Throws ToolExit after printing.
 */
export function parseBenchArgs(o: ToolOutput, args: readonly string[]): BenchOptions {
  const opts = defaultBenchOptions();
  let help = false;
  const rest = parseOptions(o, ['bench', ...args], ':hc:d:f:ni:o:qs:S:t:wU', LONG_OPTIONS, (opt, arg = '') => {
    switch (opt) {
      case 'h':
        help = true;
        break;
      case 'c':
        opts.count = intOption(o, arg, INT_MAX, 'request count');
        break;
      case 'd':
        opts.depth = intOption(o, arg, INT_MAX, 'queue depth');
        break;
      case 'f':
        opts.format = arg;
        break;
      case 'n':
        opts.aio = 'native';
        break;
      case 'i':
        if (!(AIO_MODES as readonly string[]).includes(arg)) {
          o.error(`Invalid aio option: ${arg}`);
          throw new ToolExit(1);
        }
        opts.aio = arg as AioMode;
        break;
      case 'o':
        opts.offset = cvtnum(o, 'offset', arg);
        break;
      case 'q':
        opts.quiet = true;
        break;
      case 's':
        opts.bufSize = cvtnumFull(o, 'buffer size', arg, 0n, BigInt(INT_MAX));
        break;
      case 'S':
        opts.step = cvtnumFull(o, 'step_size', arg, 0n, BigInt(INT_MAX));
        break;
      case 't':
        if (!(CACHE_MODES as readonly string[]).includes(arg)) {
          o.error('Invalid cache mode');
          throw new ToolExit(1);
        }
        opts.cache = arg as CacheMode;
        break;
      case 'w':
        opts.write = true;
        break;
      case 'U':
        opts.forceShare = true;
        break;
      case 'pattern':
        opts.pattern = intOption(o, arg, 0xff, 'pattern byte');
        break;
      case 'flush-interval':
        opts.flushInterval = intOption(o, arg, INT_MAX, 'flush interval');
        break;
      case 'image-opts':
        opts.imageOpts = true;
        break;
      case 'no-drain':
        opts.drainOnFlush = false;
        break;
    }
  });
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

/** The first line qemu-img bench prints (and the flush line when asked). */
export function benchHeader(opts: BenchOptions): string {
  const step = opts.step !== 0 ? opts.step : opts.bufSize;
  let s =
    `Sending ${opts.count} ${opts.write ? 'write' : 'read'} requests, ${opts.bufSize} bytes each, ` +
    `${opts.depth} in parallel (starting at offset ${opts.offset}, step size ${step})\n`;
  if (opts.flushInterval !== 0) s += `Sending flush every ${opts.flushInterval} requests\n`;
  return s;
}

/** "Run completed in X.XXX seconds." with C's %3.3f rounding. */
export function completionLine(seconds: number): string {
  return `Run completed in ${formatFixed(seconds, 3)} seconds.\n`;
}

/**
 * The offsets the run visits, in submission order (bench_cb): each request starts at the
 * current offset, which then advances by the step and wraps modulo the image size. The wrap
 * is QEMU 7.2's: a request that straddles the end fails with EIO, as there. Exposed for tests.
 */
export function* requestOffsets(start: number, step: number, imageSize: number, count: number): Generator<number> {
  let off = start;
  for (let i = 0; i < count; i++) {
    yield off;
    off = imageSize === 0 ? 0 : (off + step) % imageSize;
  }
}

/** One request slot: its own buffer view, vector and pre-bound completion. */
interface Slot {
  qiov: IOVector;
  nbSectors: number;
  done: (err: BlockError | null) => void;
  ok: () => void;
  fail: (e: unknown) => void;
}

/**
 * The request engine, shaped like qemu-img's bench_cb: a completion may trigger a flush
 * (draining first unless --no-drain) and then refills the queue up to `depth`.
 */
export class BenchRun {
  private n: number;
  private inFlight = 0;
  private inFlush = false;
  private offset: number;
  private readonly step: number;
  private readonly free: Slot[] = [];
  private failure: BlockError | null = null;
  private settle: (() => void) | null = null;
  private readonly flushCb = (err: BlockError | null): void => this.complete(null, err, true);
  private readonly undrainedFlushCb = (err: BlockError | null): void => {
    if (err) this.fail(err);
  };

  constructor(
    private readonly bs: BlockDriverState,
    private readonly opts: BenchOptions,
    private readonly imageSize: number,
    private readonly writethrough = false,
  ) {
    this.n = opts.count;
    this.offset = opts.offset;
    this.step = opts.step !== 0 ? opts.step : opts.bufSize;
    // qemu-img allocates depth buffers; more than `count` could never be in flight at once.
    const slots = Math.min(opts.depth, opts.count);
    for (let i = 0; i < slots; i++) {
      const buf = new Uint8Array(opts.bufSize);
      if (opts.pattern !== 0) buf.fill(opts.pattern);
      const slot: Slot = {
        qiov: IOVector.from(buf),
        nbSectors: opts.bufSize / BDRV_SECTOR_SIZE,
        done: (err) => this.complete(slot, err, false),
        ok: () => this.complete(slot, null, false),
        fail: (e: unknown) => this.complete(slot, toBlockError(e, { op: opts.write ? 'write' : 'read' }), false),
      };
      this.free.push(slot);
    }
  }

  /** Request slots (buffers) this run owns: min(depth, count), allocated once. */
  get slotCount(): number {
    return this.free.length + this.inFlight;
  }

  /** Run to the end; resolves with the first request error, or null. */
  run(): Promise<BlockError | null> {
    return new Promise<BlockError | null>((resolve) => {
      this.settle = () => resolve(this.failure);
      this.refill();
      this.checkDone();
    });
  }

  private fail(err: BlockError): void {
    if (this.failure === null) this.failure = err;
  }

  private checkDone(): void {
    if (this.settle === null) return;
    const finished = this.failure !== null ? this.inFlight === 0 && !this.inFlush : this.n === 0 && !this.inFlush;
    if (finished) {
      const s = this.settle;
      this.settle = null;
      s();
    }
  }

  private complete(slot: Slot | null, err: BlockError | null, isFlush: boolean): void {
    if (slot !== null) this.free.push(slot);
    if (err) this.fail(err);
    if (isFlush) {
      // A drained flush finished: the queue is empty, start the next batch.
      this.inFlush = false;
    } else {
      const remaining = this.n - this.inFlight;
      this.n--;
      this.inFlight--;
      if (this.failure === null && this.opts.flushInterval !== 0 && remaining % this.opts.flushInterval === 0) {
        // With draining, the flush waits until the last request of this batch completes;
        // `remaining` stays the same for every completion until then.
        if (this.inFlight === 0 || !this.opts.drainOnFlush) {
          if (this.opts.drainOnFlush) {
            this.inFlush = true;
            this.bs.aioFlush(this.flushCb);
          } else {
            this.bs.aioFlush(this.undrainedFlushCb);
          }
        }
        if (this.opts.drainOnFlush) {
          this.checkDone();
          return;
        }
      }
    }
    this.refill();
    this.checkDone();
  }

  private refill(): void {
    if (this.failure !== null) return;
    const depth = this.opts.depth;
    while (this.n > this.inFlight && this.inFlight < depth) {
      const slot = this.free.pop();
      if (slot === undefined) return;
      this.submit(slot, this.offset);
      this.inFlight++;
      this.offset = this.imageSize === 0 ? 0 : (this.offset + this.step) % this.imageSize;
    }
  }

  private submit(slot: Slot, offset: number): void {
    const bs = this.bs;
    const aligned = offset % BDRV_SECTOR_SIZE === 0 && this.opts.bufSize % BDRV_SECTOR_SIZE === 0;
    if (aligned && !(this.writethrough && this.opts.write)) {
      // The AIO path (bdrv_aio_readv/writev): pooled AIOCBs, callback completion.
      const sector = offset / BDRV_SECTOR_SIZE;
      if (this.opts.write) bs.aioWritev(sector, slot.qiov, slot.nbSectors, slot.done);
      else bs.aioReadv(sector, slot.qiov, slot.nbSectors, slot.done);
      return;
    }
    // Byte-granular requests (and FUA writes for writethrough caching) go through the
    // coroutine API, which read-modify-writes around unaligned edges.
    const p = this.opts.write ? bs.pwritev(offset, slot.qiov, { fua: this.writethrough }) : bs.preadv(offset, slot.qiov);
    p.then(slot.ok, slot.fail);
  }
}

/** Open the image as qemu-img's img_open would for bench. */
async function openForBench(o: ToolOutput, opts: BenchOptions): Promise<BlockDriverState> {
  const direct = opts.cache === 'none' || opts.cache === 'directsync';
  if (opts.aio === 'native' && !direct) {
    o.error(
      `Could not open '${opts.filename}': aio=native was specified, but it requires cache.direct=on, which was not specified.`,
    );
    throw new ToolExit(1);
  }
  const base = { readOnly: !opts.write, noFlush: opts.cache === 'unsafe' };
  if (opts.imageOpts) {
    return openImageOpts(o, opts.filename, { base, format: opts.format, forceShare: opts.forceShare, failStatus: 1 });
  }
  try {
    return await BlockDriverState.open(opts.filename, { ...base, format: opts.format, forceShare: opts.forceShare });
  } catch (e) {
    o.error(`Could not open '${opts.filename}': ${errorMessage(e)}`);
    throw new ToolExit(1);
  }
}

async function benchMain(o: ToolOutput, args: readonly string[]): Promise<number> {
  const opts = parseBenchArgs(o, args);
  const bs = await openForBench(o, opts);
  let status = 0;
  try {
    const imageSize = await bs.getLength();
    o.out(benchHeader(opts));
    let run: BenchRun;
    try {
      run = new BenchRun(bs, opts, imageSize, opts.cache === 'writethrough' || opts.cache === 'directsync');
    } catch (e) {
      o.error(`Could not allocate request buffers: ${errorMessage(e)}`);
      return 1;
    }
    const t0 = process.hrtime.bigint();
    const err = await run.run();
    const t1 = process.hrtime.bigint();
    if (err) {
      o.error(`Failed request: ${ERRNO_MESSAGES[err.code] ?? err.message}`);
      status = 1;
    } else {
      o.out(completionLine(Number(t1 - t0) / 1e9));
    }
  } finally {
    // qemu-img leaves through blk_unref (flush and close); a failed run exits at once there,
    // but closing here still must not hide the request error.
    await bs.close().catch((e: unknown) => {
      if (status === 0) {
        o.error(errorMessage(e));
        status = 1;
      }
    });
  }
  return status;
}

/**
 * `blk-img bench ARGS...` (ARGS without the word "bench"). Returns the exit status; stdout is
 * buffered like C stdio so that, as with qemu-img on a pipe, an error line comes first.
 */
export async function imgBench(argv: string[], out: BenchSinks, prog: string): Promise<number> {
  const o = new ToolOutput(
    {
      stdout: { write: (s: string) => out.stdout(s) },
      stderr: { write: (s: string) => out.stderr(s) },
      // On a terminal the "Sending ..." line shows before the run, as stdio line-buffers it.
      stdoutIsTTY: process.stdout.isTTY === true,
    },
    prog,
  );
  try {
    return await benchMain(o, argv);
  } catch (e) {
    if (e instanceof ToolExit) return e.status;
    o.error(errorMessage(e));
    return 1;
  } finally {
    o.flush();
  }
}
