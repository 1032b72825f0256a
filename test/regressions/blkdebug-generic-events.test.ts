/**
 * OPEN BUG (generic layer, src/block/node.ts): QEMU 7.2's generic block layer announces
 * blkdebug events on the node a request reaches: `pwritev` before and `pwritev_done` after every
 * write that reaches a node (bdrv_aligned_pwritev), `pwritev_zero` for zero writes, and
 * `flush_to_os` / `flush_to_disk` on bs->file when a node is flushed (bdrv_co_flush). So a
 * blkdebug rule on those events fails QEMU's requests (verified with qemu-io 7.2 below: "write
 * failed: No space left on device"), while ours never announces them and the same config
 * fails nothing. Found by the blkdebug interop comparison (test/unit/blkdebug-interop.test.ts).
 *
 * Fix: in BlockDriverState's aligned write path, `await this.debugEvent('pwritev')` before the
 * driver's write hook and `'pwritev_done'` after it (on the node being written, i.e. the
 * blkdebug node when a format writes to its file child), `'pwritev_zero'` on the zero path, and
 * in flush, `await this.file?.debugEvent('flush_to_os')` / `'flush_to_disk'` before flushing
 * the child. Then flip the `it.fails` below to `it`.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockDriverState, BlockError, bdrvCreate } from '../../src/index.js';
import { memStoreDelete } from '../../src/drivers/mem/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from '../interop/qemu.js';

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
  it.fails('OPEN BUG generic layer: a rule on "pwritev" fails the write (QEMU: ENOSPC)', async () => {
    const err = await writeThroughBlkdebug('ev-pwritev', '[inject-error]\nevent = "pwritev"\nerrno = "28"\nonce = "on"\n');
    expect(err?.code).toBe('ENOSPC');
  });

  it.fails('OPEN BUG generic layer: a rule on "pwritev_done" fails the allocating write (QEMU: ENOSPC)', async () => {
    const err = await writeThroughBlkdebug('ev-pwdone', '[inject-error]\nevent = "pwritev_done"\nerrno = "28"\nonce = "on"\n');
    expect(err?.code).toBe('ENOSPC');
  });

  it.fails('OPEN BUG generic layer: a rule on "flush_to_os" fails the allocating write (QEMU: EIO)', async () => {
    const err = await writeThroughBlkdebug('ev-flushos', '[inject-error]\nevent = "flush_to_os"\nerrno = "5"\n', true);
    expect(err?.code).toBe('EIO');
  });
});

const qemu = requireQemu();

describe.skipIf(!qemu)('what QEMU 7.2 does with the same rules (the reference for the open bug above)', () => {
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
});
