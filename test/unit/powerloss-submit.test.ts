// Writes started with a completion callback (the pwritevSubmit hook) on the powerloss and mem
// protocols: the contract of the file driver's hook (started now, `done` later and once, FUA
// and closed nodes refused), the volatile cache of the powerloss store (a callback write lands
// at completion and stays volatile until a flush that started after it), and the format
// drivers' callback paths taken over it, where an L2 entry set from a data write's completion
// must never reach the disk without that data.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  BlockDriverState,
  IOVector,
  VirtualClock,
  aioToPromise,
  bdrvCreate,
  memStoreCreate,
  memStoreDelete,
  memStoreGet,
  memStoreRead,
  powerlossStoreCreate,
  powerlossStoreDelete,
  type BlockError,
  type PowerLossStore,
  type VolatileOp,
} from '../../src/index.js';
import { powerlossCountingRegistry, submitSnapshot, submitStats, type SubmitCounts } from '../property/submit-stats.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const registry = powerlossCountingRegistry();

/** Start a write through `bs`'s hook; resolves with its error and whether `done` ran inside the call. */
function submit(bs: BlockDriverState, offset: number, data: Uint8Array, fua = false): { started: boolean; end: Promise<{ err: BlockError | null; sync: boolean }> } {
  let returned = false;
  let started = false;
  const end = new Promise<{ err: BlockError | null; sync: boolean }>((resolve) => {
    started = bs.pwritevSubmit(offset, IOVector.from(data), (err) => resolve({ err, sync: !returned }), fua ? { fua: true } : undefined);
  });
  returned = true;
  return { started, end };
}

function bytesAt(store: PowerLossStore, offset: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  store.current.read(offset, [out], len);
  return out;
}

describe('the powerloss and mem protocols start writes with a callback', () => {
  afterEach(() => {
    powerlossStoreDelete('pls');
    memStoreDelete('pls');
  });

  it('powerloss: done runs later, once; the write lands at completion and stays volatile', async () => {
    const store = powerlossStoreCreate('pls', new Uint8Array(4096));
    const bs = await BlockDriverState.open('powerloss:pls', { format: 'raw', registry });
    try {
      const w = submit(bs, 1024, new Uint8Array(512).fill(7));
      expect(w.started).toBe(true);
      // Not landed yet: the store sees nothing, the node has it in flight.
      expect(bytesAt(store, 1024, 1)[0]).toBe(0);
      expect(bs.requests.inFlight).toBe(1);
      expect(await w.end).toEqual({ err: null, sync: false });
      expect(bytesAt(store, 1024, 1)[0]).toBe(7);
      expect(bs.requests.inFlight).toBe(0);
      // Completed but not flushed: a crash may drop it.
      expect(store.pendingOps.length).toBe(1);
      store.crash(() => 0);
      expect(bytesAt(store, 1024, 1)[0]).toBe(0);
    } finally {
      await bs.close();
    }
  });

  it('powerloss: a flush issued before a callback write completed may overtake it', async () => {
    for (const awaitWrite of [true, false]) {
      const store = powerlossStoreCreate('pls', new Uint8Array(4096));
      const bs = await BlockDriverState.open('powerloss:pls', { format: 'raw', registry });
      try {
        // Sector 2: lands after three turns; the flush after one.
        const w = submit(bs, 1024, new Uint8Array(512).fill(9));
        if (awaitWrite) await w.end;
        await bs.flush();
        await w.end;
        store.crash(() => 0);
        expect(bytesAt(store, 1024, 1)[0]).toBe(awaitWrite ? 9 : 0);
      } finally {
        await bs.close();
      }
    }
  });

  it('powerloss: with the power gone the write fails with EIO through done; FUA is refused', async () => {
    const store = powerlossStoreCreate('pls', new Uint8Array(4096));
    const bs = await BlockDriverState.open('powerloss:pls', { format: 'raw', registry });
    try {
      expect(submit(bs, 0, new Uint8Array(512), true).started).toBe(false);
      store.failAfter(0);
      const w = submit(bs, 0, new Uint8Array(512).fill(1));
      expect(w.started).toBe(true);
      const r = await w.end;
      expect(r.sync).toBe(false);
      expect(r.err?.code).toBe('EIO');
      expect(bs.requests.inFlight).toBe(0);
    } finally {
      store.crash(() => 0);
      await bs.close();
    }
  });

  it('mem: stored at once, done from a later turn', async () => {
    memStoreCreate('pls', 4096);
    const bs = await BlockDriverState.open('mem:pls', { format: 'raw', registry });
    try {
      const w = submit(bs, 512, new Uint8Array(512).fill(4));
      expect(w.started).toBe(true);
      expect(await w.end).toEqual({ err: null, sync: false });
      const b = new Uint8Array(1);
      memStoreGet('pls')!.read(512, [b], 1);
      expect(b[0]).toBe(4);
      expect(submit(bs, 0, new Uint8Array(512), true).started).toBe(false);
    } finally {
      await bs.close();
    }
  });
});

