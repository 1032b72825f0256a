import { scheduleBottomHalf } from './coroutine.js';
import { BlockError, toBlockError } from './errors.js';
import type { BlockDriverState } from './node.js';

/** Completion callback of an AIO request: null on success. */
export type CompletionFunc = (error: BlockError | null) => void;

type AcbState = 'idle' | 'queued' | 'running' | 'completing';

/**
 * What a work function returns when its request is already done (a read served inside the
 * call): the AIOCB completes at once instead of through the promise's reaction.
 */
export const AIO_DONE_NOW: Promise<void> = Promise.resolve();

/**
 * What a work function returns when it started its request with `acb.submittedDone` as the
 * completion callback (a write through a driver's pwritevSubmit hook): the AIOCB stays
 * running until that callback ends it; no promise is waited on.
 */
export const AIO_SUBMITTED: Promise<void> = Promise.resolve();

/**
 * An in-flight asynchronous request (QEMU's BlockDriverAIOCB). AIOCBs come from a pool and go
 * back to it after their callback has run, so a busy device allocates none per request.
 *
 * Life cycle: get() -> start(work) -> work runs in a later microtask -> complete() -> the
 * callback runs in a later microtask -> release to the pool.
 */
export class BlockAIOCB {
  bs: BlockDriverState | null = null;
  cb: CompletionFunc | null = null;
  /**
   * The node whose in-flight count this request holds (a node's generic AIO), dropped just
   * before the callback runs: a field rather than a wrapping closure per request.
   */
  countedOn: BlockDriverState | null = null;
  /** Bumped at each reuse: lets tests see that a pool recycles objects. */
  generation = 0;
  private state: AcbState = 'idle';
  private cancelled = false;
  private finishWaiters: (() => void)[] = [];
  /** The running request's work and result, kept in fields so no closure is made per request. */
  private work: ((acb: BlockAIOCB) => Promise<void>) | null = null;
  private error: BlockError | null = null;
  // Bound once per AIOCB (pooled), not once per request; bind() rather than an arrow that
  // calls the method: V8 calls a bound function without a frame of its own, and these run
  // for every request.
  private readonly runBound: () => void = this.run.bind(this);
  private readonly doneBound: () => void = this.complete.bind(this, null);
  private readonly failBound = (e: unknown): void => this.complete(toBlockError(e, { op: 'aio' }));
  private readonly finishBound: () => void = this.finish.bind(this);
  /** The completion callback of a request whose work returned AIO_SUBMITTED. */
  readonly submittedDone: (err: BlockError | null) => void = this.complete.bind(this);

  constructor(readonly pool: AIOPool<BlockAIOCB>) {}

  /** True from start() until the callback has run. */
  get inFlight(): boolean {
    return this.state !== 'idle';
  }

  /**
   * Run `work` as this request's coroutine. It never starts synchronously inside the caller:
   * QEMU's callers may cancel between submitting and the first bottom half.
   */
  start(work: (acb: this) => Promise<void>): this {
    this.state = 'queued';
    // Called with this very object, whose type `work` expects.
    this.work = work as (acb: BlockAIOCB) => Promise<void>;
    scheduleBottomHalf(this.runBound);
    return this;
  }

  private run(): void {
    const work = this.work;
    this.work = null;
    if (this.cancelled || work === null) {
      this.complete(new BlockError('ECANCELED', 'Operation canceled', { op: 'aio' }));
      return;
    }
    this.state = 'running';
    let p: Promise<void>;
    try {
      p = work(this);
    } catch (e) {
      // A work function that throws instead of rejecting still completes through the callback.
      p = Promise.reject(e instanceof Error ? e : toBlockError(e, { op: 'aio' }));
    }
    if (p === AIO_SUBMITTED) return;
    if (p === AIO_DONE_NOW) {
      // Done inside the call (a read from the page cache): complete without waiting a
      // microtask for a settled promise; the callback still runs in a later one.
      this.complete(null);
      return;
    }
    p.then(this.doneBound, this.failBound);
  }

  /** Finish the request: its callback runs in a later microtask, exactly once. */
  complete(error: BlockError | null): void {
    if (this.state === 'completing' || this.state === 'idle') return;
    this.state = 'completing';
    this.error = error;
    scheduleBottomHalf(this.finishBound);
  }

  private finish(): void {
    const cb = this.cb;
    const error = this.error;
    this.error = null;
    const counted = this.countedOn;
    try {
      // Counted out first, so that close() issued from the callback does not wait for it.
      counted?.requests.leave();
      cb?.(error);
    } finally {
      // Nearly every request ends with nobody waiting: no new array, no iterator then.
      const waiters = this.finishWaiters;
      if (waiters.length > 0) this.finishWaiters = [];
      this.pool.release(this);
      for (let i = 0; i < waiters.length; i++) waiters[i]();
    }
  }

  /**
   * Cancel and wait (bdrv_aio_cancel). A request that has not begun its I/O completes with
   * ECANCELED; one that has begun runs to its end, since stopping it halfway could leave a
   * table half-linked. Either way this resolves after the callback has run exactly once.
   */
  cancel(): Promise<void> {
    if (this.state === 'idle') return Promise.resolve();
    if (this.state === 'queued') this.cancelled = true;
    return new Promise<void>((resolve) => this.finishWaiters.push(resolve));
  }

  /** Called by the pool when handing the object out again. */
  reset(bs: BlockDriverState | null, cb: CompletionFunc | null): void {
    this.bs = bs;
    this.cb = cb;
    this.countedOn = null;
    this.state = 'idle';
    this.cancelled = false;
    this.work = null;
    this.generation++;
  }
}

/**
 * A stack of free objects that keeps its storage. At depth 16 a pool's free list swings
 * between one entry and none on every request (a completion's callback takes an object before
 * its own goes back), and V8 frees an array's backing store when pop() empties it: the next
 * push() allocated it again, and each such pop() left the builtin for the runtime.
 */
export class FreeStack<T> {
  private readonly items: (T | undefined)[] = [];
  private count = 0;

  get length(): number {
    return this.count;
  }

  pop(): T | undefined {
    if (this.count === 0) return undefined;
    const x = this.items[--this.count];
    // No reference kept to what was handed out.
    this.items[this.count] = undefined;
    return x;
  }

  push(x: T): void {
    this.items[this.count++] = x;
  }
}

/**
 * Free-list allocator of AIOCBs (QEMU's AIOPool). A driver with per-request state subclasses
 * BlockAIOCB and gives its own factory.
 */
export class AIOPool<T extends BlockAIOCB> {
  private readonly free = new FreeStack<T>();
  /** Objects ever created; stays flat once the pool is warm. */
  created = 0;

  constructor(private readonly factory: (pool: AIOPool<T>) => T) {}

  get(bs: BlockDriverState | null, cb: CompletionFunc | null): T {
    let acb = this.free.pop();
    if (!acb) {
      acb = this.factory(this);
      this.created++;
    }
    acb.reset(bs, cb);
    return acb;
  }

  release(acb: T): void {
    acb.reset(null, null);
    this.free.push(acb);
  }

  get freeCount(): number {
    return this.free.length;
  }
}

/** The pool the registry's adapters use for drivers that only have coroutine hooks. */
export const genericAioPool = new AIOPool<BlockAIOCB>((pool) => new BlockAIOCB(pool));

/** Await an AIO request: the promise adapter from callback style to coroutine style. */
export function aioToPromise(submit: (cb: CompletionFunc) => BlockAIOCB): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    submit((err) => (err ? reject(err) : resolve()));
  });
}
