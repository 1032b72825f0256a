// The tools' bundles and their V8 code caches (scripts/bundle.ts, bin/bundle.js): a build makes
// caches that V8 takes, also for convert (which raises V8's interrupt budget), and a tool whose
// cache is missing, corrupt or another build's still runs, from source. A bundle is built into
// a scratch copy of the package, from what tsc emitted in dist/src.
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitForListen } from '../../scripts/listen.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const REPO = resolve(import.meta.dirname, '../..');

/** A launcher's run with NODE_DEBUG=blk-bundle: its status, stdout and the cache verdict. */
function launch(root: string, tool: string, args: string[], nodeArgs: string[] = [], env: NodeJS.ProcessEnv = {}) {
  const e: NodeJS.ProcessEnv = { ...process.env, NODE_DEBUG: 'blk-bundle', ...env };
  delete e.NODE_OPTIONS; // vitest's own options would change V8's flags
  const r = spawnSync(process.execPath, [...nodeArgs, join(root, 'bin', `blk-${tool}.js`), ...args], { cwd: root, encoding: 'utf8', env: e, timeout: 60_000 });
  const verdict = /code cache (used|missing|rejected)/.exec(r.stderr)?.[1] ?? 'none';
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, verdict };
}

describe('tool bundles and their code cache', () => {
  let root = '';
  let cache = '';
  let pristine: Buffer;
  /** blk-img's lean cache, which --version takes (bin/blk-img.js). */
  let lean = '';
  let pristineLean: Buffer;

  beforeAll(() => {
    if (!existsSync(join(REPO, 'dist/src/tools/img/main.js'))) throw new Error('dist/src is missing: run `npm run build` first');
    root = makeTempDir('blk-bundle-test');
    cpSync(join(REPO, 'bin'), join(root, 'bin'), { recursive: true });
    cpSync(join(REPO, 'package.json'), join(root, 'package.json'));
    symlinkSync(join(REPO, 'node_modules'), join(root, 'node_modules'));
    // The native addon, where `npm ci` builds it: the file driver loads it from there.
    symlinkSync(join(REPO, 'build'), join(root, 'build'));
    cpSync(join(REPO, 'dist/src'), join(root, 'dist/src'), { recursive: true });
    const tsx = join(REPO, 'node_modules/tsx/dist/cli.mjs');
    const r = spawnSync(process.execPath, [tsx, join(REPO, 'scripts/bundle.ts'), root], { encoding: 'utf8', timeout: 240_000 });
    if (r.status !== 0) throw new Error(`bundle failed: ${r.stderr}`);
    cache = join(root, 'dist/bin/img.cjs.cache');
    pristine = readFileSync(cache);
    lean = join(root, 'dist/bin/img.cjs.lean.cache');
    pristineLean = readFileSync(lean);
  }, 300_000);

  afterAll(() => {
    if (root !== '') removeTempDir(root);
  });

  it('a build makes caches that V8 takes, for every tool', () => {
    // ASCII only: bin/bundle.js reads a bundle as latin1.
    for (const t of ['img', 'io', 'nbd']) expect(readFileSync(join(root, `dist/bin/${t}.cjs`)).every((b) => b < 0x80)).toBe(true);
    // Each is the function CommonJS would wrap it in, its body strict, as the ES modules it was
    // made of are.
    for (const t of ['img', 'io', 'nbd']) {
      const lines = readFileSync(join(root, `dist/bin/${t}.cjs`), 'latin1').split('\n', 3);
      expect(lines.slice(1)).toEqual(['(function (exports, require, module, __filename, __dirname, __bundle_meta) {', "'use strict';"]);
    }
    writeFileSync(cache, pristine);
    const img = launch(root, 'img', ['--version']);
    expect(img.status).toBe(0);
    expect(img.stdout).toMatch(/^blk-img version /);
    expect(img.verdict).toBe('used');
    const io = launch(root, 'io', ['-c', 'help quit']);
    expect(io.verdict).toBe('used');
    expect(launch(root, 'nbd', ['--version']).verdict).toBe('used');
  });

  it('loads no network module for a local image, nor node:fs/promises', () => {
    // node:http, https, tls and crypto cost ~10 ms of every start: loaded by the first request,
    // connection or listen that needs them. (node:net is not checked: a piped stdout loads it.)
    // node:fs/promises (with readline and the fs watchers) cost ~5 M instructions: the file
    // driver uses node:fs's callback API (src/drivers/file/handle.ts). node:module (with the ES
    // module loader it loads, ~0.4 ms): the bundle gets the launcher's require, and the addon
    // is loaded with process.dlopen (src/drivers/file/seek.ts).
    writeFileSync(join(root, 'modules.cjs'), "process.on('exit', () => console.error('MODULES', process.moduleLoadList.join('|')));");
    launch(root, 'img', ['create', '-q', '-f', 'qcow2', 'local.qcow2', '1M']);
    const r = launch(root, 'img', ['check', 'local.qcow2'], ['--require', join(root, 'modules.cjs')]);
    expect(r.status).toBe(0);
    expect(r.verdict).toBe('used');
    const loaded = /MODULES (.*)/.exec(r.stderr)?.[1].split('|') ?? [];
    expect(loaded).toContain('NativeModule fs');
    for (const m of ['http', 'https', 'tls', 'crypto', 'fs/promises', 'module']) expect(loaded).not.toContain(`NativeModule ${m}`);
  });

  it('loads the network modules on first use from a cached bundle: an NBD server and client', () => {
    // A cached script has no dynamic import callback: the bundles must hold no import().
    for (const t of ['img', 'io', 'nbd']) expect(readFileSync(join(root, `dist/bin/${t}.cjs`), 'utf8')).not.toMatch(/[^\w.$]import\(/);
    writeFileSync(cache, pristine);
    launch(root, 'img', ['create', '-q', '-f', 'raw', 'served.raw', '1M']);
    const sock = join(root, 'nbd.sock');
    const e: NodeJS.ProcessEnv = { ...process.env };
    delete e.NODE_OPTIONS;
    const server = spawn(process.execPath, [join(root, 'bin/blk-nbd.js'), '-k', sock, '-f', 'raw', 'served.raw'], { cwd: root, env: e, stdio: 'ignore' });
    try {
      let r = launch(root, 'img', ['info', `nbd+unix:///?socket=${sock}`]);
      for (let i = 0; i < 100 && r.status !== 0; i++) {
        spawnSync('sleep', ['0.1']);
        r = launch(root, 'img', ['info', `nbd+unix:///?socket=${sock}`]);
      }
      expect(r.stderr.replace(/^BLK-BUNDLE.*\n/gm, '')).toBe('');
      expect(r.stdout).toMatch(/^virtual size: 1 MiB \(1048576 bytes\)$/m);
      expect(r.verdict).toBe('used');
    } finally {
      server.kill();
    }
  });

  it("loads zstd's encoder, pako and fzstd from files of their own, on first use", () => {
    // scripts/bundle.ts: SIDE_CHUNKS. The bundles hold none of them (pako's licence, the wasm).
    for (const t of ['img', 'io', 'nbd']) expect(readFileSync(join(root, `dist/bin/${t}.cjs`), 'latin1')).not.toMatch(/nodeca\/pako|AGFzbQ/);
    writeFileSync(cache, pristine);
    writeFileSync(lean, pristineLean);
    writeFileSync(join(root, 'chunks.cjs'), "process.on('exit', () => console.error('CHUNKS', Object.keys(require.cache).filter((k) => k.includes('dist/bin')).map((k) => k.replace(/.*\\//, '')).sort().join(' ')));");
    const chunks = (tool: string, args: string[], env: NodeJS.ProcessEnv = {}) => {
      const r = launch(root, tool, args, ['--require', join(root, 'chunks.cjs')], env);
      expect(r.status).toBe(0);
      return /CHUNKS (.*)/.exec(r.stderr)?.[1] ?? '';
    };
    expect(chunks('img', ['create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd', 'z.qcow2', '1M'])).toBe('');
    expect(chunks('img', ['check', 'z.qcow2'])).toBe('');
    // A zstd compressed write loads the encoder; the read back, the decoder.
    expect(chunks('io', ['-c', 'write -c -P 7 0 64k', 'z.qcow2'])).toBe('wasm-zstd.cjs');
    expect(chunks('io', ['-c', 'read -P 7 0 64k', 'z.qcow2'])).toBe('fzstd.cjs');
    // zlib clusters go through the addon; without it (PREBUILDS_ONLY: no prebuild here), pako.
    expect(chunks('img', ['create', '-q', '-f', 'qcow2', 'c.qcow2', '1M'])).toBe('');
    expect(chunks('io', ['-c', 'write -c -P 9 0 64k', '-c', 'read -P 9 0 64k', 'c.qcow2'])).toBe('');
    expect(chunks('io', ['-c', 'write -c -P 8 64k 64k', '-c', 'read -P 8 64k 64k', 'c.qcow2'], { PREBUILDS_ONLY: '1' })).toBe('pako.cjs');
  });

  /**
   * Each of `runs` through one cached bundle, in turn: its status, whether the cache was taken
   * and by how much V8's cache of the script grew (whatever the runs compiled that it did not hold).
   */
  function cacheGrowth(runs: string[][]): { args: string; status: number; cached: boolean; grown: number }[] {
    writeFileSync(cache, pristine);
    writeFileSync(
      join(root, 'cache-growth.cjs'),
      `const { compileTool, runTool } = require('./bin/bundle.js');
      const tool = compileTool('img');
      const before = tool.script.createCachedData().length;
      const { main } = runTool(tool);
      const sink = { write: () => true };
      (async () => {
        for (const args of JSON.parse(process.argv[2])) {
          const status = await main(['node', 'blk-img', ...args], { stdout: sink, stderr: sink });
          console.log(JSON.stringify({ args: args.join(' '), status, cached: tool.cached, grown: tool.script.createCachedData().length - before }));
        }
      })();`,
    );
    const e: NodeJS.ProcessEnv = { ...process.env };
    delete e.NODE_OPTIONS;
    const r = spawnSync(process.execPath, [join(root, 'cache-growth.cjs'), JSON.stringify(runs)], { cwd: root, encoding: 'utf8', env: e, timeout: 120_000 });
    expect(r.stderr).toBe('');
    return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { args: string; status: number; cached: boolean; grown: number });
  }

  it("holds bench's request paths: a bench run compiles nothing the cache lacks", () => {
    // The bench rows time from the first request: a function compiled there from source
    // (parsed, then turned into bytecode) would be timed.
    const runs: string[][] = [];
    for (const f of ['raw', 'qed', 'qcow2']) {
      const img = `growth.${f}`;
      launch(root, 'img', ['create', '-q', '-f', f, img, '64M']);
      // Allocating writes at depth 1 and 16, rewrites, reads: the bench rows' kinds.
      for (const opts of ['-w -s 4k -S 64k -d 1 -c 64', '-w -s 64k -d 16 -c 64 -o 8M', '-w -s 64k -d 1 -c 64', '-s 64k -d 16 -c 64', '-s 4k -d 1 -c 64']) {
        runs.push(['bench', '-q', '-f', f, ...opts.split(' '), img]);
      }
    }
    expect(cacheGrowth(runs).map((x) => [x.args, x.status, x.cached, x.grown])).toEqual(runs.map((a) => [a.join(' '), 0, true, 0]));
  });

  it("holds the NBD client's paths: a convert out of blk-nbd compiles nothing the cache lacks", async () => {
    // A convert from an NBD export (bench row 13.3) runs the client's handshake, requests and
    // replies: compiled from source they had cost every such run some 25 M instructions.
    writeFileSync(join(root, 'exported.raw'), Buffer.alloc(3 << 20, 7));
    truncateSync(join(root, 'exported.raw'), 4 << 20);
    launch(root, 'img', ['create', '-q', '-f', 'raw', 'imported.raw', '4M']);
    const sock = join(root, 'growth-nbd.sock');
    const e: NodeJS.ProcessEnv = { ...process.env };
    delete e.NODE_OPTIONS;
    const server = spawn(process.execPath, [join(root, 'bin/blk-nbd.js'), '-r', '-t', '-k', sock, '-f', 'raw', 'exported.raw'], { cwd: root, env: e, stdio: 'ignore' });
    try {
      await waitForListen(sock, server);
      const runs = [['convert', '-n', '--target-is-zero', '-O', 'raw', `nbd+unix:///?socket=${sock}`, 'imported.raw']];
      expect(cacheGrowth(runs).map((x) => [x.args, x.status, x.cached, x.grown])).toEqual(runs.map((a) => [a.join(' '), 0, true, 0]));
      expect(readFileSync(join(root, 'imported.raw')).equals(readFileSync(join(root, 'exported.raw')))).toBe(true);
      // The launcher loads node:net before it sets V8's flags (node:v8 comes with them), so
      // that Node's cache of it is taken; a local convert does without it.
      writeFileSync(join(root, 'modules.cjs'), "process.on('exit', () => console.error('MODULES', process.moduleLoadList.join('|')));");
      // Without NODE_DEBUG: its first message, on a piped stderr, would load node:net.
      const order = (args: string[]): string[] => {
        const r = spawnSync(process.execPath, ['--require', join(root, 'modules.cjs'), join(root, 'bin/blk-img.js'), ...args], { cwd: root, encoding: 'utf8', env: e, timeout: 60_000 });
        expect(r.status).toBe(0);
        const loaded = /MODULES (.*)/.exec(r.stderr)?.[1].split('|') ?? [];
        return loaded.filter((m) => m === 'NativeModule net' || m === 'NativeModule v8');
      };
      expect(order(['convert', '-n', '--target-is-zero', '-O', 'raw', `nbd+unix:///?socket=${sock}`, 'imported.raw'])).toEqual(['NativeModule net', 'NativeModule v8']);
      expect(order(['convert', '-n', '--target-is-zero', '-O', 'raw', '-f', 'raw', 'exported.raw', 'imported.raw'])[0]).toBe('NativeModule v8');
    } finally {
      server.kill();
    }
  });

  it('convert takes the cache too, though it raises the interrupt budget', () => {
    writeFileSync(cache, pristine);
    const r = launch(root, 'img', ['convert', '-O', 'raw', 'no-such-file.raw', 'out.raw']);
    expect(r.status).toBe(1);
    expect(r.verdict).toBe('used');
  });

  it('raises the interrupt budget for convert (8x), bench and blk-nbd (4x) only, after taking the cache', () => {
    writeFileSync(cache, pristine);
    writeFileSync(lean, pristineLean);
    const run = (tool: string, args: string[]) => {
      const r = launch(root, tool, args);
      // The flag once the cache was taken: set before, it would make V8 reject the cache.
      const raised = /code cache used[^]*V8 flags: --interrupt-budget=(\d+)/.exec(r.stderr);
      return { verdict: r.verdict, raised: raised === null ? null : Number(raised[1]) / 67584 };
    };
    expect(run('img', ['bench', '-c', '1', 'no-such-file.qcow2'])).toEqual({ verdict: 'used', raised: 4 });
    expect(run('img', ['-q', 'convert', '-O', 'raw', 'no-such-file.raw', 'out.raw'])).toEqual({ verdict: 'used', raised: 8 });
    expect(run('img', ['check', 'no-such-file.qcow2'])).toEqual({ verdict: 'used', raised: null });
    expect(run('img', ['info', 'no-such-file.qcow2'])).toEqual({ verdict: 'used', raised: null });
    expect(run('img', ['--version'])).toEqual({ verdict: 'used', raised: null });
    expect(run('io', ['-c', 'help quit'])).toEqual({ verdict: 'used', raised: null });
    expect(run('nbd', ['--version'])).toEqual({ verdict: 'used', raised: 4 });
  });

  it('takes the lean cache but for convert and bench, the whole one without it', () => {
    writeFileSync(cache, pristine);
    writeFileSync(lean, pristineLean);
    expect(pristineLean.length).toBeLessThan(pristine.length);
    const which = (args: string[]): string | undefined => /img\.cjs(\.lean)?\.cache: code cache used/.exec(launch(root, 'img', args).stderr)?.[0];
    expect(which(['--version'])).toBe('img.cjs.lean.cache: code cache used');
    expect(which(['check', 'local.qcow2'])).toBe('img.cjs.lean.cache: code cache used');
    expect(which(['convert', '-O', 'raw', 'no-such-file.raw', 'out.raw'])).toBe('img.cjs.cache: code cache used');
    expect(which(['bench', '-c', '1', 'local.qcow2'])).toBe('img.cjs.cache: code cache used');
    rmSync(lean);
    expect(which(['--version'])).toBe('img.cjs.cache: code cache used');
    writeFileSync(lean, pristineLean);
  });

  it('runs from source without a cache', () => {
    rmSync(cache, { force: true });
    rmSync(lean, { force: true });
    const r = launch(root, 'img', ['--version']);
    expect([r.status, r.verdict]).toEqual([0, 'missing']);
    expect(r.stdout).toMatch(/^blk-img version /);
  });

  it('runs from source when the cache is corrupt', () => {
    // V8's header: magic, version hash, flag hash (as made by another Node or under other V8
    // flags), then a payload length longer than what follows (V8 takes a shorter one).
    const v8 = pristine.indexOf(0x0a) + 1;
    for (const field of [0, 4, 12, 16]) {
      const bad = Buffer.from(pristine);
      if (field === 16) bad.writeUInt32LE(bad.length, v8 + field);
      else bad[v8 + field] ^= 0x55;
      writeFileSync(cache, bad);
      const r = launch(root, 'img', ['--version']);
      expect([r.status, r.verdict]).toEqual([0, 'rejected']);
    }
    // Cut short, or not a cache at all; the lean one too.
    writeFileSync(cache, pristine.subarray(0, pristine.length >> 1));
    expect(launch(root, 'img', ['--version']).verdict).toBe('rejected');
    writeFileSync(lean, pristineLean.subarray(0, pristineLean.length >> 1));
    expect(launch(root, 'img', ['--version']).verdict).toBe('rejected');
    rmSync(lean);
    writeFileSync(cache, 'garbage');
    expect(launch(root, 'img', ['--version']).status).toBe(0);
  });

  it("ignores another build's cache", () => {
    // Same length, other build id: V8 alone would take it, the source's length being equal.
    const other = Buffer.from(pristine);
    other.write('X', other.indexOf(0x0a) - 1, 'latin1');
    writeFileSync(cache, other);
    const otherLean = Buffer.from(pristineLean);
    otherLean.write('X', otherLean.indexOf(0x0a) - 1, 'latin1');
    writeFileSync(lean, otherLean);
    const r = launch(root, 'img', ['--version']);
    expect([r.status, r.verdict]).toEqual([0, 'missing']);
  });

  it('falls back to the compiled modules without a bundle', () => {
    rmSync(join(root, 'dist/bin/img.cjs'));
    const r = launch(root, 'img', ['--version']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^blk-img version /);
    expect(r.verdict).toBe('none');
  });
});
