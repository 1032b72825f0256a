// `blk-img bench`: qemu-img bench's request engine over our block layer. The output lines follow
// qemu-img 7.2 as observed; the engine keeps `depth` requests in flight through the AIO API and
// recycles a fixed set of request slots (buffer, vector, callback), so the measured loop
// allocates nothing per request.
import { BDRV_SECTOR_SIZE, BlockBackend, ERRNO_MESSAGES, FreeStack, IOVector, toBlockError, type BlockError } from '../../index.js';
import { openImageOpts } from '../shared/image-opts.js';
import { runTool, ToolExit, ToolOutput, errorMessage } from '../shared/output.js';
import { formatFixed } from '../shared/printf.js';
import { parseBenchArgs, type BenchOptions, type BenchSinks } from './bench-options.js';

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

/** What a run issues its requests to: the tool's BlockBackend, or a node (tests). */
export type BenchTarget = Pick<BlockBackend, 'aioReadv' | 'aioWritev' | 'aioFlush' | 'preadv' | 'pwritev'>;

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
  // The options each request reads, copied into fields once: one load each instead of two.
  private readonly write: boolean;
  private readonly depth: number;
  private readonly flushInterval: number;
  /** Whole-sector buffers and no FUA: the AIO path serves every sector-aligned offset. */
  private readonly aioOk: boolean;
  private readonly free = new FreeStack<Slot>();
  private failure: BlockError | null = null;
  private settle: (() => void) | null = null;
  private readonly flushCb = (err: BlockError | null): void => this.complete(null, err, true);
  private readonly undrainedFlushCb = (err: BlockError | null): void => {
    if (err) this.fail(err);
  };

  constructor(
    private readonly bs: BenchTarget,
    private readonly opts: BenchOptions,
    private readonly imageSize: number,
    private readonly writethrough = false,
  ) {
    this.n = opts.count;
    this.offset = opts.offset;
    this.step = opts.step !== 0 ? opts.step : opts.bufSize;
    this.write = opts.write;
    this.depth = opts.depth;
    this.flushInterval = opts.flushInterval;
    this.aioOk = opts.bufSize % BDRV_SECTOR_SIZE === 0 && !(writethrough && opts.write);
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
      if (this.failure === null && this.flushInterval !== 0 && remaining % this.flushInterval === 0) {
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
    const depth = this.depth;
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
    if (this.aioOk && offset % BDRV_SECTOR_SIZE === 0) {
      // The AIO path (bdrv_aio_readv/writev): pooled AIOCBs, callback completion.
      const sector = offset / BDRV_SECTOR_SIZE;
      if (this.write) bs.aioWritev(sector, slot.qiov, slot.nbSectors, slot.done);
      else bs.aioReadv(sector, slot.qiov, slot.nbSectors, slot.done);
      return;
    }
    // Byte-granular requests (and FUA writes for writethrough caching) go through the
    // coroutine API, which read-modify-writes around unaligned edges.
    const p = this.write ? bs.pwritev(offset, slot.qiov, { fua: this.writethrough }) : bs.preadv(offset, slot.qiov);
    p.then(slot.ok, slot.fail);
  }
}

/** Open the image as qemu-img's img_open would for bench. */
async function openForBench(o: ToolOutput, opts: BenchOptions): Promise<BlockBackend> {
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
    return await BlockBackend.open(opts.filename, { ...base, format: opts.format, forceShare: opts.forceShare });
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
  return runTool(o, () => benchMain(o, argv));
}
