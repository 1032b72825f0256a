// `npm run bundle`: the tools as one CommonJS file each (dist/bin/<tool>.cjs, from what tsc
// emitted in dist/src), and next to each the V8 code cache that bin/bundle.js loads it with
// (<tool>.cjs.cache; blk-img has a lean one too, <tool>.cjs.lean.cache). CommonJS because
// Node 20 caches no compiled ES module: a script run through vm.Script takes V8's cachedData. The cache is made after a warm-up, a few runs of the
// tool on a scratch image, so that it also holds the functions those runs compiled (V8
// compiles a function on its first call; a cache made right after the compile would hold the
// top level only).
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, renameSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Script } from 'node:vm';
import * as esbuild from 'esbuild';
import { waitForListen } from './listen.js';

/**
 * The package to bundle: this repository, or the directory given (tests: a copy holding bin/
 * and, as compiled by tsc, dist/src).
 */
const ROOT = resolve(process.argv[2] ?? join(import.meta.dirname, '..'));
const OUT = join(ROOT, 'dist/bin');

/**
 * `bench` on a scratch image of format `f`: the bench rows time from the first request to the
 * last, so a function those requests compile lazily (parse, then bytecode) would be timed. A few
 * requests of each kind the rows send: allocating writes (on a fresh image, and over a backing
 * file for the formats that have one), rewrites in place and reads, at depth 1 and 16.
 */
function benchWarmUp(d: string, f: 'raw' | 'qed' | 'qcow2'): string[][] {
  const img = `${d}/bench.${f}`;
  const bench = (opts: string, file = img): string[] => ['bench', '-q', '-f', f, ...opts.split(' '), file];
  const runs = [
    ['create', '-q', '-f', f, img, '16M'],
    bench('-w -s 4k -S 64k -d 1 -c 32'),
    bench('-w -s 64k -d 16 -c 32 -o 4M'),
    bench('-w -s 64k -d 1 -c 32'),
    bench('-w -s 64k -d 16 -c 32'),
    bench('-s 64k -d 1 -c 32'),
    bench('-s 64k -d 16 -c 32'),
    bench('-s 4k -d 16 -c 32'),
  ];
  if (f === 'raw') return runs;
  const overlay = `${d}/overlay.${f}`;
  return [
    ...runs,
    ['create', '-q', '-f', f, '-b', img, '-F', f, overlay],
    bench('-w -s 4k -S 64k -d 16 -c 32', overlay),
  ];
}

/** The tools: bundle name, compiled entry, and the warm-up runs (argv after the program). */
interface Tool {
  name: string;
  entry: string;
  warmUp: (dir: string) => string[][];
  /** The warm-up of the lean cache (<tool>.cjs.lean.cache), for the runs that need little. */
  lean?: (dir: string) => string[][];
  /** Runs made after warmUp's while blk-nbd serves a scratch image at `uri` (withNbdServer). */
  nbdClient?: (dir: string, uri: string) => string[][];
}

/**
 * blk-img's runs on a small image, as the bench times them whole (check, info, map): the lean
 * cache's warm-up. bin/blk-img.js takes the lean cache for every subcommand but convert and
 * bench, whose request paths make the whole cache half as large again: V8 deserializes all of a
 * cache on every start (some 3 ms of check's 75 here).
 */
const imgLocalRuns = (d: string): string[][] => [
  ['--version'],
  ['create', '-q', '-f', 'qcow2', `${d}/a.qcow2`, '1M'],
  ['create', '-q', '-f', 'qed', `${d}/a.qed`, '1M'],
  ['info', `${d}/a.qcow2`],
  ['check', `${d}/a.qcow2`],
  ['check', `${d}/a.qed`],
  ['map', '--output=json', `${d}/a.qcow2`],
];

const TOOLS: Tool[] = [
  {
    name: 'img',
    entry: 'dist/src/tools/img/main.js',
    // What the bench times as whole processes: check, info, map, convert; then bench's own
    // request paths.
    warmUp: (d) => [
      ...imgLocalRuns(d),
      ['convert', '-O', 'raw', `${d}/a.qcow2`, `${d}/a.raw`],
      ['convert', '-O', 'qcow2', `${d}/a.raw`, `${d}/b.qcow2`],
      ...(['raw', 'qed', 'qcow2'] as const).flatMap((f) => benchWarmUp(d, f)),
    ],
    lean: imgLocalRuns,
    // convert out of an NBD export, as the bench times it (13.3): the client's handshake,
    // request and reply paths would otherwise be parsed and compiled in every such run.
    nbdClient: (d, uri) => [
      ['create', '-q', '-f', 'raw', `${d}/nbd-out.raw`, '4M'],
      ['convert', '-n', '--target-is-zero', '-O', 'raw', uri, `${d}/nbd-out.raw`],
    ],
  },
  {
    name: 'io',
    entry: 'dist/src/tools/io/main.js',
    warmUp: (d) => [['-c', 'write -P 1 0 4k', '-c', 'read -P 1 0 4k', `${d}/a.qcow2`]],
  },
  { name: 'nbd', entry: 'dist/src/tools/nbd/nbd.js', warmUp: () => [['--version']] },
];