const CS = 4096;
const BACKING_BYTE = 0x3c;

describe('format callback paths over the powerloss protocol', () => {
  let dir = '';
  let backing = '';
  let seq = 0;
  beforeEach(() => {
    dir = makeTempDir('powerloss-submit');
    backing = join(dir, 'back.raw');
    writeFileSync(backing, new Uint8Array(16 * CS).fill(BACKING_BYTE));
  });
  afterEach(() => removeTempDir(dir));

  /** A fresh image of `format` over a host raw backing file, moved onto a powerloss store. */
  async function plImage(format: 'qcow2' | 'qed', lazyRefcounts: boolean): Promise<{ store: PowerLossStore; open: () => Promise<BlockDriverState>; cleanup: () => void }> {
    const name = `pls-img-${process.pid}-${seq++}`;
    await bdrvCreate(`mem:${name}`, { format, options: { size: 16 * CS, clusterSize: CS, backingFile: backing, backingFmt: 'raw', ...(lazyRefcounts ? { lazyRefcounts } : {}) }, registry });
    const store = powerlossStoreCreate(name, memStoreRead(name));
    memStoreDelete(name);
    return {
      store,
      open: () => BlockDriverState.open(`powerloss:${name}`, { format, registry, clock: new VirtualClock() }),
      cleanup: () => powerlossStoreDelete(name),
    };
  }

  /**
   * Cut the power after each number of requests of `op` + flush in turn, then crash keeping
   * every volatile operation except the writes that carry `payload` (the guest data): an L2
   * entry that reached the disk before its data would then read zeros, neither the old
   * contents nor the new. Returns how often each callback path ran.
   */
  async function cutEverywhere(format: 'qcow2' | 'qed', lazyRefcounts: boolean, payloadAt: number, payload: Uint8Array, op: (bs: BlockDriverState) => Promise<void>): Promise<SubmitCounts> {
    const before = submitSnapshot().powerloss;
    for (let k = 0; k < 14; k++) {
      const img = await plImage(format, lazyRefcounts);
      try {
        let bs = await img.open();
        // Cluster 0 allocated and everything flushed: L2 table and refcounts cached from now on.
        await bs.pwrite(0, new Uint8Array(CS).fill(1));
        await bs.flush();
        img.store.failAfter(k);
        try {
          await op(bs);
          await bs.flush();
        } catch (e) {
          if (!img.store.dead) throw e;
        }
        img.store.failAfter(0);
        await bs.close().catch(() => undefined);
        crashKeepingAllBut(img.store, payload);
        bs = await img.open();
        try {
          expect((await bs.check()).corruptions).toBe(0);
          const got = new Uint8Array(payload.length);
          await bs.pread(payloadAt, got);
          const old = oldBytes(payloadAt, payload.length);
          for (let s = 0; s < got.length; s += 512) {
            const sector = got.subarray(s, s + 512);
            const ok = equal(sector, old.subarray(s, s + 512)) || equal(sector, payload.subarray(s, s + 512));
            if (!ok) throw new Error(`cut after ${k} requests: guest sector at ${payloadAt + s} holds neither old nor new data`);
          }
        } finally {
          await bs.close();
        }
      } finally {
        img.cleanup();
      }
    }
    const after = submitStats.powerloss;
    return { qcow2Zero: after.qcow2Zero - before.qcow2Zero, qcow2Cow: after.qcow2Cow - before.qcow2Cow, qcow2Alloc: after.qcow2Alloc - before.qcow2Alloc, qcow2Rewrite: after.qcow2Rewrite - before.qcow2Rewrite, qedRewrite: after.qedRewrite - before.qedRewrite, other: after.other - before.other };
  }

  /** What the guest saw before the op: cluster 0 written with 1s, the backing file elsewhere. */
  function oldBytes(offset: number, len: number): Uint8Array {
    const out = new Uint8Array(len).fill(BACKING_BYTE);
    for (let i = 0; i < len; i++) if (offset + i < CS) out[i] = 1;
    return out;
  }

  // Lazy refcounts: no refcount update orders the L2 table's write after a file flush, only
  // the L2 cache's own wait for one does.
  for (const lazy of [false, true]) {
    const how = lazy ? ', lazy refcounts' : '';
    it(`qcow2: an allocating write of a whole cluster${how}`, async () => {
      const payload = new Uint8Array(CS).fill(2);
      const n = await cutEverywhere('qcow2', lazy, 2 * CS, payload, (bs) => bs.pwrite(2 * CS, payload));
      expect(n.qcow2Alloc).toBeGreaterThan(5);
    });

    it(`qcow2: a COW write over a host raw backing file (head, data and tail as one write)${how}`, async () => {
      const payload = new Uint8Array(1024).fill(2);
      const n = await cutEverywhere('qcow2', lazy, 2 * CS + 1024, payload, (bs) => bs.pwrite(2 * CS + 1024, payload));
      expect(n.qcow2Cow).toBeGreaterThan(5);
    });

    it(`qcow2: a rewrite of an owned cluster${how}`, async () => {
      const payload = new Uint8Array(1024).fill(3);
      const n = await cutEverywhere('qcow2', lazy, 512, payload, (bs) => bs.pwrite(512, payload));
      expect(n.qcow2Rewrite).toBeGreaterThan(5);
    });
  }

  it('qcow2 without a backing file: a write into a new cluster over stale bytes, zeroed and written as one request', async () => {
    // The file runs on past the image's clusters with stale bytes, where the next cluster is
    // allocated: an L2 entry on the disk before the zeroing and the data would show them.
    const STALE = 0xee;
    const before = submitSnapshot().powerloss.qcow2Zero;
    const payload = new Uint8Array(1024).fill(2);
    for (let k = 0; k < 24; k++) {
      const name = `pls-zero-${process.pid}-${seq++}`;
      await bdrvCreate(`mem:${name}`, { format: 'qcow2', options: { size: 16 * CS, clusterSize: CS }, registry });
      const created = memStoreRead(name);
      memStoreDelete(name);
      const padded = new Uint8Array(created.length + 8 * CS).fill(STALE);
      padded.set(created);
      const store = powerlossStoreCreate(name, padded);
      const open = (): Promise<BlockDriverState> => BlockDriverState.open(`powerloss:${name}`, { format: 'qcow2', registry, clock: new VirtualClock() });
      try {
        let bs = await open();
        await bs.pwrite(0, new Uint8Array(CS).fill(1));
        await bs.flush();
        store.failAfter(k);
        // Odd k: a flush issued beside the write, whose zeroing and data (in a new cluster,
        // past cluster 0's) land long after the metadata writes.
        const cluster0 = store.toBytes().findIndex((b, i) => i % CS === 0 && b === 1);
        if (k % 2 === 1) store.writeHops = (at) => (at > cluster0 ? 60 : 1);
        try {
          const w = bs.pwrite(2 * CS + 1024, payload);
          const f = k % 2 === 1 ? bs.flush() : null;
          await Promise.allSettled([w, f]);
          await w;
          await f;
          await bs.flush();
        } catch (e) {
          if (!store.dead) throw e;
        }
        store.writeHops = null;
        store.failAfter(0);
        await bs.close().catch(() => undefined);
        // Everything volatile survives but the data and every zeroing.
        const drawn = store.pendingOps.filter((o) => !(o.kind === 'write' && o.fua));
        let i = 0;
        store.crash(() => {
          const o: VolatileOp = drawn[i++];
          return o.kind === 'zero' || (o.kind === 'write' && contains(o.data, payload)) ? 0 : 1;
        });
        bs = await open();
        try {
          expect((await bs.check()).corruptions).toBe(0);
          const got = new Uint8Array(CS);
          await bs.pread(2 * CS, got);
          const fresh = new Uint8Array(CS);
          fresh.set(payload, 1024);
          // The old contents (zeros) or the new: never the stale bytes.
          if (!got.every((b) => b === 0) && !equal(got, fresh)) throw new Error(`cut after ${k} requests: the new cluster shows bytes neither zeroed nor written`);
        } finally {
          await bs.close();
        }
      } finally {
        powerlossStoreDelete(name);
      }
    }
    expect(submitSnapshot().powerloss.qcow2Zero - before).toBeGreaterThan(5);
  });

  it('qcow2: a flush issued while a callback allocation is in flight does not make its L2 entry durable', async () => {
    for (const lazy of [false, true]) {
      const img = await plImage('qcow2', lazy);
      try {
        let bs = await img.open();
        await bs.pwrite(0, new Uint8Array(CS).fill(1));
        await bs.flush();
        // The data write lands long after the flush issued beside it completed.
        img.store.writeHops = () => 40;
        const payload = new Uint8Array(CS).fill(2);
        const before = submitStats.powerloss.qcow2Alloc;
        const w = bs.pwrite(2 * CS, payload);
        await bs.flush();
        await w;
        expect(submitStats.powerloss.qcow2Alloc - before).toBe(1);
        img.store.failAfter(0);
        await bs.close().catch(() => undefined);
        // Everything volatile survives but the data: the entry must not point at it.
        crashKeepingAllBut(img.store, payload);
        img.store.writeHops = null;
        bs = await img.open();
        try {
          // The old contents, or the new if the flush did wait for it: never a dropped cluster.
          const got = new Uint8Array(CS);
          await bs.pread(2 * CS, got);
          expect(got.every((b) => b === BACKING_BYTE) || got.every((b) => b === 2)).toBe(true);
        } finally {
          await bs.close();
        }
      } finally {
        img.cleanup();
      }
    }
  });

  it('QED: an AIO rewrite of an allocated cluster', async () => {
    const payload = new Uint8Array(1024).fill(3);
    const n = await cutEverywhere('qed', false, 1024, payload, (bs) => aioToPromise((cb) => bs.aioWritev(2, IOVector.from(payload), 2, cb)));
    expect(n.qedRewrite).toBeGreaterThan(5);
  });
});

/** Crash `store` keeping every volatile operation whole but the writes that carry `payload`. */
function crashKeepingAllBut(store: PowerLossStore, payload: Uint8Array): void {
  // FUA writes are kept without a draw.
  const drawn = store.pendingOps.filter((o) => !(o.kind === 'write' && o.fua));
  let i = 0;
  store.crash(() => {
    const o: VolatileOp = drawn[i++];
    return o.kind === 'write' && contains(o.data, payload) ? 0 : 1;
  });
}

function contains(hay: Uint8Array, needle: Uint8Array): boolean {
  outer: for (let i = 0; i + needle.length <= hay.length; i += 512) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
