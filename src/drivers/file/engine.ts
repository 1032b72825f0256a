/**
 * The native I/O engine (native/engine.c): the file driver's reads, writes, datasyncs and
 * fallocates go to io_uring (or, where the kernel has none or refuses it, the addon's own
 * worker threads) straight from this thread, instead of a round trip through libuv's thread
 * pool per request. Everything issued in one event-loop turn starts with one system call;
 * completions come back in batches.
 *
 * BLOCKLAYER_IO_ENGINE picks it: unset or 'auto' (io_uring, with worker threads beside it for
 * writes up to 256 KiB; else worker threads alone), 'io_uring' (alone), 'threads', or 'fs'
 * (node:fs and libuv's pool, as without the addon). `kind` names the main back end. A write of
 * at most 256 KiB issued with nothing else in flight is written by this thread itself, inside
 * the turn's flush (BLOCKLAYER_INLINE_WRITES=0 keeps it on the back end): see native/engine.c.
 *
 * The buffers of a request stay referenced here, in its slot, until it completes: the kernel
 * writes into them meanwhile.
 */
import type { SeekAddon } from './seek.js';
import { seekAddon } from './seek.js';

export type EngineKind = 'io_uring' | 'threads';
export type EngineChoice = 'auto' | EngineKind | 'fs';

/** Operation numbers shared with native/engine.h. */
const OP_READ = 0;
const OP_WRITE = 1;
const OP_DATASYNC = 2;
const OP_FALLOCATE = 3;
const OP_ZERO_WRITE = 4;
/** Added to the slot of a zero-write whose fallocate failed (ENG_HEAD_FAILED): the range was not zeroed. */
const HEAD_FAILED = 65536;

/** The addon's slot count (ENG_SLOTS): requests beyond it wait in a backlog here. */
const SLOTS = 256;

/** fallocate(2) modes (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

type Buffers = Uint8Array | readonly Uint8Array[] | null;

/**
 * A request's end: the count transferred, or -errno (`error()` makes the system error);
 * `headFailed` when it is the fallocate of a zero-write that failed. Called once, from the
 * addon's completion batch, never inside the call that submitted it.
 */
export type EngineDone = (res: number, headFailed?: boolean) => void;

interface Waiting {
  op: number;
  fd: number;
  buffers: Buffers;
  offset: number;
  length: number;
  mode: number;
  writeOffset: number;
  done: EngineDone;
}

type EngineAddon = Required<Pick<SeekAddon, 'engineStart' | 'engineSubmit' | 'engineError' | 'engineStop'>> & Pick<SeekAddon, 'engineStats'>;

export class IoEngine {
  readonly kind: EngineKind;
  /** zeroThenPwritev is one request (linked in io_uring); else the caller does the two itself. */
  readonly canLink: boolean;
  /** Each slot's completion, and its buffers, kept alive until then (the kernel uses them). */
  private readonly slotDone: (EngineDone | undefined)[] = new Array<EngineDone | undefined>(SLOTS).fill(undefined);
  private readonly slotBuffers: Buffers[] = new Array<Buffers>(SLOTS).fill(null);
  /** Requests that found every slot busy, in order. */
  private readonly backlog: Waiting[] = [];
  private readonly results = new Float64Array(2 * SLOTS);
  /** complete()'s copy of the batch and its callbacks, taken before any runs. */
  private readonly batchResults = new Float64Array(2 * SLOTS);
  private readonly batchDone: (EngineDone | undefined)[] = new Array<EngineDone | undefined>(SLOTS).fill(undefined);
  /** Inside complete(): a nested batch takes fresh copies. */
  private completing = false;

  constructor(
    private readonly addon: EngineAddon,
    kind: 'auto' | EngineKind,
    inlineWrites = true,
  ) {
    this.kind = addon.engineStart(kind, (n) => this.complete(n), this.results, inlineWrites) as EngineKind;
    this.canLink = addon.engineStats?.().canLink === true;
  }

  /** preadv at `offset` into `buffers`: the count read (short at end of file). */
  preadv(fd: number, buffers: Uint8Array | readonly Uint8Array[], offset: number): Promise<number> {
    return this.submit(OP_READ, fd, buffers, offset, 0, 0, 'read');
  }

