// `npx tsx bench/alloc.ts [--no-build] [--top N] [--only FORMAT]`
//
// The block layer's own cost per request, without file I/O in the way: `blk-img bench` runs in
// this process over in-memory (`mem:`) images, and for each case we report the CPU time per
// request (process.cpuUsage: stable on a loaded machine, unlike wall time) and the bytes of
// garbage allocated per request (V8's sampling heap profiler, counting objects that were
// already collected), with the functions that allocate most. The compiled code in dist/ is
// measured, as `npm run bench` does.
import { Session } from 'node:inspector/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { REPO, run } from './lib.js';

type BenchModule = typeof import('../src/tools/img/bench.js');
type IndexModule = typeof import('../src/index.js');

interface SamplingNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: SamplingNode[];
}

const CASES: Array<{ name: string; format: 'qed' | 'raw' | 'qcow2'; args: string[]; count: number }> = [
  { name: 'qed 4 KiB read', format: 'qed', args: ['-s', '4k'], count: 65536 },
  { name: 'qed 4 KiB rewrite', format: 'qed', args: ['-w', '-s', '4k'], count: 65536 },
  { name: 'qed 64 KiB read', format: 'qed', args: ['-s', '64k'], count: 8192 },
  { name: 'raw 4 KiB read', format: 'raw', args: ['-s', '4k'], count: 65536 },
  { name: 'raw 4 KiB write', format: 'raw', args: ['-w', '-s', '4k'], count: 65536 },
  // A mem: file has no page cache to ask: qcow2 reads of data take the ordinary path here.
  { name: 'qcow2 4 KiB read', format: 'qcow2', args: ['-s', '4k'], count: 65536 },
  { name: 'qcow2 4 KiB rewrite', format: 'qcow2', args: ['-w', '-s', '4k'], count: 65536 },
  { name: 'qcow2 64 KiB rewrite', format: 'qcow2', args: ['-w', '-s', '64k'], count: 8192 },
];

const IMAGE_SIZE = 1024 * 1024 * 1024;

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const top = argv.includes('--top') ? Number.parseInt(argv[argv.indexOf('--top') + 1] ?? '8', 10) : 8;
  const only = argv.includes('--only') ? argv[argv.indexOf('--only') + 1] : undefined;
  if (!argv.includes('--no-build')) {
    try {
      run(['npx', 'tsc', '-p', 'tsconfig.build.json'], { cwd: REPO });
    } catch {
      process.stderr.write('warning: the build reported errors; using the emitted JavaScript\n');
    }
  }
  const url = (p: string): string => pathToFileURL(join(REPO, p)).href;
  const { imgBench } = (await import(url('dist/src/tools/img/bench.js'))) as BenchModule;
  const { bdrvCreate } = (await import(url('dist/src/index.js'))) as IndexModule;
  const quiet = { stdout: (): void => undefined, stderr: (s: string): void => void process.stderr.write(s) };
  const session = new Session();
  session.connect();

  for (const c of CASES) {
    if (only !== undefined && c.format !== only) continue;
    const name = `mem:alloc-${c.format}`;
    try {
      await bdrvCreate(name, { format: c.format, options: { size: IMAGE_SIZE } });
    } catch {
      // Already made by an earlier case of the same format.
    }
    // Allocate the region first (reads then hit data clusters), and warm the JIT up.
    await imgBench(['-f', c.format, '-w', '-s', '1M', '-d', '16', '-c', '256', '--pattern=0x5a', name], quiet, 'blk-img');
    const args = ['-f', c.format, '-d', '16', '-c', String(c.count), ...c.args, name];
    await imgBench(args, quiet, 'blk-img');

    const cpu0 = process.cpuUsage();
    for (let i = 0; i < 3; i++) await imgBench(args, quiet, 'blk-img');
    const cpu = process.cpuUsage(cpu0);
    const cpuUs = (cpu.user + cpu.system) / (3 * c.count);

    await session.post('HeapProfiler.startSampling', {
      samplingInterval: 512,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
    await imgBench(args, quiet, 'blk-img');
    const { profile } = (await session.post('HeapProfiler.stopSampling')) as { profile: { head: SamplingNode } };
    const byFn = new Map<string, number>();
    let total = 0;
    const walk = (n: SamplingNode): void => {
      const cf = n.callFrame;
      const where = cf.url.startsWith('file://') ? `${new URL(cf.url).pathname.replace(`${REPO}/`, '')}:${cf.lineNumber + 1}` : cf.url;
      const key = `${cf.functionName || '(anonymous)'}${where ? ` ${where}` : ''}`;
      byFn.set(key, (byFn.get(key) ?? 0) + n.selfSize);
      total += n.selfSize;
      for (const ch of n.children) walk(ch);
    };
    walk(profile.head);
    process.stdout.write(`${c.name}: ${cpuUs.toFixed(2)} us CPU, ${(total / c.count).toFixed(0)} bytes allocated per request\n`);
    for (const [k, v] of [...byFn.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      if (v / c.count >= 1) process.stdout.write(`  ${String(Math.round(v / c.count)).padStart(6)}  ${k}\n`);
    }
  }
  session.disconnect();
}

await main();
