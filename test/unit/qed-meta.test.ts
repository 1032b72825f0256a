import { describe, expect, it } from 'vitest';
import { BlockDriverState, memStoreRead, memStoreWrite, VirtualClock } from '../../src/index.js';
import { QEDTable } from '../../src/drivers/qed/table.js';
import {
  createQed,
  memName,
  firstDiff,
  newMemQed,
  openQed,
  pattern,
  qedS,
  recRegistry,
  recStore,
  setU64,
  storedFeatures,
  u64,
} from './qed-helpers.js';

const CS = 4096;

async function settle(bs: BlockDriverState): Promise<void> {
  const s = qedS(bs);
  while (s.timerTask) await s.timerTask;
}

describe('qed: NEED_CHECK and its timer', () => {
  it('is set (durably) by the first allocating write and cleared 5 s after the last one', async () => {
    const clock = new VirtualClock();
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 }, { clock });
    expect(storedFeatures(name)).toBe(0n);
    await bs.pwrite(0, new Uint8Array(512).fill(1));
    expect(storedFeatures(name)).toBe(2n);
    expect((await bs.getInfo()).isDirty).toBe(true);
    clock.advance(3000);
    await settle(bs);
    // Another allocating write restarts the 5 s.
    await bs.pwrite(CS * 3, new Uint8Array(512).fill(1));
    clock.advance(4999);
    await settle(bs);
    expect(storedFeatures(name)).toBe(2n);
    clock.advance(1);
    await settle(bs);
    expect(storedFeatures(name)).toBe(0n);
    expect((await bs.getInfo()).isDirty).toBe(false);
    // In-place writes do not dirty the image.
    await bs.pwrite(0, new Uint8Array(512).fill(2));
    expect(storedFeatures(name)).toBe(0n);
    await bs.close();
  });

  it('timer sequence: flush, header sector, flush', async () => {
    const clock = new VirtualClock();
    const registry = recRegistry();
    const name = `rec:timer-${Math.random()}`;
    await createQed(name, { size: 1 << 20, clusterSize: CS, tableSize: 1 }, registry);
    const bs = await openQed(name, { registry, clock });
    await bs.pwrite(0, new Uint8Array(512));
    const st = recStore(name);
    st.log.length = 0;
    clock.advance(5000);
    await settle(bs);
    expect(st.log.map((o) => (o.op === 'flush' ? 'F' : `${o.op[0]}@${o.offset}+${o.len}`))).toEqual([
      'F',
      'r@0+512',
      'w@0+512',
      'F',
    ]);
    await bs.close();
  });

  it('is cleared at close, and a write failure while clearing keeps memory truthful', async () => {
    const clock = new VirtualClock();
    const registry = recRegistry();
    const name = `rec:failclear-${Math.random()}`;
    await createQed(name, { size: 1 << 20, clusterSize: CS, tableSize: 1 }, registry);
    const bs = await openQed(name, { registry, clock });
    await bs.pwrite(0, new Uint8Array(512));
    recStore(name).failWrites = true;
    clock.advance(5000);
    await settle(bs);
    expect((await bs.getInfo()).isDirty).toBe(true);
    recStore(name).failWrites = false;
    await bs.close();
    const f = recStore(name).data;
    expect(f[16]).toBe(0);
  });

  it('a dirty image is repaired at a read-write open and left untouched by a read-only one', async () => {
    const clock = new VirtualClock();
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 }, { clock });
    await bs.pwrite(0, pattern(2 * CS, 1));
    // "Crash": take the image as it is on disk now (dirty), then add a table entry that
    // points past EOF, as a crash between L2 update and data write could leave.
    const crashed = memStoreRead(name);
    await bs.close();
    expect(crashed[16]).toBe(2);
    const l2 = u64(crashed, CS);
    setU64(crashed, l2 + 16, 64 * CS);
    const img = `${name}-crashed`;
    memStoreWrite(img, crashed);

    const ro = await openQed(img, { readOnly: true, clock });
    expect((await ro.getInfo()).isDirty).toBe(true);
    const got = new Uint8Array(2 * CS);
    await ro.pread(0, got);
    expect(firstDiff(got, pattern(2 * CS, 1))).toBe(-1);
    await expect(ro.pread(2 * CS, new Uint8Array(512))).rejects.toMatchObject({ code: 'EINVAL' });
    await ro.close();
    expect(firstDiff(memStoreRead(img), crashed)).toBe(-1);

    // Opened for check: no automatic repair either.
    const chk = await openQed(img, { check: true, clock });
    expect(await chk.check()).toMatchObject({ corruptions: 1, leaks: 0 });
    await chk.close();
    expect(memStoreRead(img)[16]).toBe(2);

    const rw = await openQed(img, { clock });
    expect((await rw.getInfo()).isDirty).toBe(false);
    expect(await rw.isAllocated(2 * CS, CS)).toMatchObject({ allocated: false });
    expect(await rw.check()).toMatchObject({ corruptions: 0, leaks: 0 });
    await rw.close();
    const fixed = memStoreRead(img);
    expect(fixed[16]).toBe(0);
    expect(u64(fixed, l2 + 16)).toBe(0);
  });

  it('never marks an image clean while unfixable corruption remains (qed-format.md §17.5)', async () => {
    const clock = new VirtualClock();
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 }, { clock });
    await bs.pwrite(0, pattern(2 * CS, 1));
    const crashed = memStoreRead(name);
    await bs.close();
    const l2 = u64(crashed, CS);
    setU64(crashed, l2 + 8, u64(crashed, l2)); // two entries, one cluster
    memStoreWrite(name, crashed);
    const rw = await openQed(name, { clock });
    expect((await rw.getInfo()).isDirty).toBe(true);
    await rw.pwrite(10 * CS, new Uint8Array(512));
    clock.advance(10000);
    await settle(rw);
    expect((await rw.getInfo()).isDirty).toBe(true);
    await rw.close();
    expect(storedFeatures(name) & 2n).toBe(2n);
  });
});

