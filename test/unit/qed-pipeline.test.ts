/**
 * Pipelined allocating writes (io.ts: early release of the allocation lock, reservations;
 * table.ts: qedWriteL2Entries). Concurrent allocating writes must keep QEMU's ordering rules
 * (qed-format.md §13) at every point of the write log, and give the same file as the same writes issued one
 * at a time.
 */
import { describe, expect, it } from 'vitest';
import { BlockDriverRegistry, memDriver, rawDriver, VirtualClock, type BlockDriver } from '../../src/index.js';
import { qedDriver } from '../../src/drivers/qed/index.js';
import { QED_F_NEED_CHECK } from '../../src/drivers/qed/header.js';
import { createQed, firstDiff, memRaw, openQed, pattern, qedS, readAll, recDriver, recStore, rng, u64 } from './qed-helpers.js';

const CS = 4096;
const SIZE = 4 << 20; // ts=1: 512 entries per L2 table, 2 tables

/** Every write as it reached the store (after the protocol's jitter), with its bytes; and flushes. */
type Op = { op: 'write'; offset: number; bytes: Uint8Array } | { op: 'flush' };

function loggingRegistry(logs: Map<string, Op[]>): BlockDriverRegistry {
  const logOf = (filename: string): Op[] => {
    let l = logs.get(filename);
    if (!l) logs.set(filename, (l = []));
    return l;
  };
  const plog: BlockDriver = {
    ...recDriver,
    formatName: 'plog',
    protocolName: 'plog',
    async coPwritev(bs, offset, bytes, qiov, flags) {
      const copy = qiov.toBuffer().slice();
      await recDriver.coPwritev!(bs, offset, bytes, qiov, flags);
      logOf(bs.filename).push({ op: 'write', offset, bytes: copy });
    },
    async coFlush(bs) {
      await recDriver.coFlush!(bs);
      logOf(bs.filename).push({ op: 'flush' });
    },
  };
  const r = new BlockDriverRegistry();
  for (const d of [memDriver, rawDriver, qedDriver, plog]) r.register(d);
  return r;
}

/**
 * Check qed-format.md §13 at every L2 write of the log: each data entry it carries points at a cluster fully
 * written before it (with a flush in between when there is a backing file); without a backing
 * file, the dirty header and a flush come before the first table update.
 */
function checkOrdering(log: Op[], l2Offsets: Set<number>, backing: boolean): number {
  let l2Writes = 0;
  let dirtyDurableAt = -1;
  let dirtyWrittenAt = -1;
  for (let k = 0; k < log.length; k++) {
    const w = log[k];
    if (w.op === 'flush') {
      if (dirtyWrittenAt >= 0 && dirtyDurableAt < 0) dirtyDurableAt = k;
      continue;
    }
    if (w.offset === 0) {
      const features = new DataView(w.bytes.buffer, w.bytes.byteOffset).getBigUint64(16, true);
      if ((features & QED_F_NEED_CHECK) !== 0n && dirtyWrittenAt < 0) dirtyWrittenAt = k;
      continue;
    }
    const table = [...l2Offsets].find((o) => w.offset >= o && w.offset < o + 512 * 8);
    if (table === undefined) continue;
    l2Writes++;
    if (!backing) expect(dirtyDurableAt, `L2 write #${k} before the dirty bit was durable`).toBeGreaterThanOrEqual(0);
    for (let e = 0; e + 8 <= w.bytes.length; e += 8) {
      const v = u64(w.bytes, e);
      if (v === 0 || v === 1) continue;
      let dataAt = -1;
      for (let j = k - 1; j >= 0; j--) {
        const d = log[j];
        if (d.op === 'write' && d.offset <= v && v + CS <= d.offset + d.bytes.length) {
          dataAt = j;
          break;
        }
      }
      expect(dataAt, `L2 write #${k} points at ${v} before its data was written`).toBeGreaterThanOrEqual(0);
      if (backing) {
        const flushed = log.slice(dataAt + 1, k).some((o) => o.op === 'flush');
        expect(flushed, `L2 write #${k}: no flush between the data at ${v} and the entry`).toBe(true);
      }
    }
  }
  return l2Writes;
}

function l2TableOffsets(image: Uint8Array): Set<number> {
  const out = new Set<number>();
  for (let i = 0; i < SIZE / (512 * CS); i++) {
    const v = u64(image, CS + i * 8);
    if (v !== 0) out.add(v);
  }
  return out;
}

