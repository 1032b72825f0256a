// The package as users install it: `npm pack` a copy of this checkout (prepack builds the
// prebuilt addon), install the tarball into a fresh project with install scripts ignored and
// no network (dependencies come from the npm cache that `npm ci` filled), then use it: the
// shipped prebuild must load, and with it removed the pure-JS path must still work.
// Needs npm, a C toolchain (prebuildify runs node-gyp) and linux-x64, the platform prebuilt;
// missing ones skip locally but fail under CI=true.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findOnPath, makeTempDir, removeTempDir } from './qemu.js';

const ROOT = resolve(import.meta.dirname, '../..');
const PLATFORM_OK = process.platform === 'linux' && process.arch === 'x64';
const TOOLS_OK = findOnPath('npm') !== null && (findOnPath('cc') !== null || findOnPath('gcc') !== null);
if (process.env.CI === 'true' && !(PLATFORM_OK && TOOLS_OK)) {
  throw new Error('npm pack test: needs linux-x64, npm and a C compiler under CI');
}

/** What `npm pack` builds from: the sources, not this checkout's dist/, build/ or prebuilds/. */
const PACKED_INPUTS = ['package.json', 'package-lock.json', 'README.md', 'tsconfig.json', 'tsconfig.build.json', 'binding.gyp', 'src', 'scripts', 'bin', 'native'];

/** Shared libraries any glibc program may need; nothing else (liburing above all) may appear. */
const SYSTEM_LIBS = /^(linux-vdso\.so\.1|libc\.so\.6|libpthread\.so\.0|libdl\.so\.2|libm\.so\.6|\/lib64\/ld-linux-x86-64\.so\.2)$/;

function sh(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}, timeoutMs = 60_000): string {
  const r = spawnSync(cmd, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', timeout: timeoutMs });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')}: status ${String(r.status)} ${String(r.signal)}\n${r.stdout}\n${r.stderr}`);
  }
  return r.stdout;
}

interface LockEntry {
  version?: string;
  resolved?: string;
  integrity?: string;
  dependencies?: Record<string, string>;
  [k: string]: unknown;
}

/**
 * A lockfile for a project depending on `tarball` alone: the tarball's entry plus its runtime
 * dependencies' entries copied from this repository's lock (same versions and integrities, so
 * `npm ci --offline` finds every tarball in the cache without asking the registry).
 */
function consumerLock(tarball: string, spec: string): object {
  const repoLock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
    version: string;
    dependencies: Record<string, string>;
    bin: Record<string, string>;
  };
  const integrity = `sha512-${createHash('sha512').update(readFileSync(tarball)).digest('base64')}`;
  const packages: Record<string, LockEntry> = {
    '': { name: 'consumer', version: '1.0.0', dependencies: { blocklayer: spec } },
    'node_modules/blocklayer': { version: pkg.version, resolved: spec, integrity, dependencies: pkg.dependencies, bin: pkg.bin, hasInstallScript: true },
  };
  // Walk the dependency closure the way Node resolves it: nested node_modules first, then up.
  const todo: [string, string][] = Object.keys(pkg.dependencies).map((d) => ['node_modules/blocklayer', d]);
  for (let item = todo.pop(); item !== undefined; item = todo.pop()) {
    const [from, name] = item;
    let at: string | null = null;
    for (let dir = from; ; dir = dir.slice(0, Math.max(0, dir.lastIndexOf('/node_modules/')))) {
      const candidate = `${dir === 'node_modules/blocklayer' ? '' : dir + '/'}node_modules/${name}`;
      if (candidate in repoLock.packages) {
        at = candidate;
        break;
      }
      if (!dir.includes('/node_modules/')) break;
    }
    if (at === null) at = `node_modules/${name}`;
    if (at in packages) continue;
    const entry = repoLock.packages[at];
    if (entry === undefined) throw new Error(`package-lock.json has no entry for ${name}`);
    const { dev: _dev, devOptional: _devOptional, ...kept } = entry;
    // This lock leaves out registry URLs; without one npm would ask the registry for it.
    kept.resolved ??= `https://registry.npmjs.org/${name}/-/${name.replace(/^@[^/]+\//, '')}-${String(entry.version)}.tgz`;
    packages[at] = kept;
    for (const d of Object.keys(entry.dependencies ?? {})) todo.push([at, d]);
  }
  return { name: 'consumer', version: '1.0.0', lockfileVersion: 3, requires: true, packages };
}

/** A program using the installed package: what it reports, as JSON on stdout. */
const PROBE = `
import { BlockBackend, addonPath, ioEngineName } from 'blocklayer';
const blk = await BlockBackend.open(process.argv[2]);
const buf = new Uint8Array(4096).fill(0xa5);
await blk.pwrite(65536, buf);
const back = new Uint8Array(4096);
await blk.pread(65536, back);
await blk.close();
console.log(JSON.stringify({ engine: ioEngineName(), addon: addonPath(), same: back.every((b) => b === 0xa5) }));
`;

