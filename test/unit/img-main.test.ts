// blk-img in process, without QEMU: dispatch, help/version, program name, stdio ordering,
// and every subcommand end to end on in-memory images (mem:NAME).
import { mkdtempSync, openSync, readSync, rmSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/tools/img/main.js';
import { qemuPathCombine } from '../../src/tools/img/chain.js';
import { jsonObject, qdictOrder, toJsonPretty } from '../../src/tools/img/json.js';
import { Progress } from '../../src/tools/img/progress.js';
import { ToolOutput } from '../../src/tools/shared/output.js';
import { compareBuffers } from '../../src/tools/img/compare.js';

interface Run {
  status: number;
  stdout: string;
  stderr: string;
  all: string;
}

let seq = 0;
/** A fresh mem: namespace per test so that stores never collide. */
function ns(): string {
  return `mem:imgt${seq++}`;
}

async function img(prog: string, ...args: string[]): Promise<Run> {
  let stdout = '';
  let stderr = '';
  let all = '';
  const status = await main(['node', `/somewhere/bin/${prog}`, ...args], {
    stdout: { write: (s: string) => void ((stdout += s), (all += s)) },
    stderr: { write: (s: string) => void ((stderr += s), (all += s)) },
  });
  return { status, stdout, stderr, all };
}
const run = (...args: string[]): Promise<Run> => img('blk-img', ...args);

describe('blk-img dispatch', () => {
  it('prints its version with --version and -V', async () => {
    for (const flag of ['--version', '-V']) {
      const r = await run(flag);
      expect(r.status).toBe(0);
      expect(r.stdout).toBe('blk-img version 0.1.0 (blocklayer)\nMirrors qemu-img 7.2: same subcommands, options, messages and exit codes.\n');
    }
  });

  it('prints help listing the commands, also for a subcommand -h', async () => {
    const r = await run('--help');
    expect(r.status).toBe(0);
    for (const cmd of ['check', 'commit', 'compare', 'convert', 'create', 'dd', 'info', 'map', 'rebase', 'resize', 'bench']) {
      expect(r.stdout).toMatch(new RegExp(`^  ${cmd} `, 'm'));
    }
    expect(r.stdout).toMatch(/^Supported formats: .*\bqed\b.*\braw\b/m);
    const sub = await run('info', '-h', '--bogus');
    expect(sub.status).toBe(0);
    expect(sub.stdout).toBe(r.stdout);
  });

  it('names itself after argv[1] in every message', async () => {
    const r = await img('qemu-img', 'frobnicate');
    expect(r).toMatchObject({ status: 1, stdout: '' });
    expect(r.stderr).toBe("qemu-img: Command not found: frobnicate\nTry 'qemu-img --help' for more information\n");
    const v = await img('otherimg.js', '-z');
    expect(v.stderr).toBe("otherimg: unrecognized option '-z'\nTry 'otherimg --help' for more information\n");
    // The version line names the tool whatever it is called (as qemu-img's does).
    expect((await img('otherimg', '-V')).stdout.startsWith('blk-img version 0.1.0 (blocklayer)\n')).toBe(true);
    expect((await run()).stderr).toBe("blk-img: Not enough arguments\nTry 'blk-img --help' for more information\n");
  });

  it('writes stderr before buffered stdout, unless stdout was flushed', async () => {
    const d = ns();
    await run('create', '-q', '-f', 'qed', `${d}/a.qed`, '1M');
    // create flushes its Formatting line before the driver runs, so it precedes the error.
    const c = await run('create', '-f', 'qed', '-o', 'cluster_size=1000', `${d}/b.qed`, '1M');
    expect(c.status).toBe(1);
    expect(c.all).toBe(
      `Formatting '${d}/b.qed', fmt=qed size=1048576 cluster_size=1000\n` +
        `blk-img: ${d}/b.qed: QED cluster size must be within range [4096, 67108864] and power of 2\n`,
    );
    // compare -p prints its meter (flushed), the error, then the final newline (buffered).
    const p = await run('compare', '-p', `${d}/a.qed`, `${d}/missing.qed`);
    expect(p.status).toBe(2);
    expect(p.all.endsWith('\n\n')).toBe(true);
    expect(p.all.startsWith('blk-img: Could not open')).toBe(true);
  });
});

describe('blk-img subcommands on mem: images', () => {
  it('create, info (human and json), check, map', async () => {
    const d = ns();
    const c = await run('create', '-f', 'qed', '-o', 'cluster_size=4k', `${d}/a.qed`, '1M');
    expect(c.stdout).toBe(`Formatting '${d}/a.qed', fmt=qed size=1048576 cluster_size=4096\n`);
    const info = await run('info', `${d}/a.qed`);
    expect(info.stdout).toMatch(/^image: .*a\.qed\nfile format: qed\nvirtual size: 1 MiB \(1048576 bytes\)\ndisk size: .*\ncluster_size: 4096\n$/);
    const j = JSON.parse((await run('info', '--output=json', `${d}/a.qed`)).stdout) as Record<string, unknown>;
    expect(j).toMatchObject({ 'virtual-size': 1048576, format: 'qed', 'cluster-size': 4096, 'dirty-flag': false });
    expect(await run('check', `${d}/a.qed`)).toMatchObject({ status: 0, stdout: 'No errors were found on the image.\n' });
    const m = await run('map', '--output=json', `${d}/a.qed`);
    expect(m.stdout).toBe('[{ "start": 0, "length": 1048576, "depth": 0, "present": false, "zero": true, "data": false}]\n');
  });

  it('convert keeps zero regions unallocated; compare sees equal content; dd copies blocks', async () => {
    const d = ns();
    await run('create', '-q', '-f', 'raw', `${d}/r.raw`, '256k');
    // Some data at 64k via dd from a second raw image filled by convert from a pattern source.
    await run('create', '-q', '-f', 'qed', `${d}/src.qed`, '256k');
    const r1 = await run('convert', '-O', 'qed', `${d}/r.raw`, `${d}/c.qed`);
    expect(r1).toMatchObject({ status: 0, stdout: '', stderr: '' });
    const m = await run('map', '--output=json', `${d}/c.qed`);
    expect(m.stdout).toBe('[{ "start": 0, "length": 262144, "depth": 0, "present": false, "zero": true, "data": false}]\n');
    expect(await run('compare', `${d}/r.raw`, `${d}/c.qed`)).toMatchObject({ status: 0, stdout: 'Images are identical.\n' });
    expect(await run('compare', '-s', `${d}/src.qed`, `${d}/c.qed`)).toMatchObject({ status: 0 });
    const dd = await run('dd', `if=${d}/c.qed`, `of=${d}/o.raw`, 'bs=64k', 'count=2');
    expect(dd.status).toBe(0);
    expect((await run('info', '--output=json', `${d}/o.raw`)).stdout).toContain('"virtual-size": 131072');
    const mm = await run('compare', `${d}/o.raw`, `${d}/c.qed`);
    expect(mm.stdout).toBe('Warning: Image size mismatch!\nImages are identical.\n');
  });

  it('rebase -u, resize, commit', async () => {
    const d = ns();
    await run('create', '-q', '-f', 'qed', `${d}/base.qed`, '1M');
    await run('create', '-q', '-f', 'qed', '-b', 'base.qed', '-F', 'qed', `${d}/top.qed`);
    expect((await run('info', `${d}/top.qed`)).stdout).toContain(`backing file: base.qed (actual path: ${d}/base.qed)\n`);
    expect(await run('rebase', '-u', '-b', '', `${d}/top.qed`)).toMatchObject({ status: 0, stdout: '' });
    expect((await run('info', `${d}/top.qed`)).stdout).not.toContain('backing file');
    expect(await run('commit', `${d}/top.qed`)).toMatchObject({ status: 1, stderr: 'blk-img: Image does not have a backing file\n' });
    expect(await run('rebase', '-u', '-b', 'base.qed', '-F', 'qed', `${d}/top.qed`)).toMatchObject({ status: 0 });
    expect(await run('commit', `${d}/top.qed`)).toMatchObject({ status: 0, stdout: 'Image committed.\n' });
    expect(await run('resize', `${d}/top.qed`, '+1M')).toMatchObject({ status: 0, stdout: 'Image resized.\n' });
    expect((await run('info', '--output=json', `${d}/top.qed`)).stdout).toContain('"virtual-size": 2097152');
    const shrink = await run('resize', '--shrink', `${d}/top.qed`, '1M');
    expect(shrink).toMatchObject({ status: 1, stderr: 'blk-img: Shrinking images is currently not supported\n' });
  });

  it('warns that QEMU cannot open table_size=1 images, and opens them itself', async () => {
    const d = ns();
    const r = await run('create', '-f', 'qed', '-o', 'cluster_size=4k,table_size=1', `${d}/t1.qed`, '1M');
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/^blk-img: warning: .*table_size=1.*QEMU/m);
    expect((await run('check', `${d}/t1.qed`)).status).toBe(0);
  });
});

