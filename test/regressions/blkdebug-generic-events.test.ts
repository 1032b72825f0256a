/**
 * blkdebug events announced by the generic layer (src/block/node.ts), as QEMU 7.2's block layer
 * does on the node a request reaches:
 * - every write reaching a node (bdrv_aligned_pwritev): `pwritev` before the driver write (after
 *   any RMW reads) and `pwritev_done` after it, even when it failed; the aligned middle of a
 *   zero write announces `pwritev_zero` instead of `pwritev`;
 * - a flush (bdrv_co_flush) announces on the node's file child `flush_to_os`, then
 *   `flush_to_disk` only when the node is not cache=unsafe and something was written (write,
 *   zero write, discard, truncate) since its last successful flush; a read-only node announces
 *   nothing. Only then is the flush "due to disk" (BlockDriverState.flushToDiskDue), and only
 *   then does blkdebug check its flush rules, as QEMU runs blkdebug's flush hook.
 * So a blkdebug rule on those events fails requests exactly where qemu-io 7.2 fails them (the
 * reference runs below). The write fast paths (and native AIO writes) announce nothing and are
 * taken only when nothing watches the node's debug events. Found by the blkdebug interop
 * comparison (test/unit/blkdebug-interop.test.ts).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockDriverState, BlockError, IOVector, bdrvCreate } from '../../src/index.js';
import { memStoreDelete, memStoreWrite } from '../../src/drivers/mem/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from '../interop/qemu.js';

/** Debug events announced on `node` while `fn` runs. */
async function eventsOn(node: BlockDriverState, fn: () => Promise<void>): Promise<string[]> {
  const seen: string[] = [];
  const listener = (e: string): void => {
    seen.push(e);
  };
  node.events.on('debug', listener);
  try {
    await fn();
  } finally {
    node.events.off('debug', listener);
  }
  return seen;
}

async function writeThroughBlkdebug(name: string, config: string, flush = false): Promise<BlockError | null> {
  await bdrvCreate(`mem:${name}`, { format: 'qed', options: { size: 1 << 20, clusterSize: 4096 } });
  const bs = await BlockDriverState.open(`blkdebug::mem:${name}`, { format: 'qed', driverOptions: { configText: config } });
  try {
    await bs.pwrite(0, new Uint8Array(4096).fill(0xab));
    if (flush) await bs.flush();
    return null;
  } catch (e) {
    if (e instanceof BlockError) return e;
    throw e;
  } finally {
    await bs.close().catch(() => undefined);
    memStoreDelete(name);
  }
}

describe('blkdebug events announced by the generic layer (QEMU 7.2 bdrv_aligned_pwritev / bdrv_co_flush)', () => {
  it('a rule on "pwritev" fails the write (QEMU: ENOSPC)', async () => {
    const err = await writeThroughBlkdebug('ev-pwritev', '[inject-error]\nevent = "pwritev"\nerrno = "28"\nonce = "on"\n');
    expect(err?.code).toBe('ENOSPC');
  });

  it('a rule on "pwritev_done" fails the allocating write (QEMU: ENOSPC)', async () => {
    const err = await writeThroughBlkdebug('ev-pwdone', '[inject-error]\nevent = "pwritev_done"\nerrno = "28"\nonce = "on"\n');
    expect(err?.code).toBe('ENOSPC');
  });

  it('a rule on "flush_to_os" fails the allocating write (QEMU: EIO)', async () => {
    const err = await writeThroughBlkdebug('ev-flushos', '[inject-error]\nevent = "flush_to_os"\nerrno = "5"\n', true);
    expect(err?.code).toBe('EIO');
  });
});

