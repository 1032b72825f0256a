// Crash safety of qcow2's ordering (refcounts, data, L2, L1) on the powerloss driver: after a
// power cut that keeps any subset of the unflushed writes (torn per sector), the image opens,
// every cluster an L1/L2 entry points at has a non-zero refcount (a crash may leak, never
// under-count), and what was flushed before the cut reads back unchanged.
import { afterEach, describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { powerlossStoreDelete, powerlossStoreGet } from '../../src/drivers/powerloss/index.js';
import {
  getL2Entry,
  L1E_OFFSET_MASK,
  L2E_OFFSET_MASK,
  qcow2GetRefcount,
  qcow2State,
  type BDRVQcow2State,
} from '../../src/drivers/qcow2/index.js';
import { BlockDriverState } from '../../src/index.js';

afterEach(() => {
  powerlossStoreDelete('qc');
});

/** xorshift32: deterministic per seed. */
function rng(seed: number): (n: number) => number {
  let x = seed || 1;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

async function assertReferencesCounted(s: BDRVQcow2State): Promise<void> {
  for (const l1 of s.l1Table) {
    const l2 = Number(l1 & L1E_OFFSET_MASK);
    if (l2 === 0) continue;
    expect(await qcow2GetRefcount(s, l2 / s.clusterSize), `L2 table at ${l2}`).toBeGreaterThan(0);
    const t = await s.l2Cache.get(l2, 'l2_load');
    try {
      for (let i = 0; i < s.l2Size; i++) {
        const off = Number(getL2Entry(s, t.data, i) & L2E_OFFSET_MASK);
        if (off !== 0) expect(await qcow2GetRefcount(s, off / s.clusterSize), `data cluster at ${off}`).toBeGreaterThan(0);
      }
    } finally {
      s.l2Cache.put(t);
    }
  }
}

const SIZE = 4 << 20;
const SECTOR = 512;

async function crashRun(seed: number, options: Record<string, string | number | boolean>): Promise<void> {
  const rand = rng(seed);
  await bdrvCreate('powerloss:qc', { format: 'qcow2', options: { size: SIZE, ...options } });
  const store = powerlossStoreGet('qc')!;
  store.flush();
  const bs = await BlockDriverState.open('powerloss:qc', { format: 'qcow2' });
  // Guest model: current bytes, and per sector whether it changed since the last flush.
  const model = new Uint8Array(SIZE);
  let flushed = new Uint8Array(SIZE);
  const touched = new Uint8Array(SIZE / SECTOR);
  // The power goes out after a random number of requests: mid-write, mid-flush, anywhere.
  store.failAfter(1 + rand(80));
  const ops = 6 + rand(10);
  try {
    for (let i = 0; i < ops; i++) {
      const off = rand(SIZE / SECTOR - 256) * SECTOR;
      const len = (1 + rand(255)) * SECTOR;
      const kind = rand(10);
      if (kind >= 8) {
        await bs.flush();
        flushed = model.slice();
        touched.fill(0);
        continue;
      }
      // Marked before the request: a failed one may have landed in part.
      touched.fill(1, off / SECTOR, (off + len) / SECTOR);
      if (kind < 6) {
        const pat = 1 + rand(250);
        model.fill(pat, off, off + len);
        await bs.pwrite(off, new Uint8Array(len).fill(pat));
      } else {
        model.fill(0, off, off + len);
        await bs.writeZeroes(off, len, { mayUnmap: kind === 7 });
      }
    }
  } catch (e) {
    expect(String(e)).toMatch(/power|Input\/output/i);
  }
  // Power cut: the node is abandoned without close (which would flush).
  store.crash(rand);
  const again = await BlockDriverState.open('powerloss:qc', { format: 'qcow2' });
  try {
    await assertReferencesCounted(qcow2State(again));
    const got = new Uint8Array(SIZE);
    await again.pread(0, got);
    for (let sec = 0; sec < SIZE / SECTOR; sec++) {
      if (touched[sec]) continue;
      const a = got.subarray(sec * SECTOR, (sec + 1) * SECTOR);
      const b = flushed.subarray(sec * SECTOR, (sec + 1) * SECTOR);
      if (!Buffer.from(a).equals(Buffer.from(b))) {
        throw new Error(`seed ${seed}: sector ${sec} lost flushed data`);
      }
    }
  } finally {
    await again.close();
  }
  // The first node's state is gone with the power; drop it without touching the store.
  bs.opaque = null;
}

describe('qcow2 crash safety (powerloss)', () => {
  it('default image: no under-counted cluster, flushed data survives', async () => {
    for (let seed = 1; seed <= 30; seed++) await crashRun(seed, {});
  });

  it('512-byte clusters (refcount block allocation under way)', async () => {
    for (let seed = 100; seed <= 115; seed++) await crashRun(seed, { cluster_size: 512 });
  });

  it('lazy refcounts: the dirty image is repaired on open', async () => {
    for (let seed = 200; seed <= 220; seed++) await crashRun(seed, { lazy_refcounts: true });
  });
});