describe('blk-img on a dirty image (qed-format.md §17.5: the flag is reported truthfully)', () => {
  it('info shows it, check -r all clears it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'img-dirty-'));
    try {
      const f = join(dir, 'd.qed');
      expect((await run('create', '-q', '-f', 'qed', f, '1M')).status).toBe(0);
      // Set QED_F_NEED_CHECK (0x02) in the features field at offset 16.
      const fd = openSync(f, 'r+');
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, 16);
      b[0] |= 0x02;
      writeSync(fd, b, 0, 1, 16);
      closeSync(fd);
      expect((await run('info', f)).stdout).toContain('cleanly shut down: no\n');
      expect(JSON.parse((await run('info', '--output=json', f)).stdout)).toMatchObject({ 'dirty-flag': true });
      // A read-only check leaves the flag; a repairing one clears it.
      expect((await run('check', f)).status).toBe(0);
      expect((await run('info', f)).stdout).toContain('cleanly shut down: no\n');
      expect((await run('check', '-r', 'all', f)).status).toBe(0);
      expect((await run('info', f)).stdout).not.toContain('cleanly shut down');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('blk-img helpers', () => {
  it('orders JSON keys like a QDict', () => {
    const keys = ['filename', 'format', 'dirty-flag', 'actual-size', 'virtual-size', 'cluster-size', 'backing-filename', 'full-backing-filename', 'backing-filename-format'];
    expect(qdictOrder(keys.map((k) => [k, 0])).map(([k]) => k)).toEqual([
      'backing-filename-format',
      'virtual-size',
      'filename',
      'cluster-size',
      'format',
      'actual-size',
      'full-backing-filename',
      'backing-filename',
      'dirty-flag',
    ]);
    expect(toJsonPretty(jsonObject([['a', 'x"\n\u00e9\u0001']]))).toBe('{\n    "a": "x\\"\\n\\u00E9\\u0001"\n}');
    expect(toJsonPretty([jsonObject([['virtual-size', 1], ['filename', 'f']])])).toBe(
      '[\n    {\n        "virtual-size": 1,\n        "filename": "f"\n    }\n]',
    );
  });

  it('combines backing paths verbatim, like path_combine', () => {
    expect(qemuPathCombine('sub/s.qed', '../a.qed')).toBe('sub/../a.qed');
    expect(qemuPathCombine('s.qed', 'a.qed')).toBe('a.qed');
    expect(qemuPathCombine('/x/s.qed', '/abs/a.qed')).toBe('/abs/a.qed');
    expect(qemuPathCombine('mem:d/s.qed', 'a.qed')).toBe('mem:d/a.qed');
  });

  it('progress meter: float state, min skip, ends with a newline', () => {
    let out = '';
    const o = new ToolOutput({ stdout: { write: (s: string) => void (out += s) }, stderr: { write: () => undefined } }, 'p');
    const p = new Progress(o, true, 2.0);
    p.print(0, 100);
    p.print(1, 100); // below the 2% skip: not printed
    p.print(5.25, 100);
    p.print(100, 0);
    p.end();
    o.flush();
    expect(out).toBe('    (0.00/100%)\r    (6.25/100%)\r    (100.00/100%)\r\n');
  });

  it('compareBuffers reports the first differing run in sectors', () => {
    const a = new Uint8Array(2048);
    const b = new Uint8Array(2048);
    b[1030] = 1;
    expect(compareBuffers(a, b, 2048)).toEqual({ differ: false, pnum: 1024 });
    expect(compareBuffers(a.subarray(1024), b.subarray(1024), 1024)).toEqual({ differ: true, pnum: 512 });
  });
});
