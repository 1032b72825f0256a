// The benchmark workloads (issue "Performance"): each is one `bench` (or `convert`) command run
// identically by qemu-img and blk-img on identical images. Shared source images are made once
// per session with qemu-img, so both tools read the very same bytes and layout.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { run } from './lib.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

export type Tool = 'qemu' | 'ours';

export interface Ctx {
  dir: string;
  qemuImg: string;
  /** Images already made in this session (lazy, shared between workloads). */
  made: Set<string>;
}

export interface Workload {
  /** '1', '4w', '8.2'... */
  id: string;
  /** What `--only` selects: '1'..'8', 'mem'. */
  group: string;
  title: string;
  kind: 'bench' | 'convert';
  format: 'qed' | 'raw';
  /** Bytes moved by one run, for the throughput column. */
  bytes: number;
  /** For a raw row: the id of the QED workload it mirrors (QED overhead column). */
  twinOf?: string;
  /** Arguments after the subcommand, made ready for a run of `tool` (fresh images made here). */
  prepare(ctx: Ctx, tool: Tool): string[];
  /** Remove what one run produced, if anything. */
  cleanup?(ctx: Ctx): void;
}

function qemuImg(ctx: Ctx, ...args: string[]): void {
  run([ctx.qemuImg, ...args]);
}

/** A 4 GiB image whose first 1 GiB is written with 0xa5 (made once, reused: reads, rewrites). */
function dataImage(ctx: Ctx, format: 'qed' | 'raw'): string {
  const f = join(ctx.dir, `data.${format}`);
  if (!ctx.made.has(f)) {
    qemuImg(ctx, 'create', '-q', '-f', format, f, '4G');
    qemuImg(ctx, 'bench', '-q', '-f', format, '-w', '-t', 'unsafe', '-s', '1M', '-d', '16', '-c', '1024', '--pattern=0xa5', f);
    ctx.made.add(f);
  }
  return f;
}

/** A brand-new empty image for one run (allocating writes). */
function freshImage(ctx: Ctx, format: 'qed' | 'raw', size: string, name = `fresh.${format}`): string {
  const f = join(ctx.dir, name);
  rmSync(f, { force: true });
  qemuImg(ctx, 'create', '-q', '-f', format, f, size);
  return f;
}

/** 1 GiB raw backing file, first 256 MiB written (made once). */
function backingRaw(ctx: Ctx): string {
  const f = join(ctx.dir, 'backing.raw');
  if (!ctx.made.has(f)) {
    qemuImg(ctx, 'create', '-q', '-f', 'raw', f, '1G');
    qemuImg(ctx, 'bench', '-q', '-f', 'raw', '-w', '-t', 'unsafe', '-s', '1M', '-d', '16', '-c', '256', '--pattern=0x3c', f);
    ctx.made.add(f);
  }
  return f;
}

/** 1 GiB raw convert source, every other MiB written: half data, half holes (made once). */
function convertSource(ctx: Ctx): string {
  const f = join(ctx.dir, 'convert-src.raw');
  if (!ctx.made.has(f)) {
    qemuImg(ctx, 'create', '-q', '-f', 'raw', f, '1G');
    qemuImg(ctx, 'bench', '-q', '-f', 'raw', '-w', '-t', 'unsafe', '-s', '1M', '-S', '2M', '-d', '16', '-c', '512', '--pattern=0x5a', f);
    ctx.made.add(f);
  }
  return f;
}

function benchArgs(format: 'qed' | 'raw', f: string, opts: string): string[] {
  return ['-f', format, ...opts.split(' '), f];
}

