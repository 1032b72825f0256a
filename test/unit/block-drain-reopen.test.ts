// The generic layer's drain and in-place reopen: drain waits for requests and lets a driver
// settle (QED clears NEED_CHECK at once), reopen switches read-only / cache.no-flush on the
// same nodes, reopening a protocol's storage when its read-only mode changes, and leaves
// everything as it was when it fails.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  BlockDriverRegistry,
  BlockDriverState,
  BlockError,
  VirtualClock,
  blkverifyDriver,
  fileDriver,
  isBlockError,
  memDriver,
  memStoreCreate,
  memStoreRead,
  rawDriver,
  type BlockDriver,
} from '../../src/index.js';
import { qedDriver } from '../../src/drivers/qed/index.js';
import { createQed, memName, newMemQed, openQed, pattern, qedS, recRegistry, recStore, storedFeatures } from './qed-helpers.js';

const CS = 4096;

describe('drain', () => {
  it('runs QED\'s pending need-check job now: the image is clean on disk without the 5 s', async () => {
    const clock = new VirtualClock();
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 }, { clock });
    await bs.pwrite(0, pattern(512, 1));
    expect(storedFeatures(name)).toBe(2n);
    expect(qedS(bs).needCheckTimer?.pending).toBe(true);
    await bs.drain();
    expect(storedFeatures(name)).toBe(0n);
    expect(qedS(bs).needCheckTimer?.pending).toBe(false);
    expect((await bs.getInfo()).isDirty).toBe(false);
    // The node stays usable: the next allocating write dirties the image again.
    await bs.pwrite(CS * 5, pattern(512, 2));
    expect(storedFeatures(name)).toBe(2n);
    await bs.close();
    expect(storedFeatures(name)).toBe(0n);
  });

  it('waits for the requests in flight before the driver settles', async () => {
    const clock = new VirtualClock();
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 }, { clock });
    let done = false;
    const w = bs.pwrite(CS * 3, pattern(CS, 3)).then(() => {
      done = true;
    });
    await bs.drain();
    expect(done).toBe(true);
    await w;
    // The write's allocation re-armed the timer; the drain fired it after the write ended.
    expect(storedFeatures(name)).toBe(0n);
    const back = new Uint8Array(CS);
    await bs.pread(CS * 3, back);
    expect(back).toEqual(pattern(CS, 3));
    await bs.close();
  });

  it('does no I/O on a clean image, and nothing on a closed node', async () => {
    const registry = recRegistry();
    const name = `rec:drain-${Math.random()}`;
    await createQed(name, { size: 1 << 20, clusterSize: CS, tableSize: 1 }, registry);
    const bs = await openQed(name, { registry, clock: new VirtualClock() });
    const st = recStore(name);
    st.log.length = 0;
    await bs.drain();
    expect(st.log).toEqual([]);
    await bs.close();
    await bs.drain();
  });

  it('a failing header write while draining leaves the bit set in memory and on disk', async () => {
    const registry = recRegistry();
    const name = `rec:drainfail-${Math.random()}`;
    await createQed(name, { size: 1 << 20, clusterSize: CS, tableSize: 1 }, registry);
    const bs = await openQed(name, { registry, clock: new VirtualClock() });
    await bs.pwrite(0, new Uint8Array(512));
    recStore(name).failWrites = true;
    await bs.drain();
    expect((await bs.getInfo()).isDirty).toBe(true);
    expect(recStore(name).data[16]).toBe(2);
    recStore(name).failWrites = false;
    await bs.close();
    expect(recStore(name).data[16]).toBe(0);
  });
});