describe('where the generic layer announces them', () => {
  it('a write reaching a node: pwritev then pwritev_done, after the RMW steps', async () => {
    // QED: 512-byte request alignment, so an unaligned write is padded by the generic layer.
    await bdrvCreate('mem:ev-rw', { format: 'qed', options: { size: 1 << 20, clusterSize: 4096 } });
    const bs = await BlockDriverState.open('mem:ev-rw', { format: 'qed' });
    try {
      expect(await eventsOn(bs, () => bs.pwrite(512, new Uint8Array(1024)))).toEqual(['pwritev', 'pwritev_done']);
      expect(await eventsOn(bs, () => bs.pwrite(10, new Uint8Array(10)))).toEqual([
        'pwritev_rmw_head',
        'pwritev_rmw_after_head',
        'pwritev',
        'pwritev_done',
      ]);
      // The format's write reaches its file child, which announces its own pair after QED's
      // write_aio (an already allocated cluster: no table write).
      expect(await eventsOn(bs.file!, () => bs.pwrite(0, new Uint8Array(512)))).toEqual([
        'write_aio',
        'pwritev',
        'pwritev_done',
      ]);
      // Reads announce nothing.
      expect(await eventsOn(bs, () => bs.pread(0, new Uint8Array(512)))).toEqual([]);
    } finally {
      await bs.close();
      memStoreDelete('ev-rw');
    }
  });

  it('a zero write: pwritev_zero for the aligned middle, pwritev for the padded head and tail', async () => {
    await bdrvCreate('mem:ev-zero', { format: 'qed', options: { size: 1 << 20, clusterSize: 4096 } });
    const bs = await BlockDriverState.open('mem:ev-zero', { format: 'qed' });
    try {
      expect(await eventsOn(bs, () => bs.writeZeroes(1024, 2048))).toEqual(['pwritev_zero', 'pwritev_done']);
      const ev = await eventsOn(bs, () => bs.writeZeroes(100, 1000));
      expect(ev.filter((e) => !e.startsWith('pwritev_rmw'))).toEqual([
        'pwritev',
        'pwritev_done',
        'pwritev_zero',
        'pwritev_done',
        'pwritev',
        'pwritev_done',
      ]);
    } finally {
      await bs.close();
      memStoreDelete('ev-zero');
    }
  });

  it('a failed write still announces pwritev_done', async () => {
    await bdrvCreate('mem:ev-fail', { format: 'qed', options: { size: 1 << 20, clusterSize: 4096 } });
    const bs = await BlockDriverState.open('blkdebug::mem:ev-fail', {
      format: 'qed',
      driverOptions: { configText: '[inject-error]\nevent = "pwritev"\nerrno = "5"\nonce = "on"\n' },
    });
    try {
      const ev = await eventsOn(bs.file!, () => bs.pwrite(0, new Uint8Array(4096)).catch(() => undefined));
      expect(ev.slice(0, 2)).toEqual(['pwritev', 'pwritev_done']);
    } finally {
      await bs.close().catch(() => undefined);
      memStoreDelete('ev-fail');
    }
  });

  it('an AIO write on a watched node leaves the native path and announces the pair', async () => {
    await bdrvCreate('mem:ev-aio', { format: 'qed', options: { size: 1 << 20, clusterSize: 4096 } });
    const bs = await BlockDriverState.open('mem:ev-aio', { format: 'qed' });
    try {
      const ev = await eventsOn(bs, () =>
        new Promise<void>((resolve, reject) => {
          bs.aioWritev(0, IOVector.from(new Uint8Array(4096).fill(7)), 8, (err) => (err ? reject(err) : resolve()));
        }),
      );
      expect(ev).toEqual(['pwritev', 'pwritev_done']);
    } finally {
      await bs.close();
      memStoreDelete('ev-aio');
    }
  });

  it('flush: flush_to_os on the file child always, flush_to_disk only after a write', async () => {
    memStoreWrite('ev-flush', new Uint8Array(8192));
    const bs = await BlockDriverState.open('mem:ev-flush', { format: 'raw' });
    try {
      const file = bs.file!;
      expect(await eventsOn(file, () => bs.flush())).toEqual(['flush_to_os']);
      await bs.pwrite(0, new Uint8Array(512).fill(1));
      expect(await eventsOn(file, () => bs.flush())).toEqual(['flush_to_os', 'flush_to_disk']);
      expect(await eventsOn(file, () => bs.flush())).toEqual(['flush_to_os']);
      await bs.writeZeroes(0, 512);
      expect(await eventsOn(file, () => bs.flush())).toEqual(['flush_to_os', 'flush_to_disk']);
      await bs.discard(0, 512);
      expect(await eventsOn(file, () => bs.flush())).toEqual(['flush_to_os', 'flush_to_disk']);
      // The node itself is not told: the events belong to the child.
      expect(await eventsOn(bs, () => bs.flush())).toEqual([]);
    } finally {
      await bs.close();
      memStoreDelete('ev-flush');
    }
  });

  it('flush: cache=unsafe announces only flush_to_os; a read-only node announces nothing', async () => {
    memStoreWrite('ev-nf', new Uint8Array(8192));
    const bs = await BlockDriverState.open('mem:ev-nf', { format: 'raw', noFlush: true });
    const ro = await BlockDriverState.open('mem:ev-nf', { format: 'raw', readOnly: true });
    try {
      await bs.pwrite(0, new Uint8Array(512).fill(1));
      expect(await eventsOn(bs.file!, () => bs.flush())).toEqual(['flush_to_os']);
      expect(await eventsOn(ro.file!, () => ro.flush())).toEqual([]);
    } finally {
      await bs.close();
      await ro.close();
      memStoreDelete('ev-nf');
    }
  });

  it('a rule on "flush_to_disk" fails a flush only after a write (QEMU: same, below)', async () => {
    const cfg = '[inject-error]\nevent = "flush_to_disk"\nerrno = "5"\n';
    memStoreWrite('ev-fd', new Uint8Array(1 << 20));
    const bs = await BlockDriverState.open('blkdebug::mem:ev-fd', { format: 'raw', driverOptions: { configText: cfg } });
    try {
      await bs.flush();
      await bs.pwrite(0, new Uint8Array(512).fill(1));
      await expect(bs.flush()).rejects.toMatchObject({ code: 'EIO' });
    } finally {
      await bs.close().catch(() => undefined);
      memStoreDelete('ev-fd');
    }
  });

  it('writethrough: the FUA write flushes blkdebug, so the next flush skips its flush rule check (QEMU: same, below)', async () => {
    // flush_to_disk arms the rule in the later flush, but blkdebug was flushed by the FUA write
    // and nothing was written since: QEMU skips its flush_to_disk hook, the flush succeeds and
    // the armed rule fails the next read instead.
    const cfg = '[inject-error]\nevent = "flush_to_disk"\nerrno = "5"\nonce = "on"\n';
    await bdrvCreate('mem:ev-wt', { format: 'qed', options: { size: 1 << 20, clusterSize: 4096 } });
    const bs = await BlockDriverState.open('blkdebug::mem:ev-wt', { format: 'qed', driverOptions: { configText: cfg } });
    try {
      await bs.pwrite(0, new Uint8Array(4096).fill(0xab), { fua: true });
      await bs.flush();
      await expect(bs.pread(0, new Uint8Array(4096))).rejects.toMatchObject({ code: 'EIO' });
    } finally {
      await bs.close().catch(() => undefined);
      memStoreDelete('ev-wt');
    }
  });

  it('a rule on "pwritev_zero" fails a zero write (QEMU: ENOSPC, below)', async () => {
    const cfg = '[inject-error]\nevent = "pwritev_zero"\nerrno = "28"\n';
    memStoreWrite('ev-pz', new Uint8Array(1 << 20));
    const bs = await BlockDriverState.open('blkdebug::mem:ev-pz', { format: 'raw', driverOptions: { configText: cfg } });
    try {
      await expect(bs.writeZeroes(0, 4096)).rejects.toMatchObject({ code: 'ENOSPC' });
    } finally {
      await bs.close().catch(() => undefined);
      memStoreDelete('ev-pz');
    }
  });
});

