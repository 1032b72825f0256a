/**
 * blkdebug against QEMU 7.2: the same config and the same write, once through qemu-io's
 * blkdebug over QEMU's QED, once through our blkdebug over our QED, on two identical images.
 * Both writes must fail (or succeed) alike, with the same errno, and leave images that
 * `qemu-img check` judges alike (corruptions, leaks, allocated clusters) and that
 * `qemu-img compare` finds identical in content.
 */
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDriverState, BlockError, ERRNO_MESSAGES, ERRNO_NUMBERS } from '../../src/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from '../interop/qemu.js';

const qemu = requireQemu();

interface Scenario {
  name: string;
  event: string;
  errno: number;
  /** qemu-io commands run on both images first (without blkdebug). */
  pre: string[];
  /** The write under injection: offset, length, pattern byte. */
  offset: number;
  length: number;
  backing: boolean;
  /** QEMU's write fails (default); false for events QEMU 7.2 announces where nothing follows. */
  fails?: boolean;
  /** Flush after the write (inside the same blkdebug session). */
  flush?: boolean;
}

const SCENARIOS: Scenario[] = [
  { name: 'write_aio, allocating, new L2', event: 'write_aio', errno: 5, pre: [], offset: 0, length: 4096, backing: false },
  { name: 'l2_update, allocating, new L2', event: 'l2_update', errno: 5, pre: [], offset: 0, length: 4096, backing: false },
  { name: 'l1_update, allocating, new L2', event: 'l1_update', errno: 28, pre: [], offset: 0, length: 4096, backing: false },
  { name: 'l2_update, existing L2', event: 'l2_update', errno: 5, pre: ['write -P 0x11 0 4k'], offset: 8192, length: 4096, backing: false },
  { name: 'l2_load, cold cache', event: 'l2_load', errno: 5, pre: ['write -P 0x11 0 4k'], offset: 8192, length: 512, backing: false },
  { name: 'write_aio, in place', event: 'write_aio', errno: 28, pre: ['write -P 0x11 0 4k'], offset: 1024, length: 1024, backing: false },
  { name: 'read_backing_aio, partial cluster over raw backing', event: 'read_backing_aio', errno: 5, pre: [], offset: 1024, length: 512, backing: true },
  { name: 'cow_write, partial cluster over raw backing', event: 'cow_write', errno: 5, pre: [], offset: 1024, length: 512, backing: true },
  { name: 'l2_update over raw backing', event: 'l2_update', errno: 5, pre: [], offset: 0, length: 8192, backing: true },
  { name: 'l1_update over raw backing', event: 'l1_update', errno: 5, pre: [], offset: 4096, length: 4096, backing: true },
  // Events of QEMU's generic layer (see test/regressions/blkdebug-generic-events.test.ts).
  // flush_to_disk: the flush after a writeback write arms it, and blkdebug's flush then fails.
  { name: 'flush_to_disk, write + flush', event: 'flush_to_disk', errno: 5, pre: [], offset: 0, length: 4096, backing: false, flush: true },
  { name: 'pwritev_rmw_head, unaligned', event: 'pwritev_rmw_head', errno: 28, pre: [], offset: 1, length: 4096, backing: false, fails: false },
];

describe.skipIf(!qemu)('blkdebug injection: ours vs qemu-io 7.2', () => {
  let dir = '';
  beforeAll(() => {
    dir = makeTempDir('blocklayer-blkdebug-');
    // A raw backing file with a pattern, for the copy-on-write scenarios.
    writeFileSync(join(dir, 'base.raw'), new Uint8Array(1 << 20).map((_, i) => (i * 13 + 7) & 0xff));
  });
  afterAll(() => removeTempDir(dir));

  function checkJson(path: string): Record<string, number> {
    const r = runQemuImg(['check', '-f', 'qed', '--output=json', path]);
    const j = JSON.parse(r.stdout) as Record<string, unknown>;
    const pick = (k: string): number => (typeof j[k] === 'number' ? (j[k]) : 0);
    return {
      status: r.status ?? -1,
      corruptions: pick('corruptions'),
      leaks: pick('leaks'),
      checkErrors: pick('check-errors'),
      allocated: pick('allocated-clusters'),
    };
  }

  it.each(SCENARIOS)('$name', async (sc) => {
    const theirs = join(dir, `${sc.event}-${sc.offset}-theirs.qed`);
    const ours = join(dir, `${sc.event}-${sc.offset}-ours.qed`);
    const cfg = join(dir, `${sc.event}.cfg`);
    writeFileSync(cfg, `[inject-error]\nevent = "${sc.event}"\nerrno = "${sc.errno}"\nonce = "on"\n`);
    const create = ['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096'];
    if (sc.backing) create.push('-b', 'base.raw', '-F', 'raw');
    expect(runQemuImg([...create, theirs, '1M'], { cwd: dir }).status).toBe(0);
    for (const c of sc.pre) expect(runQemuIo(['-f', 'qed', '-c', c, theirs]).status).toBe(0);
    copyFileSync(theirs, ours);

    const cmd = `write -P 0xab ${sc.offset} ${sc.length}`;
    // With a flush, qemu-io runs writeback like our plain pwrite + flush (its default,
    // writethrough, flushes inside the write); it reports a failed flush only by its status.
    const cache = sc.flush ? ['-t', 'writeback'] : [];
    const q = runQemuIo(['-f', 'qed', ...cache, '-c', cmd, ...(sc.flush ? ['-c', 'flush'] : []), `blkdebug:${cfg}:${theirs}`]);
    const failedMsg = /(?:write|flush) failed: (.*)/.exec(q.stdout + q.stderr);
    const qemuFailed = failedMsg !== null || (sc.flush === true && q.status !== 0);
    // The scenarios are chosen so that QEMU's write fails, but for the few marked otherwise.
    expect(qemuFailed, q.stdout + q.stderr).toBe(sc.fails !== false);

    const bs = await BlockDriverState.open(`blkdebug:${cfg}:${ours}`, { format: 'qed' });
    let ourError: BlockError | null = null;
    try {
      await bs.pwrite(sc.offset, new Uint8Array(sc.length).fill(0xab));
      if (sc.flush) await bs.flush();
    } catch (e) {
      if (!(e instanceof BlockError)) throw e;
      ourError = e;
    } finally {
      await bs.close().catch(() => undefined);
    }

    expect(ourError !== null, `QEMU: ${q.stdout}${q.stderr}; ours: ${ourError?.message ?? 'ok'}`).toBe(qemuFailed);
    if (ourError && failedMsg) expect(ERRNO_MESSAGES[ourError.code]).toBe(failedMsg[1].trim());
    else if (ourError) expect(ERRNO_NUMBERS[ourError.code]).toBe(sc.errno);
    expect(checkJson(ours)).toEqual(checkJson(theirs));
    const cmp = runQemuImg(['compare', '-f', 'qed', '-F', 'qed', ours, theirs]);
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
  });
});