describe('reopen in place', () => {
  it('keeps every node and its state; read-only refuses writes, read-write takes them again', async () => {
    const clock = new VirtualClock();
    const { name, bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 }, { clock });
    await bs.pwrite(0, pattern(CS, 1));
    const file = bs.file;
    const state = qedS(bs);
    await bs.reopen({ readOnly: true });
    // Drained first: the dirty bit went before the mode changed.
    expect(storedFeatures(name)).toBe(0n);
    expect(bs.file).toBe(file);
    expect(qedS(bs)).toBe(state);
    expect(bs.readOnly).toBe(true);
    expect(bs.file?.readOnly).toBe(true);
    await expect(bs.pwrite(0, pattern(CS, 2))).rejects.toMatchObject({ code: 'EACCES' });
    const back = new Uint8Array(CS);
    await bs.pread(0, back);
    expect(back).toEqual(pattern(CS, 1));
    await bs.reopen({ readOnly: false });
    expect(bs.readOnly).toBe(false);
    expect(bs.file?.readOnly).toBe(false);
    await bs.pwrite(CS, pattern(CS, 3));
    expect(storedFeatures(name)).toBe(2n);
    await bs.close();
    expect(storedFeatures(name)).toBe(0n);
  });

  it('switches cache.no-flush on the whole file chain, leaving what is not asked', async () => {
    const { bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 }, { clock: new VirtualClock() });
    await bs.reopen({ noFlush: true });
    expect(bs.openOptions.noFlush).toBe(true);
    expect(bs.file?.openOptions.noFlush).toBe(true);
    expect(bs.readOnly).toBe(false);
    await bs.reopen({});
    expect(bs.file?.openOptions.noFlush).toBe(true);
    await bs.close();
  });

  describe('a protocol reopens its storage in the new mode', () => {
    const dir = mkdtempSync(join(tmpdir(), 'blk-reopen-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    const registry = new BlockDriverRegistry().register(fileDriver).register(rawDriver);

    it('a file opened read-only becomes writable, and back', async () => {
      const path = join(dir, 'a.raw');
      writeFileSync(path, new Uint8Array(8192));
      const bs = await BlockDriverState.open(path, { format: 'raw', readOnly: true, registry });
      const file = bs.file;
      await bs.reopen({ readOnly: false });
      expect(bs.file).toBe(file);
      await bs.pwrite(512, new Uint8Array(512).fill(7));
      await bs.flush();
      expect(readFileSync(path)[512]).toBe(7);
      await bs.reopen({ readOnly: true });
      await expect(bs.pwrite(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'EACCES' });
      const back = new Uint8Array(512);
      await bs.pread(512, back);
      expect(back[0]).toBe(7);
      await bs.close();
    });
  });

  it('a protocol that cannot open its storage read-write leaves the image as it was', async () => {
    let refuse = true;
    const picky: BlockDriver = {
      ...memDriver,
      async open(bs, options) {
        if (refuse && options.readOnly !== true) throw new BlockError('EACCES', `Could not open '${bs.filename}': Permission denied`);
        await memDriver.open?.(bs, options);
      },
    };
    const registry = new BlockDriverRegistry().register(picky).register(rawDriver).register(qedDriver);
    const name = memName('picky');
    memStoreCreate(name, 0);
    refuse = false;
    await createQed(name, { size: 1 << 20, clusterSize: CS, tableSize: 1 }, registry);
    const w = await openQed(name, { registry, clock: new VirtualClock() });
    await w.pwrite(0, pattern(CS, 4));
    await w.close();
    refuse = true;
    const bs = await openQed(name, { registry, readOnly: true, clock: new VirtualClock() });
    const err = await bs.reopen({ readOnly: false }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isBlockError(err) && err.code).toBe('EACCES');
    expect(bs.readOnly).toBe(true);
    expect(bs.file?.readOnly).toBe(true);
    const back = new Uint8Array(CS);
    await bs.pread(0, back);
    expect(back).toEqual(pattern(CS, 4));
    await bs.close();
  });

  it('a failed flush is reported as reopen_flush and nothing changes', async () => {
    const registry = recRegistry();
    const name = `rec:reopenflush-${Math.random()}`;
    await createQed(name, { size: 1 << 20, clusterSize: CS, tableSize: 1 }, registry);
    const bs = await openQed(name, { registry, clock: new VirtualClock() });
    await bs.pwrite(0, new Uint8Array(512).fill(1));
    const flushFail: { on: boolean } = { on: true };
    const file = bs.file;
    if (!file) throw new Error('no file');
    const orig = file.flush.bind(file);
    file.flush = async () => {
      if (flushFail.on) throw new BlockError('EIO', 'flush failed');
      await orig();
    };
    const err = await bs.reopen({ readOnly: true }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isBlockError(err) && err.op).toBe('reopen_flush');
    expect(bs.readOnly).toBe(false);
    flushFail.on = false;
    await bs.pwrite(512, new Uint8Array(512).fill(2));
    await bs.close();
  });

  it('blkverify reopens its test image with its reference', async () => {
    const registry = new BlockDriverRegistry().register(memDriver).register(rawDriver).register(blkverifyDriver);
    const ref = memName('ref');
    const img = memName('img');
    memStoreCreate(ref, 4096);
    memStoreCreate(img, 4096);
    const bs = await BlockDriverState.open(`blkverify:${ref}:${img}`, {
      format: 'raw',
      readOnly: true,
      registry,
      driverOptions: { testFormat: 'raw' },
    });
    await bs.reopen({ readOnly: false });
    await bs.pwrite(0, new Uint8Array(512).fill(9));
    await bs.close();
    expect(memStoreRead(ref)[0]).toBe(9);
    expect(memStoreRead(img)[0]).toBe(9);
  });

  it('refuses a closed node', async () => {
    const { bs } = await newMemQed({ size: 1 << 20, clusterSize: CS, tableSize: 1 }, { clock: new VirtualClock() });
    await bs.close();
    await expect(bs.reopen({ readOnly: true })).rejects.toMatchObject({ code: 'EBADF' });
  });
});
