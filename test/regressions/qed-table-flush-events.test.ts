/**
 * QEMU's QED flushes a new L2 table through the QED node (bdrv_co_flush(s->bs)), so the generic
 * layer announces flush_to_os on the file child during the first allocating write even in
 * writeback mode, and a blkdebug rule on that event fails the write. Ours used to flush the
 * file child directly, which announced nothing there (found by the blk-io cache-mode parity
 * sessions). The qemu-io half below is the reference.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockDriverState, BlockError, bdrvCreate } from '../../src/index.js';
import { memStoreDelete } from '../../src/drivers/mem/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from '../interop/qemu.js';

const RULE = '[inject-error]\nevent = "flush_to_os"\nerrno = "5"\nonce = "on"\n';

describe('a new L2 table is flushed through the QED node', () => {
  it('a blkdebug rule on flush_to_os fails the first allocating write, the next one succeeds', async () => {
    await bdrvCreate('mem:flush-ev', { format: 'qed', options: { size: 1 << 20, clusterSize: 4096 } });
    const bs = await BlockDriverState.open('blkdebug::mem:flush-ev', { format: 'qed', driverOptions: { configText: RULE } });
    try {
      const first = await bs.pwrite(0, new Uint8Array(4096).fill(0xab)).then(
        () => null,
        (e: unknown) => e,
      );
      expect(first).toBeInstanceOf(BlockError);
      expect((first as BlockError).code).toBe('EIO');
      await bs.pwrite(4096, new Uint8Array(4096).fill(0xcd));
    } finally {
      await bs.close().catch(() => undefined);
      memStoreDelete('flush-ev');
    }
  });
});

const qemu = requireQemu();

describe.skipIf(!qemu)('what qemu-io 7.2 does with the same rule', () => {
  const dir = qemu ? makeTempDir('blocklayer-qedflush-') : '';
  afterAll(() => {
    if (dir) removeTempDir(dir);
  });

  it('fails the first write with EIO in writeback mode, then writes', () => {
    const img = join(dir, 'a.qed');
    const cfg = join(dir, 'a.cfg');
    expect(runQemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096', img, '1M']).status).toBe(0);
    writeFileSync(cfg, RULE);
    const r = runQemuIo(['-t', 'writeback', '-f', 'qed', '-c', 'write -P 0xab 0 4k', '-c', 'write -P 0xcd 4k 4k', `blkdebug:${cfg}:${img}`]);
    expect(r.stdout + r.stderr).toContain('write failed: Input/output error');
    expect(r.stdout).toContain('wrote 4096/4096 bytes at offset 4096');
  });
});
