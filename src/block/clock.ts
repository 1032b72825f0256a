/**
 * Injected time. The QED need-check timer and anything else time-driven take a Clock, so tests
 * drive a VirtualClock and never sleep. Real timers are unref()ed: a pending timer never keeps
 * the process alive.
 */
export interface Timer {
  /** (Re)arm the timer to fire `ms` milliseconds from now (qemu_mod_timer). */
  mod(ms: number): void;
  /** Disarm; safe when not armed (qemu_del_timer). */
  cancel(): void;
  readonly pending: boolean;
}

export interface Clock {
  now(): number;
  newTimer(callback: () => void): Timer;
}

export class RealClock implements Clock {
  now(): number {
    return Date.now();
  }

  newTimer(callback: () => void): Timer {
    let handle: ReturnType<typeof setTimeout> | undefined;
    return {
      mod(ms: number) {
        if (handle !== undefined) clearTimeout(handle);
        handle = setTimeout(() => {
          handle = undefined;
          callback();
        }, ms);
        // Browsers return a number without unref; Node returns a Timeout.
        (handle as { unref?: () => void }).unref?.();
      },
      cancel() {
        if (handle !== undefined) clearTimeout(handle);
        handle = undefined;
      },
      get pending() {
        return handle !== undefined;
      },
    };
  }
}

/** A clock that moves only when told to: `advance(ms)` fires every timer that falls due. */
export class VirtualClock implements Clock {
  private time = 0;
  private readonly timers = new Set<{ due: number; callback: () => void }>();

  now(): number {
    return this.time;
  }

  newTimer(callback: () => void): Timer {
    const entry = { due: 0, callback };
    const timers = this.timers;
    const now = (): number => this.time;
    return {
      mod(ms: number) {
        entry.due = now() + ms;
        timers.add(entry);
      },
      cancel() {
        timers.delete(entry);
      },
      get pending() {
        return timers.has(entry);
      },
    };
  }

  /** Move time forward, firing due timers in order of their deadlines. */
  advance(ms: number): void {
    const target = this.time + ms;
    for (;;) {
      let next: { due: number; callback: () => void } | undefined;
      for (const t of this.timers) if (t.due <= target && (!next || t.due < next.due)) next = t;
      if (!next) break;
      this.timers.delete(next);
      this.time = Math.max(this.time, next.due);
      next.callback();
    }
    this.time = target;
  }

  /** Fire every pending timer now, as QEMU's drain does. */
  fireAll(): void {
    for (const t of [...this.timers]) {
      this.timers.delete(t);
      t.callback();
    }
  }
}

export const realClock: Clock = new RealClock();