describe('qed: header features at open', () => {
  it('refuses unknown incompatible features, naming them', async () => {
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 });
    await bs.close();
    const f = memStoreRead(name);
    setU64(f, 16, 0x30);
    memStoreWrite(name, f);
    await expect(openQed(name)).rejects.toMatchObject({ code: 'ENOTSUP', message: expect.stringContaining('Unsupported QED features: 30') as unknown });
  });

  it('clears unknown autoclear bits on read-write opens only', async () => {
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 });
    await bs.close();
    const f = memStoreRead(name);
    setU64(f, 32, 0x8000);
    memStoreWrite(name, f);
    const ro = await openQed(name, { readOnly: true });
    await ro.close();
    expect(u64(memStoreRead(name), 32)).toBe(0x8000);
    const rw = await openQed(name);
    expect(u64(memStoreRead(name), 32)).toBe(0);
    await rw.close();
  });
});

describe('qed: truncate, backing file change, cache invalidation', () => {
  it('grows; refuses shrinking and bad sizes; rolls back when the header write fails', async () => {
    const registry = recRegistry();
    const name = `rec:trunc-${Math.random()}`;
    await createQed(name, { size: 1 << 20, clusterSize: CS, tableSize: 1 }, registry);
    const bs = await openQed(name, { registry });
    await bs.pwrite(0, new Uint8Array(512).fill(7));
    await bs.truncate(4 << 20);
    expect(await bs.getLength()).toBe(4 << 20);
    expect(u64(recStore(name).data, 48)).toBe(4 << 20);
    const tail = new Uint8Array(512);
    await bs.pread((4 << 20) - 512, tail);
    expect(tail.every((x) => x === 0)).toBe(true);
    await bs.truncate(4 << 20); // same size: fine
    await expect(bs.truncate(1 << 20)).rejects.toMatchObject({ code: 'ENOTSUP', message: 'Shrinking images is currently not supported' });
    await expect(bs.truncate((4 << 20) + 100)).rejects.toMatchObject({ code: 'EINVAL', message: 'Invalid image size specified' });
    await expect(bs.truncate(2 * 2 ** 30)).rejects.toMatchObject({ code: 'EINVAL', message: 'Invalid image size specified' });
    recStore(name).failWrites = true;
    await expect(bs.truncate(8 << 20)).rejects.toMatchObject({ code: 'EIO' });
    recStore(name).failWrites = false;
    expect(await bs.getLength()).toBe(4 << 20);
    await bs.close();
  });

  it('changes, removes and refuses backing files as QEMU does', async () => {
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 });
    await bs.changeBackingFile('base.raw', 'raw');
    let f = memStoreRead(name);
    expect(f[16]).toBe(0x05);
    expect(u64(f, 56) % 2 ** 32).toBe(64);
    expect(Buffer.from(f.subarray(64, 72)).toString()).toBe('base.raw');
    expect(bs.backingFile).toBe('base.raw');
    await bs.changeBackingFile('b.qed', 'qed');
    f = memStoreRead(name);
    expect(f[16]).toBe(0x01);
    await bs.changeBackingFile(null, null);
    f = memStoreRead(name);
    expect(f[16]).toBe(0x00);
    expect(new DataView(f.buffer).getUint32(56, true)).toBe(64);
    expect(new DataView(f.buffer).getUint32(60, true)).toBe(0);
    expect(Buffer.from(f.subarray(64, 69)).toString()).toBe('b.qed'); // left in place, as QEMU does
    const before = memStoreRead(name);
    await expect(bs.changeBackingFile('x'.repeat(CS - 63), 'raw')).rejects.toMatchObject({
      code: 'ENOSPC',
      message: 'No space left in the file header',
    });
    expect(firstDiff(memStoreRead(name), before)).toBe(-1);
    await bs.changeBackingFile('x'.repeat(CS - 64), 'raw');
    await bs.close();

    // Unknown compat features: the space after the header may be theirs.
    const g = memStoreRead(name);
    setU64(g, 24, 0x100);
    memStoreWrite(name, g);
    const again = await openQed(name, { noBacking: true });
    await expect(again.changeBackingFile('y', 'raw')).rejects.toMatchObject({ code: 'ENOTSUP' });
    await again.changeBackingFile(null, null); // removing is allowed
    await again.close();
    expect(u64(memStoreRead(name), 24)).toBe(0x100); // preserved
  });

  it('invalidateCache rereads everything from the image', async () => {
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 });
    await bs.pwrite(0, new Uint8Array(CS).fill(1));
    await bs.flush();
    const other = await openQed(name, { clock: new VirtualClock() });
    // Another writer changes the image behind our back.
    await other.pwrite(0, new Uint8Array(CS).fill(2));
    await other.pwrite(CS * 5, new Uint8Array(CS).fill(3));
    await other.truncate(2 << 20);
    await other.close();
    const got = new Uint8Array(CS);
    await bs.pread(CS * 5, got);
    expect(got[0]).toBe(0); // stale L1/L2 in memory
    await bs.invalidateCache();
    await bs.pread(CS * 5, got);
    expect(got[0]).toBe(3);
    await bs.pread(0, got);
    expect(got[0]).toBe(2);
    expect(await bs.getLength()).toBe(2 << 20);
    await bs.close();
  });

  it('makeEmpty is not supported', async () => {
    const { bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 });
    await expect(bs.makeEmpty()).rejects.toMatchObject({ code: 'ENOTSUP' });
    expect(await bs.getInfo()).toEqual({ clusterSize: CS, isDirty: false });
    await bs.close();
  });
});

