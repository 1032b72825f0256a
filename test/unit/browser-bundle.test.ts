// The browser build: the browser entry bundles for platform=browser with no Node builtin
// anywhere in its inputs, and `import 'blocklayer'` under the browser condition resolves to it.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { join, resolve } from 'node:path';
import * as esbuild from 'esbuild';
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const root = resolve(import.meta.dirname, '../..');
const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

/** Every import of every input of a build, and the inputs themselves. */
function importsOf(meta: esbuild.Metafile): { inputs: string[]; imports: string[] } {
  const inputs = Object.keys(meta.inputs);
  const imports = Object.values(meta.inputs).flatMap((i) => i.imports.map((imp) => imp.path));
  return { inputs, imports };
}

function bundle(entry: string, platform: esbuild.Platform): Promise<esbuild.BuildResult<{ write: false; metafile: true }>> {
  return esbuild.build({ entryPoints: [entry], bundle: true, platform, format: 'esm', write: false, metafile: true, logLevel: 'silent' });
}

function expectNoNode(meta: esbuild.Metafile): void {
  const { inputs, imports } = importsOf(meta);
  expect(imports.filter((p) => p.startsWith('node:') || builtins.has(p))).toEqual([]);
  expect(inputs.filter((p) => p.startsWith('node:') || builtins.has(p))).toEqual([]);
  // The Node-only parts of the package stay out.
  expect(inputs.filter((p) => /drivers\/file\/|node-transport|src\/tools\//.test(p))).toEqual([]);
}

describe('browser entry', () => {
  it('bundles for the browser without any Node builtin', async () => {
    const r = await bundle(join(root, 'src/browser.ts'), 'browser');
    expectNoNode(r.metafile);
    const { inputs } = importsOf(r.metafile);
    for (const drv of ['qed', 'qcow2', 'raw', 'mem', 'blkdebug', 'blkverify', 'powerloss', 'http']) {
      expect(inputs.some((p) => p.includes(`src/drivers/${drv}/`))).toBe(true);
    }
  });

  it('the Node entry does pull Node in (the check can fail)', async () => {
    const r = await bundle(join(root, 'src/index.ts'), 'node');
    expect(() => expectNoNode(r.metafile)).toThrow();
  });

  describe("import 'blocklayer' with the browser condition", () => {
    const dir = makeTempDir('blocklayer-browser');
    afterAll(() => removeTempDir(dir));

    it('resolves to the browser entry and runs', { timeout: 180_000 }, async () => {
      // A fresh build of the package in a temporary copy: the package's own exports map is
      // what resolves 'blocklayer', as in a user's project.
      const pkg = join(dir, 'pkg');
      mkdirSync(pkg);
      cpSync(join(root, 'package.json'), join(pkg, 'package.json'));
      symlinkSync(join(root, 'node_modules'), join(pkg, 'node_modules'));
      const tsc = spawnSync(
        process.execPath,
        [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'tsconfig.build.json'), '--outDir', join(pkg, 'dist')],
        { encoding: 'utf8', timeout: 170_000 },
      );
      expect(tsc.stdout + tsc.stderr).toBe('');
      expect(tsc.status).toBe(0);

      const entry = join(pkg, 'page.js');
      writeFileSync(
        entry,
        [
          "import { defaultRegistry, BlockBackend, bdrvCreate, memStoreCreate } from 'blocklayer';",
          'memStoreCreate("page", 4096);',
          'const blk = await BlockBackend.open("mem:page", { format: "raw" });',
          'await blk.pwrite(0, new Uint8Array([1, 2, 3]));',
          'const back = new Uint8Array(3);',
          'await blk.pread(0, back);',
          'await blk.close();',
          // zstd compressed clusters: the encoder (wasm) comes with the bundle, loaded on use.
          'await bdrvCreate("mem:z", { format: "qcow2", options: { size: 1 << 20, compressionType: "zstd" } });',
          'const z = await BlockBackend.open("mem:z", { format: "qcow2" });',
          'await z.pwriteCompressed(0, new Uint8Array(65536).fill(7));',
          'const zback = new Uint8Array(65536);',
          'await z.pread(0, zback);',
          'const zstd = { compressed: (await z.root.check({})).compressedClusters, sum: zback.reduce((a, b) => a + b, 0) };',
          'await z.close();',
          'globalThis.result = { drivers: defaultRegistry.list().map((d) => d.formatName), back: [...back], zstd };',
        ].join('\n'),
      );
      const r = await bundle(entry, 'browser');
      expectNoNode(r.metafile);
      const inputs = Object.keys(r.metafile.inputs);
      expect(inputs.filter((p) => p.endsWith('pkg/dist/src/browser.js'))).toHaveLength(1);
      expect(inputs.filter((p) => p.endsWith('pkg/dist/src/index.js'))).toEqual([]);

      // Run the bundle as a page would: a data: URL module, nothing of Node in reach.
      const code = r.outputFiles[0].text;
      await import(`data:text/javascript;base64,${Buffer.from(code).toString('base64')}`);
      const result = (globalThis as { result?: { drivers: string[]; back: number[]; zstd: { compressed: number; sum: number } } }).result;
      expect(result?.back).toEqual([1, 2, 3]);
      expect(result?.zstd).toEqual({ compressed: 1, sum: 7 * 65536 });
      expect(result?.drivers).toContain('http');
      expect(result?.drivers).toContain('qed');
      expect(result?.drivers).toContain('qcow2');
      expect(result?.drivers).not.toContain('file');
    });
  });
});