const qemu = requireQemu();

describe.skipIf(!qemu)('what QEMU 7.2 does with the same rules (the reference for the tests above)', () => {
  const dir = qemu ? makeTempDir('blocklayer-genev-') : '';
  afterAll(() => {
    if (dir) removeTempDir(dir);
  });

  it.each([
    ['pwritev', 28, 'No space left on device'],
    ['pwritev_done', 28, 'No space left on device'],
    ['flush_to_os', 5, 'Input/output error'],
  ] as const)('qemu-io: a rule on %s fails the write', (event, errno, text) => {
    const img = join(dir, `${event}.qed`);
    const cfg = join(dir, `${event}.cfg`);
    expect(runQemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096', img, '1M']).status).toBe(0);
    writeFileSync(cfg, `[inject-error]\nevent = "${event}"\nerrno = "${errno}"\nonce = "on"\n`);
    const r = runQemuIo(['-f', 'qed', '-c', 'write -P 0xab 0 4k', `blkdebug:${cfg}:${img}`]);
    expect(r.stdout + r.stderr).toContain(`write failed: ${text}`);
  });

  it('qemu-io: a rule on flush_to_disk fails a flush only after a write', () => {
    const img = join(dir, 'fd.raw');
    const cfg = join(dir, 'fd.cfg');
    expect(runQemuImg(['create', '-q', '-f', 'raw', img, '1M']).status).toBe(0);
    writeFileSync(cfg, '[inject-error]\nevent = "flush_to_disk"\nerrno = "5"\n');
    expect(runQemuIo(['-f', 'raw', '-c', 'flush', `blkdebug:${cfg}:${img}`]).status).toBe(0);
    // writeback: the write alone does not flush (qemu-io defaults to writethrough).
    const r = runQemuIo(['-f', 'raw', '-t', 'writeback', '-c', 'write 0 512', '-c', 'flush', `blkdebug:${cfg}:${img}`]);
    expect(r.stdout).toContain('wrote 512/512 bytes');
    expect(r.status).not.toBe(0);
  });

  it('qemu-io (writethrough): with a flush_to_disk rule, write and flush succeed, the next read fails', () => {
    const img = join(dir, 'wt.qed');
    const cfg = join(dir, 'wt.cfg');
    expect(runQemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096', img, '1M']).status).toBe(0);
    writeFileSync(cfg, '[inject-error]\nevent = "flush_to_disk"\nerrno = "5"\nonce = "on"\n');
    const r = runQemuIo(['-f', 'qed', '-c', 'write -P 0xab 0 4k', '-c', 'flush', '-c', 'read -P 0xab 0 4k', `blkdebug:${cfg}:${img}`]);
    expect(r.stdout).toContain('wrote 4096/4096 bytes');
    expect(r.stdout + r.stderr).toContain('read failed: Input/output error');
  });

  it('qemu-io: a rule on pwritev_zero fails a zero write', () => {
    const img = join(dir, 'pz.raw');
    const cfg = join(dir, 'pz.cfg');
    expect(runQemuImg(['create', '-q', '-f', 'raw', img, '1M']).status).toBe(0);
    writeFileSync(cfg, '[inject-error]\nevent = "pwritev_zero"\nerrno = "28"\n');
    const r = runQemuIo(['-f', 'raw', '-t', 'writeback', '-c', 'write -z 0 4k', `blkdebug:${cfg}:${img}`]);
    expect(r.stdout + r.stderr).toContain('write failed: No space left on device');
  });
});