/**
 * The sources import some of Node's modules on first use (`await import('node:net')`), and
 * esbuild keeps such an import() as it is. In a script run by vm.Script it would need a
 * dynamic import callback, which V8 loses when the script comes from a code cache: here it
 * becomes a require() made on first use, as esbuild does for the modules it bundles.
 */
const lazyNodeModules: esbuild.Plugin = {
  name: 'lazy-node-modules',
  setup(build) {
    build.onResolve({ filter: /^node:/ }, (args) => (args.kind === 'dynamic-import' ? { path: args.path, namespace: 'lazy-node' } : undefined));
    build.onLoad({ filter: /.*/, namespace: 'lazy-node' }, (args) => ({ contents: `module.exports = require(${JSON.stringify(args.path)});`, loader: 'js' }));
  },
};

/** How the bundles and the side chunks are built: one CommonJS file each, for Node 20. */
const COMMONJS = {
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // Non-ASCII characters escaped (esbuild's default, relied on): bin/bundle.js reads a bundle
  // as latin1.
  charset: 'ascii',
  // Every run reads its bundle and V8 copies it into a string: without the indentation and
  // line breaks it is a quarter smaller (its source map still gives the lines of dist/src).
  minifyWhitespace: true,
  logLevel: 'warning',
  write: false,
} as const satisfies esbuild.BuildOptions;

/**
 * Libraries that few runs use, each built into a file of its own next to the bundles
 * (dist/bin/<name>.cjs) and loaded on first use: zstd's encoder (libzstd in WebAssembly, a
 * quarter of a megabyte of base64, for zstd compressed writes), pako (zlib in JavaScript, which
 * qcow2 uses only where the native addon is missing) and fzstd (zstd reads). Every run reads
 * and copies the whole bundle and runs its top level: with them in it, the bundle was a third
 * larger, and their module bodies took some 0.7 ms of the top level's 2.3.
 */
const SIDE_CHUNKS: Record<string, string> = { '@hpcc-js/wasm-zstd': 'wasm-zstd', pako: 'pako', fzstd: 'fzstd' };

/** A side chunk's file name (in dist/bin) and the names it exports. */
interface SideChunk {
  file: string;
  exports: string[];
}

/** Build each of SIDE_CHUNKS into dist/bin as CommonJS. */
async function buildSideChunks(): Promise<Map<string, SideChunk>> {
  const chunks = new Map<string, SideChunk>();
  for (const [pkg, name] of Object.entries(SIDE_CHUNKS)) {
    const file = `${name}.cjs`;
    const result = await esbuild.build({ ...COMMONJS, entryPoints: [pkg], absWorkingDir: ROOT, outfile: join(OUT, file) });
    for (const f of result.outputFiles) writeAtomically(f.path, f.contents);
    // Its export names, from the chunk itself (esbuild lists none for CommonJS output).
    const exports = Object.keys(createRequire(import.meta.url)(join(OUT, file)) as object);
    chunks.set(pkg, { file, exports });
  }
  return chunks;
}

/**
 * A side chunk's place in a bundle: an object of getters, each of which loads the chunk on its
 * first call. A module that imports the library statically (qcow2's codecs) then loads it only
 * when a cluster is compressed or read, not when the module itself is set up. `__dirname` is
 * the bundle's directory (bin/bundle.js passes it).
 */
function sideChunks(chunks: Map<string, SideChunk>): esbuild.Plugin {
  return {
    name: 'side-chunks',
    setup(build) {
      build.onResolve({ filter: /.*/ }, (args) => (chunks.has(args.path) ? { path: args.path, namespace: 'side-chunk' } : undefined));
      build.onLoad({ filter: /.*/, namespace: 'side-chunk' }, (args) => {
        const { file, exports } = chunks.get(args.path) as SideChunk;
        const contents = [
          'let chunk;',
          `const load = () => (chunk ??= require(__dirname + ${JSON.stringify(`/${file}`)}));`,
          "Object.defineProperty(exports, '__esModule', { value: true });",
          `for (const k of ${JSON.stringify(exports)}) Object.defineProperty(exports, k, { enumerable: true, get: () => load()[k] });`,
        ].join('\n');
        return { contents, loader: 'js' };
      });
    },
  };
}

/** What bin/bundle.js exports (CommonJS, untyped). */
interface BundleLoader {
  compileTool(name: string, variant?: string, scriptName?: string): { script: Script; file: string; cached: boolean } | null;
  runTool(tool: { script: Script; file: string }): { main: (argv: string[], io?: object) => Promise<number> };
}

/** Write through a temporary name and rename: a tool started meanwhile never reads half a file. */
function writeAtomically(path: string, data: string | Uint8Array): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