async function scenario(seed: number, backing: boolean): Promise<void> {
  const logs = new Map<string, Op[]>();
  const registry = loggingRegistry(logs);
  const base = backing ? memRaw(pattern(SIZE, seed)) : undefined;
  const opts = { size: SIZE, clusterSize: CS, tableSize: 1, ...(base ? { backingFile: base, backingFmt: 'raw' } : {}) };
  const conc = `plog:pipe-c-${seed}-${Math.random()}`;
  const serial = `plog:pipe-s-${seed}-${Math.random()}`;
  await createQed(conc, opts, registry);
  await createQed(serial, opts, registry);
  const a = await openQed(conc, { registry, clock: new VirtualClock() });
  const b = await openQed(serial, { registry, clock: new VirtualClock() });

  // Writes on disjoint 512-byte sectors (so the content does not depend on the interleaving),
  // often several per cluster and per run of clusters, so requests share clusters and tables.
  const r = rng(seed);
  const busy = new Set<number>();
  const writes: { offset: number; data: Uint8Array }[] = [];
  for (let i = 0; writes.length < 120 && i < 2000; i++) {
    const start = Math.floor(r() * (SIZE / 512 - 24));
    const n = 1 + Math.floor(r() * (r() < 0.3 ? 24 : 6));
    if ([...Array(n).keys()].some((k) => busy.has(start + k))) continue;
    for (let k = 0; k < n; k++) busy.add(start + k);
    writes.push({ offset: start * 512, data: pattern(n * 512, seed * 1000 + i) });
  }

  logs.get(conc)!.length = 0;
  recStore(conc).jitter = rng(seed + 99);
  await Promise.all(writes.map((w) => a.pwrite(w.offset, w.data)));
  recStore(conc).jitter = undefined;
  for (const w of writes) await b.pwrite(w.offset, w.data);

  // Same requests, same arrival order: the same file, byte for byte (allocation order kept).
  const fileA = recStore(conc).data.subarray(0, recStore(conc).length);
  const fileB = recStore(serial).data.subarray(0, recStore(serial).length);
  expect(fileA.length).toBe(fileB.length);
  expect(firstDiff(fileA, fileB)).toBe(-1);
  expect(firstDiff(await readAll(a), await readAll(b))).toBe(-1);

  expect(qedS(a).allocPending).toBe(0);
  const l2Writes = checkOrdering(logs.get(conc)!, l2TableOffsets(fileA), backing);
  // Serially every allocating request writes its own L2 update; pipelined, updates made while
  // a table write is in flight go out together.
  const serialL2Writes = checkOrdering(logs.get(serial)!, l2TableOffsets(fileB), backing);
  expect(l2Writes).toBeLessThan(serialL2Writes);
  expect(await a.check()).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
  await a.close();
  await b.close();
}

describe('qed: pipelined allocating writes', () => {
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}, no backing file: qed-format.md §13 order at every L2 write, coalesced updates, the serial layout`, async () => {
      await scenario(seed, false);
    });
    it(`seed ${seed}, backing file: data, flush, then the entry; the serial layout`, async () => {
      await scenario(seed, true);
    });
  }

  it('close waits for L2 updates still in flight after the lock was released', async () => {
    const logs = new Map<string, Op[]>();
    const registry = loggingRegistry(logs);
    const name = `plog:pipe-close-${Math.random()}`;
    await createQed(name, { size: SIZE, clusterSize: CS, tableSize: 1 }, registry);
    const bs = await openQed(name, { registry, clock: new VirtualClock() });
    // header | L1 | data | L2 (3 * CS): the table exists, the image is dirty
    await bs.pwrite(0, new Uint8Array(512).fill(1));
    recStore(name).jitter = rng(5);
    const pending = [1, 2, 3, 4, 5, 6].map((c) => bs.pwrite(c * CS, new Uint8Array(CS).fill(c)));
    await Promise.all(pending);
    recStore(name).jitter = undefined;
    await bs.close();
    const log = logs.get(name)!;
    // The last two operations mark the image clean: flush, clean header (after every L2 write).
    const lastL2 = log.map((o, i) => (o.op === 'write' && o.offset >= 3 * CS && o.offset < 4 * CS ? i : -1)).reduce((x, y) => Math.max(x, y));
    const cleanHeader = log.findIndex((o, i) => i > lastL2 && o.op === 'write' && o.offset === 0);
    expect(cleanHeader).toBeGreaterThan(lastL2);
    expect(log.slice(lastL2 + 1, cleanHeader).some((o) => o.op === 'flush')).toBe(true);
  });
});
