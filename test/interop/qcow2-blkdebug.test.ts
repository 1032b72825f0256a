// qcow2 debug events against qemu-io 7.2: the same blkdebug rule (an EIO injected once on one
// qcow2 event) fails the same command and leaves the same file, so the events fire in QEMU's
// places and order, and a failed allocation is rolled back as QEMU does.
import { copyFileSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDriverState } from '../../src/index.js';
import { ourCommand } from './qcow2-support.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';

const qemu = requireQemu();
const d = qemu ? describe : describe.skip;

let dir = '';
beforeAll(() => {
  dir = makeTempDir('qcow2-blkdebug');
  writeFileSync(join(dir, 'base.raw'), Buffer.alloc(1 << 20, 0x77));
  // All hole: reads as zeros, yet a raw file counts as allocated, so QEMU copies COW areas
  // from it rather than zeroing the new clusters.
  writeFileSync(join(dir, 'hole.raw'), '');
  truncateSync(join(dir, 'hole.raw'), 1 << 20);
});
afterAll(() => removeTempDir(dir));

const CMDS = ['write -P 1 1000 4k', 'write -P 2 600k 1k', 'write -z 200k 1k', 'write -P 3 200k 100', 'write -P 4 300k 20k'];
const EVENTS = ['write_aio', 'cow_read', 'cow_write', 'cluster_alloc_space', 'cluster_alloc', 'l2_alloc_write', 'l2_update', 'l1_update', 'refblock_alloc', 'read_backing_aio'];
const IMAGES: { name: string; opts: string[] }[] = [
  { name: '512-byte clusters', opts: ['-o', 'cluster_size=512'] },
  { name: '4k clusters over raw', opts: ['-o', 'cluster_size=4k', '-b', 'base.raw', '-F', 'raw'] },
  { name: '4k clusters over a sparse raw', opts: ['-o', 'cluster_size=4k', '-b', 'hole.raw', '-F', 'raw'] },
];

/** Which commands qemu-io reported as failed, in order. */
function qemuFailures(out: string): boolean[] {
  const res: boolean[] = [];
  for (const line of out.split('\n')) {
    if (line.startsWith('wrote ')) res.push(false);
    else if (line.startsWith('write failed')) res.push(true);
  }
  return res;
}

d('qcow2 blkdebug events match qemu-io', () => {
  for (const img of IMAGES) {
    for (const event of EVENTS) {
      it(`${img.name}: EIO once on ${event}`, async () => {
        const tag = `${img.name.replace(/\W+/g, '-')}-${event}`;
        const rules = join(dir, `${tag}.cfg`);
        writeFileSync(rules, `[inject-error]\nevent = "${event}"\nerrno = "5"\nonce = "on"\n`);
        const theirs = join(dir, `${tag}-q.qcow2`);
        const ours = join(dir, `${tag}-o.qcow2`);
        expect(runQemuImg(['create', '-q', '-f', 'qcow2', ...img.opts, theirs, '1M'], { cwd: dir }).status).toBe(0);
        copyFileSync(theirs, ours);
        const r = runQemuIo(['-f', 'qcow2', ...CMDS.flatMap((c) => ['-c', c]), `blkdebug:${rules}:${theirs}`], { cwd: dir });
        const expected = qemuFailures(r.stdout);
        expect(expected).toHaveLength(CMDS.length);
        const got: boolean[] = [];
        const bs = await BlockDriverState.open(`blkdebug:${rules}:${ours}`, { format: 'qcow2' });
        try {
          for (const c of CMDS) {
            try {
              await ourCommand(bs, c);
              got.push(false);
            } catch (e) {
              expect(e).toMatchObject({ code: 'EIO' });
              got.push(true);
            }
          }
        } finally {
          await bs.close();
        }
        expect(got).toEqual(expected);
        expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
      });
    }
  }
});