  /** pwritev at `offset` from `buffers`: the count written (possibly short). */
  pwritev(fd: number, buffers: Uint8Array | readonly Uint8Array[], offset: number): Promise<number> {
    return this.submit(OP_WRITE, fd, buffers, offset, 0, 0, 'write');
  }

  /**
   * pwritev with a completion callback instead of a promise: the write path of a request that
   * needs no continuation of its own (a raw AIO write) saves the promise and its reactions.
   */
  pwritevThen(fd: number, buffers: Uint8Array | readonly Uint8Array[], offset: number, done: EngineDone): void {
    this.submitThen(OP_WRITE, fd, buffers, offset, 0, 0, done);
  }

  /** The system error of a negative result, as node:fs reports it. */
  error(res: number, syscall: string): Error {
    return this.addon.engineError(-res, syscall);
  }

  async fdatasync(fd: number): Promise<void> {
    await this.submit(OP_DATASYNC, fd, null, 0, 0, 0, 'fdatasync');
  }

  async fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
    await this.submit(OP_FALLOCATE, fd, null, offset, length, mode, 'fallocate');
  }

  /**
   * fallocate(mode) of [zeroOffset, +zeroLength), then pwritev at `offset` (inside that range):
   * one submission and one completion (canLink only). The count written; a failed fallocate
   * rejects with syscall 'fallocate': the range was not zeroed, and the data may have been
   * written or not (io_uring's link does not stop the writev on every kernel).
   */
  zeroThenPwritev(fd: number, mode: number, zeroOffset: number, zeroLength: number, buffers: Uint8Array | readonly Uint8Array[], offset: number): Promise<number> {
    return this.submit(OP_ZERO_WRITE, fd, buffers, zeroOffset, zeroLength, mode, 'write', offset);
  }

  /** zeroThenPwritev with a completion callback (`headFailed`: the fallocate failed), as pwritevThen. */
  zeroThenPwritevThen(fd: number, mode: number, zeroOffset: number, zeroLength: number, buffers: Uint8Array | readonly Uint8Array[], offset: number, done: EngineDone): void {
    this.submitThen(OP_ZERO_WRITE, fd, buffers, zeroOffset, zeroLength, mode, done, offset);
  }

  /** Wait for everything in flight (delivered as usual), then stop the back end. */
  stop(): void {
    this.addon.engineStop();
    // The backlog never reached the engine: it fails rather than waiting forever.
    for (const w of this.backlog.splice(0)) w.done(-125 /* ECANCELED */, false);
  }

  private submit(op: number, fd: number, buffers: Buffers, offset: number, length: number, mode: number, syscall: string, writeOffset = 0): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const done: EngineDone = (res, headFailed) => (res < 0 ? reject(this.error(res, headFailed === true ? 'fallocate' : syscall)) : resolve(res));
      this.submitThen(op, fd, buffers, offset, length, mode, done, writeOffset);
    });
  }

  private submitThen(op: number, fd: number, buffers: Buffers, offset: number, length: number, mode: number, done: EngineDone, writeOffset = 0): void {
    // Keep the order: nothing overtakes what already waits for a slot.
    if (this.backlog.length === 0 && this.start(op, fd, buffers, offset, length, mode, done, writeOffset)) return;
    this.backlog.push({ op, fd, buffers, offset, length, mode, writeOffset, done });
  }

  private start(op: number, fd: number, buffers: Buffers, offset: number, length: number, mode: number, done: EngineDone, writeOffset: number): boolean {
    const slot = this.addon.engineSubmit(op, fd, buffers, offset, length, mode, writeOffset);
    if (slot < 0) return false;
    this.slotDone[slot] = done;
    this.slotBuffers[slot] = buffers;
    return true;
  }

  /**
   * The addon's batch of (slot, result) pairs: take every callback of the batch, then settle
   * each, then feed freed slots. All are taken before any runs: the addon has freed the batch's
   * slots already, and a callback may submit at once (a short write's rest, a format driver's
   * next write), taking a slot whose completion is further down this batch; its callback would
   * then run with that result and the earlier request's never. A nested batch (a callback
   * that stops the engine) overwrites `results`: the batch is read into a copy first.
   */
  private complete(count: number): void {
    const nested = this.completing;
    const results = nested ? this.results.slice(0, 2 * count) : this.batchResults;
    const dones = nested ? new Array<EngineDone | undefined>(count) : this.batchDone;
    if (!nested) results.set(this.results.subarray(0, 2 * count));
    for (let i = 0; i < count; i++) {
      const tagged = results[2 * i];
      const slot = tagged >= HEAD_FAILED ? tagged - HEAD_FAILED : tagged;
      dones[i] = this.slotDone[slot];
      this.slotDone[slot] = undefined;
      this.slotBuffers[slot] = null;
    }
    // A callback that throws (a bug) must not cost the rest of the batch their completion:
    // the addon has freed their slots already. The first exception is rethrown at the end.
    let thrown: { e: unknown } | null = null;
    this.completing = true;
    for (let i = 0; i < count; i++) {
      const done = dones[i];
      dones[i] = undefined;
      try {
        done?.(results[2 * i + 1], results[2 * i] >= HEAD_FAILED);
      } catch (e) {
        thrown ??= { e };
      }
    }
    this.completing = nested;
    while (this.backlog.length > 0 && this.startWaiting(this.backlog[0])) this.backlog.shift();
    if (thrown !== null) throw thrown.e;
  }

  private startWaiting(w: Waiting): boolean {
    return this.start(w.op, w.fd, w.buffers, w.offset, w.length, w.mode, w.done, w.writeOffset);
  }
}

