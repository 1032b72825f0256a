/**
 * A byte store that can lose power. Every write, zeroing and truncate since the last completed
 * flush is volatile (a disk's write cache): reads see it, but a crash keeps only a random subset
 * of those operations, and of a kept write possibly only some of its 512-byte sectors (a torn
 * write). What a completed flush covered always survives.
 *
 * Kept as two sparse stores: `durable` (what the platter holds) and `current` (what reads see),
 * plus the log of volatile operations in issue order. A flush replays the log onto `durable`;
 * a crash replays a random subset of it and makes `current` a copy of the result.
 *
 * No node: imports (the property tests run it next to the core).
 */
import { BlockError } from '../../block/errors.js';
import { MemStore, processNamespace } from '../mem/store.js';

/** Torn writes tear at this granularity (a disk sector). */
export const POWERLOSS_SECTOR = 512;

export type VolatileOp =
  | { kind: 'write'; offset: number; data: Uint8Array; fua: boolean }
  | { kind: 'zero'; offset: number; bytes: number }
  | { kind: 'truncate'; size: number };

/** A source of randomness: returns an integer in [0, n). Tests pass a seeded one. */
export type RandomInt = (n: number) => number;

export interface CrashReport {
  /** Volatile operations at the time of the crash. */
  pending: number;
  /** Operations kept whole. */
  kept: number;
  /** Writes of which only some sectors were kept. */
  torn: number;
  /** Operations lost entirely. */
  dropped: number;
}

export class PowerLossStore {
  readonly durable = new MemStore();
  readonly current = new MemStore();
  private log: VolatileOp[] = [];
  /**
   * The power supply: requests still allowed before the power goes (null = no crash planned),
   * and whether it is gone. Stores that share one (an image and its data file) lose power at
   * the same request.
   */
  private power: { opsLeft: number | null; dead: boolean } = { opsLeft: null, dead: false };
  /**
   * Turns of the microtask queue before a write or zeroing at `offset` lands (null: the
   * driver's default). A test that draws them makes writes complete long after a flush that
   * overtook them, or in another order than issued.
   */
  writeHops: ((offset: number) => number) | null = null;
  /** Count of requests served (reads, writes, flushes, ...), for picking crash points. */
  opCount = 0;
  flushCount = 0;

  constructor(initial?: Uint8Array) {
    if (initial) {
      this.durable.write(0, [initial], initial.length);
      this.current.write(0, [initial], initial.length);
    }
  }

  get length(): number {
    return this.current.length;
  }

  get pendingOps(): readonly VolatileOp[] {
    return this.log;
  }

  /** Set once the power is gone: every request fails with EIO until crash() is called. */
  get dead(): boolean {
    return this.power.dead;
  }

  /** Put `other` on this store's power supply: from now on both lose power together. */
  sharePowerWith(other: PowerLossStore): void {
    other.power = this.power;
  }

  /**
   * Let `n` more requests through, then lose power (the n+1-th request fails with EIO); the
   * requests of every store on the same supply count.
   */
  failAfter(n: number | null): void {
    this.power.opsLeft = n;
  }

  /** Called at the start of every request: counts it and enforces the planned power cut. */
  private enter(op: string, offset?: number): void {
    const power = this.power;
    if (!power.dead && power.opsLeft !== null) {
      if (power.opsLeft <= 0) power.dead = true;
      else power.opsLeft--;
    }
    if (this.dead) {
      throw new BlockError('EIO', 'powerloss: the device lost power', { op, offset });
    }
    this.opCount++;
  }

  read(offset: number, iov: readonly Uint8Array[], bytes: number): void {
    this.enter('read', offset);
    this.current.read(offset, iov, bytes);
  }