/** Bundle one tool; returns the build id, the bundle's first line. */
async function bundle(tool: Tool, chunks: Map<string, SideChunk>): Promise<string> {
  // The first line identifies this build: the cache is used only with the bundle it was made
  // from (bin/bundle.js compares it).
  const id = `// blocklayer ${tool.name} bundle ${randomUUID()}`;
  const result = await esbuild.build({
    ...COMMONJS,
    entryPoints: { [tool.name]: join(ROOT, tool.entry) },
    sourcemap: true,
    outdir: OUT,
    outExtension: { '.js': '.cjs' },
    // The file is the function that CommonJS would wrap it in (bin/bundle.js runs it as is):
    // wrapping a megabyte at run time made V8 copy it into one flat string on every start.
    // Its body is strict, as the ES modules it is made of are (esbuild's own "use strict"
    // depends on the tsconfig it finds, and only a directive before any statement counts).
    banner: { js: `${id}\n(function (exports, require, module, __filename, __dirname, __bundle_meta) {\n'use strict';` },
    footer: { js: '})' },
    // The file driver finds the package root (the addon) from import.meta.url: a getter of the
    // loader's (bin/bundle.js), which makes the URL only for the runs that look for the addon.
    define: { 'import.meta.url': '__bundle_meta.url' },
    plugins: [lazyNodeModules, sideChunks(chunks)],
  });
  for (const f of result.outputFiles) writeAtomically(f.path, f.contents);
  return id;
}

/** The image blk-nbd serves for nbdClient warm-ups: 4 MiB, 3 MiB of data and a hole. */
const NBD_SOURCE_BYTES = 4 << 20;

/**
 * Run `fn` while blk-nbd (this build, a process of its own) serves a scratch image read-only
 * on a unix socket in `dir`; `fn` gets the export's URI. The server exits when its one client
 * has gone (no -t), and is waited for.
 */
async function withNbdServer(dir: string, fn: (uri: string) => Promise<void>): Promise<void> {
  const img = join(dir, 'nbd-src.raw');
  const sock = join(dir, 'nbd.sock');
  writeFileSync(img, Buffer.alloc(NBD_SOURCE_BYTES - (1 << 20), 0x5a));
  truncateSync(img, NBD_SOURCE_BYTES);
  rmSync(sock, { force: true });
  const child = spawn(process.execPath, [join(ROOT, 'bin/blk-nbd.js'), '-r', '-f', 'raw', '-k', sock, img], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    await waitForListen(sock, child);
    await fn(`nbd+unix:///?socket=${sock}`);
  } finally {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
  }
}

/**
 * Run a warm-up through the bundle, then save what V8 compiled as <tool>.cjs<variant>.cache.
 * The lean variant's script is named otherwise than the file: V8 would reuse the whole one's
 * compiled script (and put all of it in the cache) if both had the same name.
 */
async function makeCache(
  loader: BundleLoader,
  tool: Tool,
  id: string,
  dir: string,
  variant: '' | '.lean',
  runs: string[][],
  nbdClient?: (dir: string, uri: string) => string[][],
): Promise<void> {
  const file = join(OUT, `${tool.name}.cjs`);
  const compiled = loader.compileTool(tool.name, variant, `${file}${variant}`);
  if (compiled === null) throw new Error(`dist/bin/${tool.name}.cjs was not written`);
  const { main } = loader.runTool(compiled);
  const sink = { write: () => true };
  mkdirSync(dir, { recursive: true });
  const warmUp = async (list: string[][]): Promise<void> => {
    for (const args of list) {
      const status = await main(['node', `blk-${tool.name}`, ...args], { stdout: sink, stderr: sink });
      if (status !== 0) throw new Error(`warm-up of blk-${tool.name} ${args.join(' ')} exited with ${status}`);
    }
  };
  await warmUp(runs);
  if (nbdClient) await withNbdServer(dir, (uri) => warmUp(nbdClient(dir, uri)));
  writeAtomically(`${file}${variant}.cache`, Buffer.concat([Buffer.from(`${id}\n`, 'latin1'), compiled.script.createCachedData()]));
}

const loader = createRequire(import.meta.url)(join(ROOT, 'bin/bundle.js')) as BundleLoader;
const dir = mkdtempSync(join(tmpdir(), 'blk-bundle-'));
try {
  mkdirSync(OUT, { recursive: true });
  const chunks = await buildSideChunks();
  const ids = await Promise.all(TOOLS.map((t) => bundle(t, chunks)));
  for (const [i, tool] of TOOLS.entries()) {
    // The lean warm-up in a directory of its own: the others share theirs (blk-io's uses an image of blk-img's).
    const leanDir = join(dir, `${tool.name}-lean`);
    if (tool.lean) await makeCache(loader, tool, ids[i], leanDir, '.lean', tool.lean(leanDir));
    await makeCache(loader, tool, ids[i], dir, '', tool.warmUp(dir), tool.nbdClient);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
