// Build the teaching page: web/src/main.ts bundled for browsers into web/dist/teach.js, and a
// base image (web/dist/base.raw) that the page reads over http under its overlays. Everything
// in web/ and web/dist/ is static: any server that answers Range requests can host it.
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join, normalize, resolve } from 'node:path';
import * as esbuild from 'esbuild';

export const WEB_ROOT = resolve(import.meta.dirname);
const SRC = resolve(WEB_ROOT, '../src');

/** Size and pattern of the base image: every 4 KiB cluster filled with its own index byte. */
export const BASE_SIZE = 1 << 20;
export const BASE_CLUSTER = 4096;

export function baseImage(): Uint8Array {
  const b = new Uint8Array(BASE_SIZE);
  for (let c = 0; c < BASE_SIZE / BASE_CLUSTER; c++) b.fill(0x40 + (c % 0x3f), c * BASE_CLUSTER, (c + 1) * BASE_CLUSTER);
  return b;
}

/**
 * The tools import the package's entry (src/index.ts); in the page that is the browser entry,
 * exactly what the package's `browser` export condition gives a bundler.
 */
const browserEntry: esbuild.Plugin = {
  name: 'blocklayer-browser-entry',
  setup(build) {
    build.onResolve({ filter: /\/index\.js$/ }, (args) => {
      const target = resolve(args.resolveDir, args.path);
      if (target === join(SRC, 'index.js')) return { path: join(SRC, 'browser.ts') };
      return undefined;
    });
  },
};

/**
 * Write through a temporary name and rename: the test files build the page concurrently, and a
 * page served meanwhile must never load a half-written bundle.
 */
function writeAtomically(path: string, data: Uint8Array): void {
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

export async function buildPage(): Promise<esbuild.Metafile> {
  const outdir = join(WEB_ROOT, 'dist');
  mkdirSync(outdir, { recursive: true });
  const r = await esbuild.build({
    entryPoints: { teach: join(WEB_ROOT, 'src/main.ts'), 'opfs-worker': join(SRC, 'drivers/opfs/worker.ts') },
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: 'es2022',
    sourcemap: true,
    metafile: true,
    logLevel: 'warning',
    outdir,
    plugins: [browserEntry],
    write: false,
  });
  for (const f of r.outputFiles) writeAtomically(f.path, f.contents);
  writeAtomically(join(outdir, 'base.raw'), baseImage());
  return r.metafile;
}

// `npm run teach:build`: the static files alone, to host elsewhere.
if (process.argv[1] !== undefined && import.meta.filename === normalize(process.argv[1])) {
  await buildPage();
  console.log(`built ${join(WEB_ROOT, 'dist')}: copy ${WEB_ROOT}/index.html, style.css and dist/ to any static host that answers Range requests`);
}
