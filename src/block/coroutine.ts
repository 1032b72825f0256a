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
