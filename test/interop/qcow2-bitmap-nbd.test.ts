// Persistent dirty bitmaps against the real tools: our writes keep qemu-img's bitmaps exactly
// as qemu-io's writes do (same image, byte for byte, and check clean), and our NBD server's
// `qemu:dirty-bitmap:NAME` context reads as qemu-nbd -B serves it, through nbdinfo --map and
// through qemu-img map with x-dirty-bitmap.
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDriverState } from '../../src/index.js';
import { makeTempDir, removeTempDir } from './qemu.js';
import { haveNbdTools, killTools, runTool, serveImage, startQemuNbd, type ToolResult } from './nbd-server-tools.js';
import { ourCommand } from './qcow2-support.js';

const enabled = haveNbdTools();

function ok(r: ToolResult): string {
  if (r.status !== 0) throw new Error(`exit ${String(r.status)}: ${r.stderr}`);
  return r.stdout;
}

const WRITES = ['write -P 1 1M 4k', 'write -z 2M 192k', 'discard 3M 64k', 'write -P 2 4095k 2k'];

describe.skipIf(!enabled)('qcow2 persistent dirty bitmaps with qemu-img, qemu-io, qemu-nbd', () => {
  let dir = '';
  let theirs = '';
  let ours = '';

  beforeAll(async () => {
    dir = makeTempDir('qcow2-bitmap-nbd');
    theirs = join(dir, 'theirs.qcow2');
    ours = join(dir, 'ours.qcow2');
    ok(await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', theirs, '8M']));
    ok(await runTool('qemu-img', ['bitmap', '--add', theirs, 'b0']));
    ok(await runTool('qemu-img', ['bitmap', '--add', '-g', '4k', '--disable', theirs, 'off']));
    ok(await runTool('qemu-img', ['bitmap', '--add', '-g', '512', theirs, 'fine']));
    ok(await runTool('qemu-io', ['-c', 'write -P 9 0 64k', theirs]));
    copyFileSync(theirs, ours);
    ok(await runTool('qemu-io', WRITES.flatMap((c) => ['-c', c]).concat(theirs)));
    const bs = await BlockDriverState.open(ours);
    for (const c of WRITES) await ourCommand(bs, c);
    await bs.close();
  });
  afterAll(() => {
    killTools();
    removeTempDir(dir);
  });

  it('our writes leave the image qemu-io leaves, bitmaps included', async () => {
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    const info = ok(await runTool('qemu-img', ['info', '--output=json', ours]));
    expect(info).toContain('"name": "fine"');
    expect(info).not.toContain('in-use');
    expect(ok(await runTool('qemu-img', ['check', ours]))).toContain('No errors were found on the image.');
  });

  it('serves qemu:dirty-bitmap:NAME as qemu-nbd -B does', async () => {
    const q = await startQemuNbd(theirs, dir, ['-f', 'qcow2', '-r', '-B', 'b0', '-B', 'fine', '-B', 'off']);
    const s = await serveImage(ours, dir, { format: 'qcow2', readOnly: true, bitmaps: ['off', 'fine', 'b0'] });
    try {
      for (const name of ['b0', 'fine', 'off']) {
        const want = ok(await runTool('nbdinfo', [`--map=qemu:dirty-bitmap:${name}`, q.unix]));
        expect(ok(await runTool('nbdinfo', [`--map=qemu:dirty-bitmap:${name}`, s.unix]))).toBe(want);
        const opts = (sock: string): string => `driver=nbd,server.type=unix,server.path=${sock},x-dirty-bitmap=qemu:dirty-bitmap:${name}`;
        const qsock = q.unix.slice(q.unix.indexOf('socket=') + 7);
        const ssock = s.unix.slice(s.unix.indexOf('socket=') + 7);
        const wantMap = ok(await runTool('qemu-img', ['map', '--output=json', '--image-opts', opts(qsock)]));
        expect(ok(await runTool('qemu-img', ['map', '--output=json', '--image-opts', opts(ssock)]))).toBe(wantMap);
      }
      expect(want(ok(await runTool('nbdinfo', ['--list', '--content', s.unix])))).toEqual(want(ok(await runTool('nbdinfo', ['--list', q.unix]))));
      expect(s.errors).toEqual([]);
    } finally {
      await s.close();
      await q.stop();
    }
  });
});

/** The contexts nbdinfo lists for an export. */
function want(list: string): string[] {
  return list
    .split('\n')
    .filter((l) => l.includes('qemu:') || l.includes('base:'))
    .map((l) => l.trim());
}