describe('qed: failure handling and events', () => {
  it('a failed allocating write gives its clusters back and leaves tables as they were', async () => {
    const registry = recRegistry();
    const name = `rec:fail-${Math.random()}`;
    await createQed(name, { size: 1 << 20, clusterSize: CS, tableSize: 1 }, registry);
    const bs = await openQed(name, { registry, clock: new VirtualClock() });
    await bs.pwrite(0, new Uint8Array(CS).fill(1)); // L2 exists from here on
    const st = recStore(name);
    const lenBefore = st.length;
    st.failWrites = true;
    await expect(bs.pwrite(5 * CS, new Uint8Array(CS).fill(2))).rejects.toMatchObject({ code: 'EIO' });
    st.failWrites = false;
    expect(await bs.isAllocated(5 * CS, CS)).toMatchObject({ allocated: false });
    await bs.pwrite(6 * CS, new Uint8Array(CS).fill(3));
    // The reserved cluster was reused: no hole, no leak.
    expect(st.length).toBe(lenBefore + CS);
    expect(await bs.check()).toMatchObject({ corruptions: 0, leaks: 0 });

    // A failing L2 sector write: the in-memory entries are restored.
    // The data write succeeds, the L2 sector write (the second write) fails.
    let writes = 0;
    st.failWhen = () => ++writes === 2;
    await expect(bs.pwrite(8 * CS, new Uint8Array(CS).fill(4))).rejects.toMatchObject({ code: 'EIO' });
    st.failWhen = undefined;
    expect(await bs.isAllocated(8 * CS, CS)).toMatchObject({ allocated: false });
    const got = new Uint8Array(CS);
    await bs.pread(8 * CS, got);
    expect(got.every((x) => x === 0)).toBe(true);
    await bs.close();
  });

  it('inactive opens write nothing at open (no autoclear reset, no repair)', async () => {
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 });
    await bs.close();
    const f = memStoreRead(name);
    setU64(f, 32, 0x10);
    setU64(f, 16, 2);
    memStoreWrite(name, f);
    const ina = await openQed(name, { inactive: true });
    expect((await ina.getInfo()).isDirty).toBe(true);
    await ina.close();
    expect(firstDiff(memStoreRead(name), f)).toBe(-1);
  });

  it('emits trace points and debug events at QEMU’s places', async () => {
    const backing = memName('b');
    memStoreWrite(backing, new Uint8Array(8 * CS).fill(1));
    const { bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1, backingFile: backing, backingFmt: 'raw' });
    const traces: string[] = [];
    const debug: string[] = [];
    bs.events.on('trace', (e) => traces.push(e.name));
    bs.file!.events.on('debug', (e) => debug.push(e));
    await bs.pwrite(512, new Uint8Array(512));
    await bs.pread(0, new Uint8Array(CS));
    await bs.pread(4 * CS, new Uint8Array(512));
    // QED's own events, and the generic layer's pwritev/pwritev_done around every write that
    // reaches the file node (QEMU's bdrv_aligned_pwritev): the one vectored COW+data write,
    // then each table write. The new L2 table is flushed through the QED node (QEMU's
    // bdrv_co_flush(s->bs)), which announces flush_to_os on the file node before L1 links it;
    // no flush_to_disk yet, since no write has completed on the QED node itself.
    expect(debug).toEqual([
      'read_backing_aio',
      'read_backing_aio',
      'cow_write',
      'write_aio',
      'pwritev',
      'pwritev_done',
      'l2_update',
      'pwritev',
      'pwritev_done',
      'flush_to_os',
      'l1_update',
      'pwritev',
      'pwritev_done',
      'read_aio',
      'read_backing_aio',
    ]);
    for (const t of ['qedAioSetup', 'qedAioNextIo', 'qedAioWriteData', 'qedAioWritePrefill', 'qedAioWritePostfill', 'qedAioWriteMain', 'qedWriteTable', 'qedAioReadData', 'qedAioComplete']) {
      expect(traces).toContain(t);
    }
    await bs.close();
  });
});

describe('qed: QEDTable.nextNonZero', () => {
  it('finds every entry that is not 0, whichever of its words is set', () => {
    const t = new QEDTable(64);
    expect(t.nextNonZero(0)).toBe(64);
    t.set(3, 1); // a zero cluster is not 0
    t.set(17, 2 ** 32); // the high word only
    t.set(18, 0x10000);
    t.set(63, 2 ** 40 + 7);
    const found: number[] = [];
    for (let i = t.nextNonZero(0); i < t.nelems; i = t.nextNonZero(i + 1)) found.push(i);
    expect(found).toEqual([3, 17, 18, 63]);
    expect(t.nextNonZero(64)).toBe(64);
  });
});