  /** A FUA write (`fua`) is durable on completion: a crash always keeps it. */
  write(offset: number, iov: readonly Uint8Array[], bytes: number, fua = false): void {
    this.enter('write', offset);
    const data = new Uint8Array(bytes);
    let pos = 0;
    for (const seg of iov) {
      if (pos >= bytes) break;
      const n = Math.min(seg.length, bytes - pos);
      data.set(seg.subarray(0, n), pos);
      pos += n;
    }
    this.current.write(offset, [data], bytes);
    // Even a FUA write stays in the log rather than going straight to `durable`: the log is
    // replayed in order, and an older volatile write to the same bytes replayed later would
    // otherwise resurrect stale data over it.
    this.log.push({ kind: 'write', offset, data, fua });
  }

  writeZeroes(offset: number, bytes: number): void {
    this.enter('write_zeroes', offset);
    this.current.writeZeroes(offset, bytes, false);
    this.log.push({ kind: 'zero', offset, bytes });
  }

  truncate(size: number): void {
    this.enter('truncate', size);
    this.current.truncate(size);
    this.log.push({ kind: 'truncate', size });
  }

  /** A completed flush makes every earlier operation durable. */
  flush(): void {
    this.enter('flush');
    for (const op of this.log) applyOp(this.durable, op);
    this.log = [];
    this.flushCount++;
  }

  /**
   * Lose power now: keep a random subset of the volatile operations (a kept write may be torn
   * into a random subset of its sectors), applied in issue order onto the durable bytes. The
   * store is usable again afterwards, holding what survived.
   */
  crash(rand: RandomInt): CrashReport {
    const report: CrashReport = { pending: this.log.length, kept: 0, torn: 0, dropped: 0 };
    for (const op of this.log) {
      const choice = op.kind === 'write' && op.fua ? 1 : rand(3);
      if (choice === 0) {
        report.dropped++;
        continue;
      }
      if (choice === 1 || op.kind !== 'write') {
        applyOp(this.durable, op);
        report.kept++;
        continue;
      }
      // Torn: each sector the write touches survives or not on its own.
      const end = op.offset + op.data.length;
      let keptAny = false;
      for (let s = Math.floor(op.offset / POWERLOSS_SECTOR) * POWERLOSS_SECTOR; s < end; s += POWERLOSS_SECTOR) {
        if (rand(2) === 0) continue;
        const a = Math.max(s, op.offset);
        const b = Math.min(s + POWERLOSS_SECTOR, end);
        this.durable.write(a, [op.data.subarray(a - op.offset, b - op.offset)], b - a);
        keptAny = true;
      }
      if (keptAny) report.torn++;
      else report.dropped++;
    }
    this.log = [];
    this.current.restore(this.durable.snapshot());
    this.power.dead = false;
    this.power.opsLeft = null;
    return report;
  }

  /** Everything, as one flat buffer of what reads see now. */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.current.length);
    this.current.read(0, [out], out.length);
    return out;
  }
}

function applyOp(store: MemStore, op: VolatileOp): void {
  switch (op.kind) {
    case 'write':
      store.write(op.offset, [op.data], op.data.length);
      break;
    case 'zero':
      store.writeZeroes(op.offset, op.bytes, false);
      break;
    case 'truncate':
      store.truncate(op.size);
      break;
  }
}

// Process-wide namespace of power-loss stores ('powerloss:NAME'), like the mem driver's.
function namespace(): Map<string, PowerLossStore> {
  return processNamespace<PowerLossStore>('blocklayer.powerlossStores');
}

export function powerlossStripPrefix(filename: string): string {
  return filename.startsWith('powerloss:') ? filename.slice('powerloss:'.length) : filename;
}

/** Make (or replace) the store NAME, starting durable with `initial`. */
export function powerlossStoreCreate(name: string, initial?: Uint8Array): PowerLossStore {
  const n = powerlossStripPrefix(name);
  if (n === '') throw new BlockError('EINVAL', 'powerloss store name must not be empty', { op: 'create' });
  const store = new PowerLossStore(initial);
  namespace().set(n, store);
  return store;
}

export function powerlossStoreGet(name: string): PowerLossStore | undefined {
  return namespace().get(powerlossStripPrefix(name));
}

export function powerlossStoreDelete(name: string): boolean {
  return namespace().delete(powerlossStripPrefix(name));
}
