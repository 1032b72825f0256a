// The qcow2 request fast paths (src/drivers/qcow2/fast.ts): reads served inside the call and
// rewrites of owned clusters mapped without a wait, only while no metadata change is under way.
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { getL2Entry, L1E_OFFSET_MASK, QCOW_OFLAG_COPIED, qcow2State, setL2Entry } from '../../src/drivers/qcow2/index.js';
import { memStoreGet } from '../../src/drivers/mem/index.js';
import { BlockDriverState, IOVector } from '../../src/index.js';
import { memName } from './block-helpers.js';

const CLUSTER = 65536;

async function openNew(size = 16 << 20, name = memName('qcow2fast')): Promise<BlockDriverState> {
  await bdrvCreate(name, { format: 'qcow2', options: { size } });
  return BlockDriverState.open(name, { format: 'qcow2' });
}

/** The whole image file of a mem: node. */
function imageBytes(name: string): Uint8Array {
  const st = memStoreGet(name.slice(4))!;
  const out = new Uint8Array(st.length);
  st.read(0, [out], st.length);
  return out;
}

function filled(n: number, byte: number): Uint8Array {
  return new Uint8Array(n).fill(byte);
}

describe('qcow2 fast paths', () => {
  it('knows its virtual size without waiting (the fast-path gate), and a closed node does not', async () => {
    const bs = await openNew(3 << 20);
    expect(bs.lengthNow()).toBe(3 << 20);
    expect(bs.knownLength()).toBe(await bs.getLength());
    await bs.close();
    expect(bs.knownLength()).toBeNull();
  });

  it('reads zeros of unallocated and zero clusters inside the call, data only through the file', async () => {
    const bs = await openNew();
    try {
      await bs.pwrite(0, filled(CLUSTER, 0x11));
      await bs.writeZeroes(CLUSTER, CLUSTER);
      // The table is cached now (the writes loaded it).
      for (const offset of [CLUSTER, 2 * CLUSTER]) {
        const buf = filled(4096, 0xff);
        expect(bs.preadvNow(offset, IOVector.from(buf))).toBe(true);
        expect(buf.every((b) => b === 0)).toBe(true);
      }
      // A mem: file has no page cache to ask: data clusters take the ordinary path.
      const data = new Uint8Array(4096);
      expect(bs.preadvNow(0, IOVector.from(data))).toBe(false);
      await bs.pread(0, data);
      expect(data.every((b) => b === 0x11)).toBe(true);
    } finally {
      await bs.close();
    }
  });

  it('steps aside while s.lock is held, and the write waits for it', async () => {
    const bs = await openNew();
    try {
      await bs.pwrite(0, filled(CLUSTER, 0x22));
      const s = qcow2State(bs);
      await s.lock.lock();
      expect(bs.preadvNow(2 * CLUSTER, IOVector.from(new Uint8Array(512)))).toBe(false);
      let done = false;
      const w = bs.pwrite(0, filled(4096, 0x33)).then(() => {
        done = true;
      });
      for (let i = 0; i < 20; i++) await Promise.resolve();
      await new Promise((r) => setTimeout(r, 10));
      expect(done).toBe(false);
      s.lock.unlock();
      await w;
      const buf = new Uint8Array(8192);
      await bs.pread(0, buf);
      expect(buf.subarray(0, 4096).every((b) => b === 0x33)).toBe(true);
      expect(buf.subarray(4096).every((b) => b === 0x22)).toBe(true);
    } finally {
      await bs.close();
    }
  });

  it('reads inside the call once s.lock is handed to a waiting planner, not before', async () => {
    const bs = await openNew();
    try {
      await bs.pwrite(0, filled(CLUSTER, 0x66));
      const s = qcow2State(bs);
      await s.lock.lock();
      // A mem: file serves no data inside the call: this read plans under the lock, queued.
      const data = new Uint8Array(4096);
      const r = bs.pread(0, data);
      for (let i = 0; i < 20; i++) await Promise.resolve();
      expect([s.lock.waiting, s.plannersQueued]).toEqual([1, 1]);
      // Held by someone who may be changing metadata: a zero cluster is not read now.
      expect(bs.preadvNow(2 * CLUSTER, IOVector.from(new Uint8Array(512)))).toBe(false);
      s.lock.unlock();
      // Handed to the planner, which has not run yet: nothing is being changed.
      expect(s.lock.isLocked).toBe(true);
      const zeros = filled(512, 0xff);
      expect(bs.preadvNow(2 * CLUSTER, IOVector.from(zeros))).toBe(true);
      expect(zeros.every((b) => b === 0)).toBe(true);
      await r;
      expect(data.every((b) => b === 0x66)).toBe(true);
      expect(s.plannersQueued).toBe(0);
    } finally {
      await bs.close();
    }
  });

  it('allocates and links without a wait when the tables are cached, laid out as the ordinary path does', async () => {
    // The same writes twice: once free to take the fast path, once made to take the ordinary
    // one (a debug listener on the file turns the fast paths off).
    const images: Uint8Array[] = [];
    for (const fast of [true, false]) {
      const name = memName('qcow2alloc');
      const bs = await openNew(64 << 20, name);
      try {
        if (!fast) bs.file!.events.on('debug', () => undefined);
        await bs.pwrite(0, filled(CLUSTER, 0x01));
        const s = qcow2State(bs);
        const p = bs.pwrite(3 * CLUSTER + 512, filled(4096, 0x02));
        // Mapped synchronously: in flight, allocating, before the caller yields once.
        expect(s.inFlight.size).toBe(fast ? 1 : 0);
        await p;
        expect(s.inFlight.size).toBe(0);
        // Several at once (depth 16 in the bench): clusters handed out in request order.
        await Promise.all([1, 5, 2, 7, 6].map((i) => bs.pwrite(i * CLUSTER, filled(i === 5 ? 2 * CLUSTER : 4096, 0x10 + i))));
        const buf = new Uint8Array(8 * CLUSTER);
        await bs.pread(0, buf);
        expect(buf[0]).toBe(0x01);
        expect([buf[3 * CLUSTER + 511], buf[3 * CLUSTER + 512], buf[3 * CLUSTER + 512 + 4096]]).toEqual([0, 0x02, 0]);
        // 6 overlaps 5, issued after it: it waits for that allocation and lands over it.
        expect([buf[CLUSTER], buf[5 * CLUSTER], buf[6 * CLUSTER + 4095], buf[6 * CLUSTER + 4096]]).toEqual([0x11, 0x15, 0x16, 0x15]);
        expect((await bs.check()).corruptions).toBe(0);
      } finally {
        await bs.close();
      }
      images.push(imageBytes(name));
    }
    expect(images[0].length).toBe(images[1].length);
    expect(Buffer.compare(images[0], images[1])).toBe(0);
  });

  it('rewrites an owned cluster in place, registered in flight while its data goes out', async () => {
    const bs = await openNew();
    try {
      await bs.pwrite(0, filled(2 * CLUSTER, 0x44));
      const s = qcow2State(bs);
      const l2 = Number(s.l1Table[0] & L1E_OFFSET_MASK);
      const before = getL2Entry(s, s.l2Cache.peek(l2)!, 0);
      const p = bs.pwrite(4096, filled(CLUSTER, 0x55));
      // Mapped synchronously: in flight before the caller yields once.
      expect(s.inFlight.size).toBe(1);
      const [r] = [...s.inFlight];
      expect([r.start, r.end, r.allocating]).toEqual([0, 2 * CLUSTER, false]);
      await p;
      expect(s.inFlight.size).toBe(0);
      expect(getL2Entry(s, s.l2Cache.peek(l2)!, 0)).toBe(before);
      const buf = new Uint8Array(2 * CLUSTER);
      await bs.pread(0, buf);
      expect(buf.subarray(0, 4096).every((b) => b === 0x44)).toBe(true);
      expect(buf.subarray(4096, 4096 + CLUSTER).every((b) => b === 0x55)).toBe(true);
      expect(buf.subarray(4096 + CLUSTER).every((b) => b === 0x44)).toBe(true);
    } finally {
      await bs.close();
    }
  });

  it('leaves rewrites of shared, zero-flagged or partly unallocated clusters to the ordinary path', async () => {
    const bs = await openNew();
    try {
      await bs.pwrite(0, filled(4 * CLUSTER, 0x44));
      const s = qcow2State(bs);
      const l2 = Number(s.l1Table[0] & L1E_OFFSET_MASK);
      const table = s.l2Cache.peek(l2)!;
      /** Is a rewrite of [offset, +bytes) mapped inside the call (the fast path)? */
      const mappedAtOnce = async (offset: number, bytes: number): Promise<boolean> => {
        const p = bs.pwrite(offset, filled(bytes, 0x66));
        const now = s.inFlight.size > 0;
        await p;
        return now;
      };
      expect(await mappedAtOnce(0, 4096)).toBe(true);
      // Cluster 1 without COPIED (as if shared with a snapshot): the ordinary path copies it.
      setL2Entry(s, table, 1, getL2Entry(s, table, 1) & ~QCOW_OFLAG_COPIED);
      // The same when it is the second cluster a rewrite covers (the copy is then COPIED).
      expect(await mappedAtOnce(CLUSTER - 4096, 8192)).toBe(false);
      setL2Entry(s, table, 1, getL2Entry(s, table, 1) & ~QCOW_OFLAG_COPIED);
      expect(await mappedAtOnce(CLUSTER, 4096)).toBe(false);
      // Cluster 2 flagged zero over its allocation (zero-alloc): the flag must go.
      setL2Entry(s, table, 2, getL2Entry(s, table, 2) | 1n);
      expect(await mappedAtOnce(2 * CLUSTER, 4096)).toBe(false);
      // Cluster 3 owned, cluster 4 unallocated: one write over both is no rewrite.
      expect(await mappedAtOnce(3 * CLUSTER + 4096, CLUSTER)).toBe(false);
      const buf = new Uint8Array(5 * CLUSTER);
      await bs.pread(0, buf);
      const at = (from: number, n: number, byte: number): boolean => buf.subarray(from, from + n).every((b) => b === byte);
      expect(at(0, 4096, 0x66) && at(4096, CLUSTER - 8192, 0x44) && at(CLUSTER - 4096, 4096, 0x66)).toBe(true);
      expect(at(CLUSTER, 4096, 0x66) && at(CLUSTER + 4096, CLUSTER - 4096, 0x44)).toBe(true);
      // The zero flag read the rest of cluster 2 as zeros, and the write kept them.
      expect(at(2 * CLUSTER, 4096, 0x66) && at(2 * CLUSTER + 4096, CLUSTER - 4096, 0)).toBe(true);
      expect(at(3 * CLUSTER, 4096, 0x44) && at(3 * CLUSTER + 4096, CLUSTER, 0x66) && at(4 * CLUSTER + 4096, CLUSTER - 4096, 0)).toBe(true);
    } finally {
      await bs.close();
    }
  });
});
