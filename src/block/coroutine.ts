/**
 * QEMU's coroutine primitives, for async/await. A coroutine is an async function and a yield is
 * an await; these only decide who runs next.
 */

/** FIFO wait queue (CoQueue): waiters resume in the order they queued. */
export class CoQueue {
  private readonly waiters: (() => void)[] = [];

  /** Wait until woken by next() or restartAll(). */
  wait(): Promise<void> {
    return new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  /** Wake the first waiter; returns false when nobody waited. */
  next(): boolean {
    const w = this.waiters.shift();
    if (w) w();
    return w !== undefined;
  }

  restartAll(): void {
    while (this.next());
  }

  get isEmpty(): boolean {
    return this.waiters.length === 0;
  }

  get length(): number {
    return this.waiters.length;
  }
}

/** A fair mutex (CoMutex): lock() resolves in FIFO order. */
export class CoMutex {
  private locked = false;
  private readonly queue = new CoQueue();

  get isLocked(): boolean {
    return this.locked;
  }

  /** Waiters queued behind the holder. */
  get waiting(): number {
    return this.queue.length;
  }

  async lock(): Promise<void> {
    if (!this.locked) {
      this.locked = true;
      return;
    }
    // Ownership is handed over directly by unlock(), so `locked` stays true for us.
    await this.queue.wait();
  }

  unlock(): void {
    if (!this.locked) throw new Error('CoMutex.unlock() of an unlocked mutex');
    if (!this.queue.next()) this.locked = false;
  }

  /** Run fn with the mutex held, releasing it however fn ends. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.lock();
    try {
      return await fn();
    } finally {
      this.unlock();
    }
  }
}

const SETTLED = Promise.resolve();

/**
 * Run `fn` in a later microtask: completion callbacks never run inside the caller. Not
 * queueMicrotask: Node wraps each of its callbacks in an AsyncResource (an async id, an object
 * and a bound function per call), which measured a tenth of the CPU time of a 64 KiB read and
 * much of its garbage; a reaction on an already-settled promise is queued just as soon, in the
 * same order, for one small promise. An exception thrown by `fn` surfaces as an unhandled
 * rejection, which Node treats as an uncaught exception, as queueMicrotask would.
 */
export function scheduleBottomHalf(fn: () => void): void {
  // Fire and forget on purpose: nobody waits on a bottom half; errors surface as above.
  void SETTLED.then(fn);
}

/** A promise with its resolve and reject at hand: an event one side awaits, the other fires. */
export class Deferred<T = void> {
  readonly promise: Promise<T>;
  resolve!: (value: T) => void;
  reject!: (error: unknown) => void;

  constructor() {
    this.promise = new Promise<T>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }
}

/**
 * Single-flight with coalescing: at most one run of `issue` in flight. Callers arriving while
 * one runs never join it (it may have started before what they want covered was done): they
 * gather into the next run, merging what they ask for, and that run starts when the current
 * one settles. A lone caller runs at once and gets the run's own promise.
 */
export class CoalescedRun<G> {
  private running = false;
  private pending: { gathered: G; done: Deferred } | null = null;

  constructor(
    private readonly issue: (gathered: G) => Promise<void>,
    private readonly merge: (into: G, add: G) => G,
  ) {}

  run(what: G): Promise<void> {
    const pending = this.pending;
    if (pending) {
      pending.gathered = this.merge(pending.gathered, what);
      return pending.done.promise;
    }
    if (this.running) {
      this.pending = { gathered: what, done: new Deferred() };
      return this.pending.done.promise;
    }
    return this.start(what);
  }

  private start(what: G): Promise<void> {
    const p = this.issue(what);
    this.running = true;
    const settled = (): void => {
      this.running = false;
      const next = this.pending;
      if (!next) return;
      this.pending = null;
      // Everyone who gathered into `next` shares its outcome; handled both ways, so the
      // chain itself never rejects unobserved.
      this.start(next.gathered).then(next.done.resolve, next.done.reject);
    };
    // Bookkeeping only: the caller awaits `p` itself and sees its error.
    p.then(settled, settled);
    return p;
  }
}
