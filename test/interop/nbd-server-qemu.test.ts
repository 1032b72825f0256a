// Our NbdServer against the real clients (qemu-img, qemu-io, nbdinfo, nbdcopy), compared
// with qemu-nbd 7.2 serving the same image where the answers should be byte for byte equal.
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir } from './qemu.js';
import { haveNbdTools, killTools, runTool, serveImage, startQemuNbd, type Served, type ToolResult } from './nbd-server-tools.js';

const enabled = haveNbdTools();

function ok(r: ToolResult): string {
  if (r.status !== 0) throw new Error(`exit ${String(r.status)}: ${r.stderr}`);
  return r.stdout;
}

/** nbdinfo --json output without the fields that name the socket. */
function infoJson(s: string): unknown {
  const j = JSON.parse(s) as { exports: Record<string, unknown>[] };
  for (const e of j.exports) delete e.uri;
  return j;
}

describe.skipIf(!enabled)('NbdServer with qemu and libnbd clients', () => {
  let dir = '';
  let raw = '';
  let base = '';
  let top = '';
  const cleanups: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    dir = makeTempDir('nbd-server-qemu');
    raw = join(dir, 'sparse.raw');
    ok(await runTool('qemu-img', ['create', '-f', 'raw', raw, '4M']));
    ok(await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 64k 5', '-c', 'write -P 0x11 2560k 128k', raw]));
    base = join(dir, 'base.qed');
    top = join(dir, 'top.qed');
    ok(await runTool('qemu-img', ['create', '-f', 'qed', base, '4M']));
    ok(await runTool('qemu-io', ['-f', 'qed', '-c', 'write -P 0x11 0 1M', base]));
    ok(await runTool('qemu-img', ['create', '-f', 'qed', '-b', 'base.qed', '-F', 'qed', top]));
    ok(await runTool('qemu-io', ['-f', 'qed', '-c', 'write -P 0x22 512k 1M', '-c', 'write -P 0x33 2112k 64k', top]));
  });

  afterAll(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    killTools();
    removeTempDir(dir);
  });

  async function ours(file: string, opts: Parameters<typeof serveImage>[2] = {}): Promise<Served> {
    const s = await serveImage(file, dir, opts);
    cleanups.push(() => s.close());
    return s;
  }

  async function theirs(file: string, args: string[]): Promise<string> {
    const q = await startQemuNbd(file, dir, args);
    cleanups.push(() => q.stop());
    return q.unix;
  }

  it('qemu-img info, map and nbdinfo --json/--map agree with qemu-nbd on a read-only raw export', async () => {
    const s = await ours(raw, { format: 'raw', readOnly: true, maxClients: 1 });
    const q = await theirs(raw, ['-f', 'raw', '-r']);
    for (const uri of [s.tcp, s.unix]) {
      expect(ok(await runTool('qemu-img', ['map', '--output=json', uri]))).toBe(ok(await runTool('qemu-img', ['map', '--output=json', q])));
      expect(ok(await runTool('nbdinfo', ['--map', uri]))).toBe(ok(await runTool('nbdinfo', ['--map', q])));
      expect(infoJson(ok(await runTool('nbdinfo', ['--json', uri])))).toEqual(infoJson(ok(await runTool('nbdinfo', ['--json', q]))));
      const info = JSON.parse(ok(await runTool('qemu-img', ['info', '--output=json', uri]))) as Record<string, unknown>;
      expect(info['virtual-size']).toBe(4194304);
      expect(ok(await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri, raw]))).toContain('Images are identical');
    }
    // The measured layout: holes as OFFSET_HOLE extents around the two data areas.
    expect(ok(await runTool('nbdinfo', ['--map', s.tcp])).trim().split('\n').length).toBeGreaterThanOrEqual(5);
    expect(s.errors).toEqual([]);
  });

  it('serves a qed backing chain: base:allocation and qemu:allocation-depth as qemu-nbd -A', async () => {
    const s = await ours(top, { format: 'qed', readOnly: true, allocationDepth: true, maxClients: 1 });
    const q = await theirs(top, ['-f', 'qed', '-r', '-A']);
    for (const map of ['--map', '--map=qemu:allocation-depth']) {
      const mine = ok(await runTool('nbdinfo', [map, s.unix]));
      expect(mine).toBe(ok(await runTool('nbdinfo', [map, q])));
    }
    const depth = ok(await runTool('nbdinfo', ['--map=qemu:allocation-depth', s.tcp]));
    expect(depth).toMatch(/524288\s+2\s+backing depth 2/);
    expect(depth).toMatch(/1048576\s+1\s+local/);
    expect(infoJson(ok(await runTool('nbdinfo', ['--json', s.unix])))).toEqual(infoJson(ok(await runTool('nbdinfo', ['--json', q]))));
    expect(ok(await runTool('qemu-img', ['compare', '-F', 'qed', s.tcp, top]))).toContain('Images are identical');
  });

  it('nbdinfo --list shows the export with its description', async () => {
    const s = await ours(raw, { format: 'raw', readOnly: true, description: 'sparse test disk' });
    const out = ok(await runTool('nbdinfo', ['--list', s.tcp]));
    expect(out).toContain('export="":');
    expect(out).toContain('description: sparse test disk');
  });

  it('qemu-io writes over nbd:// and nbd+unix:// land as on a local copy', async () => {
    const mine = join(dir, 'rw-ours.raw');
    const local = join(dir, 'rw-local.raw');
    copyFileSync(raw, mine);
    copyFileSync(raw, local);
    const cmds = ['write -P 0x77 1000 3000', 'write -z 1M 1M', 'discard 2600k 64k', 'write -P 0x99 4190000 4304', 'flush'];
    const args = cmds.flatMap((c) => ['-c', c]);
    const s = await ours(mine, { format: 'raw' });
    ok(await runTool('qemu-io', ['-f', 'raw', ...args.slice(0, 4), s.tcp]));
    ok(await runTool('qemu-io', ['-f', 'raw', ...args.slice(4), s.unix]));
    ok(await runTool('qemu-io', ['-f', 'raw', ...args, local]));
    const read = ok(await runTool('qemu-io', ['-f', 'raw', '-c', 'read -P 0x77 1000 3000', '-c', 'read -P 0 1M 1M', s.unix]));
    expect(read).not.toContain('Pattern verification failed');
    await s.close();
    expect(readFileSync(mine).equals(readFileSync(local))).toBe(true);
  });

  it('qemu-img convert and nbdcopy copy out of and into the export', async () => {
    const target = join(dir, 'copy-target.raw');
    ok(await runTool('qemu-img', ['create', '-f', 'raw', target, '4M']));
    const s = await ours(target, { format: 'raw' });
    // Into our export from the local image, then back out to new local files.
    ok(await runTool('nbdcopy', [raw, s.tcp]));
    expect(ok(await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.tcp, raw]))).toContain('Images are identical');
    const out1 = join(dir, 'out-nbdcopy.raw');
    const out2 = join(dir, 'out-convert.qcow2');
    ok(await runTool('nbdcopy', [s.unix, out1]));
    ok(await runTool('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', s.tcp, out2]));
    expect(readFileSync(out1).equals(readFileSync(raw))).toBe(true);
    expect(ok(await runTool('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', out2, raw]))).toContain('Images are identical');
    // And qemu-img convert into the export (-n: the target exists).
    ok(await runTool('qemu-img', ['convert', '-n', '-f', 'qed', '-O', 'raw', top, s.unix]));
    expect(ok(await runTool('qemu-img', ['compare', '-F', 'qed', s.tcp, top]))).toContain('Images are identical');
  });
});