interface MapExtent {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

describe.skipIf(!(PLATFORM_OK && TOOLS_OK))('npm pack: the package as installed', () => {
  let dir = '';
  let tarball = '';
  let app = '';

  beforeAll(() => {
    dir = makeTempDir('blocklayer-pack');
    const src = join(dir, 'src');
    mkdirSync(src);
    for (const f of PACKED_INPUTS) cpSync(join(ROOT, f), join(src, f), { recursive: true });
    // The build tools (tsc, esbuild, prebuildify) come from this checkout.
    symlinkSync(join(ROOT, 'node_modules'), join(src, 'node_modules'));
    const out = join(dir, 'out');
    mkdirSync(out);
    // prepare (tsc, bundle) and prepack (prebuildify) run here, in the copy.
    sh('npm', ['pack', '--pack-destination', out, '--no-audit', '--no-fund'], src, {}, 240_000);
    const name = readdirSync(out).find((f) => f.endsWith('.tgz'));
    if (name === undefined) throw new Error('npm pack made no tarball');
    tarball = join(out, name);

    app = join(dir, 'app');
    mkdirSync(app);
    const spec = `file:../out/${name}`;
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module', dependencies: { blocklayer: spec } }));
    writeFileSync(join(app, 'package-lock.json'), JSON.stringify(consumerLock(tarball, spec)));
    writeFileSync(join(app, 'probe.mjs'), PROBE);
    // As where npm holds install scripts for approval: nothing runs, nothing is compiled.
    sh('npm', ['ci', '--ignore-scripts', '--offline', '--no-audit', '--no-fund'], app, {}, 120_000);
  }, 420_000);

  afterAll(() => {
    if (dir !== '') removeTempDir(dir);
  });

  it('ships the linux-x64 prebuild, no build/, and the prebuild needs only libc', () => {
    const files = sh('tar', ['tzf', tarball], dir).split('\n');
    const prebuilds = files.filter((f) => /^package\/prebuilds\/linux-x64\/[^/]+\.node$/.test(f));
    expect(prebuilds).toHaveLength(1);
    expect(files.filter((f) => f.startsWith('package/build/'))).toEqual([]);
    expect(files).toContain('package/dist/bin/img.cjs');
    expect(files).toContain('package/dist/bin/img.cjs.cache');
    // The libraries few runs use, next to the bundles (scripts/bundle.ts, SIDE_CHUNKS).
    for (const f of ['wasm-zstd', 'pako', 'fzstd']) expect(files).toContain(`package/dist/bin/${f}.cjs`);
    const installed = join(app, 'node_modules', prebuilds[0].replace(/^package/, 'blocklayer'));
    const libs = sh('ldd', [installed], dir)
      .split('\n')
      .map((l) => l.trim().split(/\s+/)[0])
      .filter((l) => l !== '');
    expect(libs.filter((l) => !SYSTEM_LIBS.test(l))).toEqual([]);
  });

  it('loads the shipped prebuild with install scripts ignored', () => {
    const blk = (args: string[]) => sh('npx', ['--no-install', 'blk-img', ...args], app);
    expect(blk(['--version'])).toMatch(/^blk-img version \S+/);
    blk(['create', '-f', 'raw', 'disk.raw', '1M']);
    expect(blk(['info', 'disk.raw'])).toMatch(/file format: raw\nvirtual size: 1 MiB \(1048576 bytes\)/);
    // Holes are found (lseek SEEK_DATA): past the first block, which create writes as QEMU does,
    // a fresh raw file is one zero, data-less extent.
    const map = JSON.parse(blk(['map', '--output=json', 'disk.raw'])) as MapExtent[];
    expect(map).toMatchObject([
      { start: 0, length: 4096, data: true },
      { start: 4096, length: 1044480, data: false, zero: true },
    ]);
    // zstd's encoder and decoder, loaded from their files of their own on first use.
    blk(['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', 'disk.raw', 'disk-zstd.qcow2']);
    expect(blk(['compare', 'disk.raw', 'disk-zstd.qcow2'])).toBe('Images are identical.\n');

    const probe = JSON.parse(sh('node', ['probe.mjs', 'disk.raw'], app)) as { engine: string; addon: string | null; same: boolean };
    expect(probe.same).toBe(true);
    expect(['io_uring', 'threads']).toContain(probe.engine);
    expect(probe.addon).toMatch(/node_modules\/blocklayer\/prebuilds\/linux-x64\/[^/]+\.node$/);
    // BLOCKLAYER_IO_ENGINE still picks the path.
    for (const forced of ['threads', 'fs']) {
      const p = JSON.parse(sh('node', ['probe.mjs', 'disk.raw'], app, { BLOCKLAYER_IO_ENGINE: forced })) as { engine: string };
      expect(p.engine).toBe(forced);
    }
  });

  it('falls back to pure JS when no addon ships for the platform', () => {
    rmSync(join(app, 'node_modules', 'blocklayer', 'prebuilds'), { recursive: true });
    const blk = (args: string[]) => sh('npx', ['--no-install', 'blk-img', ...args], app);
    blk(['create', '-f', 'raw', 'plain.raw', '1M']);
    expect(blk(['info', 'plain.raw'])).toMatch(/file format: raw/);
    // As the README says: without lseek every byte of a host file is data.
    const map = JSON.parse(blk(['map', '--output=json', 'plain.raw'])) as MapExtent[];
    expect(map).toMatchObject([{ start: 0, length: 1048576, data: true, zero: false }]);
    const probe = JSON.parse(sh('node', ['probe.mjs', 'plain.raw'], app)) as { engine: string; addon: string | null; same: boolean };
    expect(probe).toEqual({ engine: 'fs', addon: null, same: true });
  });
});