/** 1-5 exist for both formats: QED first, then the raw mirror (workload 8). */
function pair(
  id: string,
  group: string,
  title: string,
  bytes: number,
  make: (ctx: Ctx, format: 'qed' | 'raw') => string[],
): Workload[] {
  const qed: Workload = { id, group, title, kind: 'bench', format: 'qed', bytes, prepare: (ctx) => make(ctx, 'qed') };
  const raw: Workload = {
    id: `8.${id}`,
    group: '8',
    title: `raw: ${title}`,
    kind: 'bench',
    format: 'raw',
    bytes,
    twinOf: id,
    prepare: (ctx) => make(ctx, 'raw'),
  };
  return [qed, raw];
}

export function allWorkloads(): Workload[] {
  const seq = '-s 64k -d 16 -c 4096';
  const small = '-s 4k -d 16 -c 65536';
  const list: Workload[] = [
    ...pair('1', '1', '64 KiB sequential allocating writes, fresh 4 GiB image, depth 16, 4096 req', 4096 * 64 * KiB, (ctx, fmt) =>
      benchArgs(fmt, freshImage(ctx, fmt, '4G'), `-w ${seq}`),
    ),
    ...pair('2', '2', '64 KiB sequential reads, depth 16, 4096 req', 4096 * 64 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), seq),
    ),
    ...pair('3', '3', '64 KiB rewrites in place, depth 16, 4096 req', 4096 * 64 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), `-w ${seq}`),
    ),
    ...pair('4w', '4', '4 KiB writes over an allocated region, depth 16, 65536 req', 65536 * 4 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), `-w ${small}`),
    ),
    ...pair('4r', '4', '4 KiB reads over an allocated region, depth 16, 65536 req', 65536 * 4 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), small),
    ),
    ...pair('5', '5', '4 KiB reads, 64 KiB step across 1 GiB, depth 16, 16384 req', 16384 * 4 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), '-s 4k -S 64k -d 16 -c 16384'),
    ),
    {
      id: '6',
      group: '6',
      title: '4 KiB allocating writes, 64 KiB step, over a raw backing file (COW), depth 16, 4096 req',
      kind: 'bench',
      format: 'qed',
      bytes: 4096 * 4 * KiB,
      prepare: (ctx) => {
        const back = backingRaw(ctx);
        const f = join(ctx.dir, 'overlay.qed');
        rmSync(f, { force: true });
        qemuImg(ctx, 'create', '-q', '-f', 'qed', '-b', back, '-F', 'raw', f);
        return benchArgs('qed', f, '-w -s 4k -S 64k -d 16 -c 4096');
      },
    },
    {
      id: '7',
      group: '7',
      title: 'convert -O qed of a 1 GiB raw image, half data',
      kind: 'convert',
      format: 'qed',
      bytes: 512 * MiB,
      prepare: (ctx) => {
        const src = convertSource(ctx);
        const dst = join(ctx.dir, 'converted.qed');
        rmSync(dst, { force: true });
        return ['-f', 'raw', '-O', 'qed', src, dst];
      },
      cleanup: (ctx) => rmSync(join(ctx.dir, 'converted.qed'), { force: true }),
    },
  ];
  // Present in the table in id order: 1..7, then the raw mirrors.
  const rank = (w: Workload): number => (w.group === '8' ? 100 : 0) + Number.parseInt(w.id.replace(/^8\./, ''), 10);
  return list.sort((a, b) => rank(a) - rank(b) || a.id.localeCompare(b.id));
}

/** The memory check: a 16 TiB QED image, its last cluster written then read back. */
export const MEMORY_CHECK = {
  size: 16 * TiB,
  clusterSize: 64 * KiB,
  limitMiB: 100,
  image(ctx: Ctx): string {
    return freshImage(ctx, 'qed', '16T', 'huge.qed');
  },
  writeArgs(f: string): string[] {
    return ['-f', 'qed', '-w', '-o', String(16 * TiB - 64 * KiB), '-s', '64k', '-d', '1', '-c', '1', '--pattern=0x77', f];
  },
  readArgs(f: string): string[] {
    return ['-f', 'qed', '-o', String(16 * TiB - 64 * KiB), '-s', '64k', '-d', '1', '-c', '1', f];
  },
};