function hasEngine(a: SeekAddon | null): a is SeekAddon & EngineAddon {
  return (
    typeof a?.engineStart === 'function' &&
    typeof a.engineSubmit === 'function' &&
    typeof a.engineError === 'function' &&
    typeof a.engineStop === 'function'
  );
}

/** BLOCKLAYER_INLINE_WRITES: '0' keeps lone small writes off the loop's thread. */
export function inlineWritesChoice(env: string | undefined = process.env.BLOCKLAYER_INLINE_WRITES): boolean {
  return env !== '0';
}

/** BLOCKLAYER_IO_ENGINE, checked; anything else is 'auto'. */
export function engineChoice(env: string | undefined = process.env.BLOCKLAYER_IO_ENGINE): EngineChoice {
  return env === 'io_uring' || env === 'threads' || env === 'fs' ? env : 'auto';
}

/** Started on first use; `undefined` = not tried yet, null = node:fs. */
let engine: IoEngine | null | undefined;
/** The addon `engine` was started from: another addon in use (a test's) means another engine. */
let engineAddon: SeekAddon | null = null;
/** What BLOCKLAYER_IO_ENGINE asked for, or a test's choice. */
let choice: EngineChoice | undefined;
/** A test's choice of inline writes; undefined: BLOCKLAYER_INLINE_WRITES. */
let inlineChoice: boolean | undefined;

/**
 * The engine the file driver submits to, or null (node:fs and libuv's pool): no addon, an
 * addon without the engine, BLOCKLAYER_IO_ENGINE=fs, or an engine that could not start
 * (a forced io_uring that the kernel refuses).
 */
export function ioEngine(): IoEngine | null {
  const addon = seekAddon();
  if (engine === undefined || addon !== engineAddon) {
    engine?.stop();
    engineAddon = addon;
    choice ??= engineChoice();
    engine = startEngine(choice, addon);
  }
  return engine;
}

/**
 * Which path the file driver's requests take: 'io_uring' or 'threads' (the addon's engine), or
 * 'fs' (node:fs and libuv's thread pool: no addon, or BLOCKLAYER_IO_ENGINE=fs).
 */
export function ioEngineName(): EngineKind | 'fs' {
  return ioEngine()?.kind ?? 'fs';
}

function startEngine(c: EngineChoice, addon: SeekAddon | null): IoEngine | null {
  if (c === 'fs' || !hasEngine(addon)) return null;
  try {
    return new IoEngine(addon, c, inlineChoice ?? inlineWritesChoice());
  } catch {
    return null;
  }
}

/**
 * Test seam: stop the current engine (after what is in flight) and use `c` from now on
 * (undefined: BLOCKLAYER_IO_ENGINE again), with lone small writes inline or not (undefined:
 * BLOCKLAYER_INLINE_WRITES). Returns the engine now in use, null for node:fs.
 */
export function setIoEngineForTest(c: EngineChoice | undefined, inlineWrites?: boolean): IoEngine | null {
  engine?.stop();
  engine = undefined;
  choice = c;
  inlineChoice = inlineWrites;
  return ioEngine();
}
