// The benchmark workloads (issue "Performance"): each is one `bench` (or `convert`) command run
// identically by qemu-img and blk-img on identical images. Shared source images are made once
// per session with qemu-img, so both tools read the very same bytes and layout.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Measured } from './lib.js';
import { backingRaw, convertSource, dataImage, freshImage, qemuImg, type Ctx, type Format } from './images.js';
import { convertRow, toolWorkloads } from './workloads-tools.js';

export type { Ctx, Format } from './images.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

export type Tool = 'qemu' | 'ours';

/**
 * How a row runs: `bench` is `qemu-img bench` vs `blk-img bench` (timed by their own report);
 * `convert` and `img` are other subcommands of both (`prepare` gives the arguments after the
 * program; `convert` is `img` with the subcommand implied), timed as whole processes; `nbd`
 * runs the same client against a server per tool, or a client per tool against one server
 * (`prepare` gives the whole client command line), timed as the client's process.
 */
export type WorkloadKind = 'bench' | 'convert' | 'img' | 'nbd';

export interface Workload {
  /** '1', '4w', '8.2', '11.3'... */
  id: string;
  /** What `--only` selects: '1'..'13', 'mem'. */
  group: string;
  title: string;
  kind: WorkloadKind;
  format: Format;
  /** Bytes moved by one run, for the throughput column (0: no throughput shown). */
  bytes: number;
  /** For a raw or qcow2 row: the id of the QED workload it mirrors (format comparison tables). */
  twinOf?: string;
  /** Arguments made ready for a run of `tool` (fresh images made here). */
  prepare(ctx: Ctx, tool: Tool): string[];
  /** Remove what one run produced, if anything. */
  cleanup?(ctx: Ctx): void;
  /** `nbd`: the server that runs while the client does, listening on `sock`. */
  server?(ctx: Ctx, tool: Tool): { cmd: string[]; sock: string };
  /**
   * After the first pair of runs, with both tools' outputs still in place: what differs
   * between them (the row fails), or null when ours is what QEMU produced.
   */
  verify?(ctx: Ctx, qemu: Measured, ours: Measured): string | null;
  /** Remove what the row's runs left behind (outputs kept for `verify`). */
  finish?(ctx: Ctx): void;
}

function benchArgs(format: Format, f: string, opts: string): string[] {
  return ['-f', format, ...opts.split(' '), f];
}

/**
 * 1-5 and 10 exist for every format: QED first, then the raw mirror (workload 8.x) and the
 * qcow2 one (9.x).
 */
function trio(
  id: string,
  group: string,
  title: string,
  bytes: number,
  make: (ctx: Ctx, format: Format) => string[],
): Workload[] {
  const qed: Workload = { id, group, title, kind: 'bench', format: 'qed', bytes, prepare: (ctx) => make(ctx, 'qed') };
  const mirror = (format: 'raw' | 'qcow2', group: string): Workload => ({
    id: `${group}.${id}`,
    group,
    title: `${format}: ${title}`,
    kind: 'bench',
    format,
    bytes,
    twinOf: id,
    prepare: (ctx) => make(ctx, format),
  });
  return [qed, mirror('raw', '8'), mirror('qcow2', '9')];
}

/** Workload 6 on an image format: an overlay over the raw backing file, fresh per run. */
function cowOverlay(ctx: Ctx, format: 'qed' | 'qcow2'): string[] {
  const back = backingRaw(ctx);
  const f = join(ctx.dir, `overlay.${format}`);
  rmSync(f, { force: true });
  qemuImg(ctx, 'create', '-q', '-f', format, '-b', back, '-F', 'raw', f);
  return benchArgs(format, f, '-w -s 4k -S 64k -d 16 -c 4096');
}

/** Workload 7 on an image format: convert the half-data raw source to it. */
function convertTo(format: 'qed' | 'qcow2'): Pick<Workload, 'prepare' | 'verify' | 'finish'> {
  return convertRow(format, (ctx) => ({ path: convertSource(ctx), format: 'raw' }));
}

export function allWorkloads(): Workload[] {
  const seq = '-s 64k -d 16 -c 4096';
  const small = '-s 4k -d 16 -c 65536';
  const list: Workload[] = [
    ...trio('1', '1', '64 KiB sequential allocating writes, fresh 4 GiB image, depth 16, 4096 req', 4096 * 64 * KiB, (ctx, fmt) =>
      benchArgs(fmt, freshImage(ctx, fmt, '4G'), `-w ${seq}`),
    ),
    ...trio('2', '2', '64 KiB sequential reads, depth 16, 4096 req', 4096 * 64 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), seq),
    ),
    ...trio('3', '3', '64 KiB rewrites in place, depth 16, 4096 req', 4096 * 64 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), `-w ${seq}`),
    ),
    ...trio('4w', '4', '4 KiB writes over an allocated region, depth 16, 65536 req', 65536 * 4 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), `-w ${small}`),
    ),
    ...trio('4r', '4', '4 KiB reads over an allocated region, depth 16, 65536 req', 65536 * 4 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), small),
    ),
    ...trio('5', '5', '4 KiB reads, 64 KiB step across 1 GiB, depth 16, 16384 req', 16384 * 4 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), '-s 4k -S 64k -d 16 -c 16384'),
    ),
    {
      id: '6',
      group: '6',
      title: '4 KiB allocating writes, 64 KiB step, over a raw backing file (COW), depth 16, 4096 req',
      kind: 'bench',
      format: 'qed',
      bytes: 4096 * 4 * KiB,
      prepare: (ctx) => cowOverlay(ctx, 'qed'),
    },
    {
      id: '9.6',
      group: '9',
      title: 'qcow2: 4 KiB allocating writes, 64 KiB step, over a raw backing file (COW), depth 16, 4096 req',
      kind: 'bench',
      format: 'qcow2',
      bytes: 4096 * 4 * KiB,
      twinOf: '6',
      prepare: (ctx) => cowOverlay(ctx, 'qcow2'),
    },
    {
      id: '7',
      group: '7',
      title: 'convert -O qed of a 1 GiB raw image, half data',
      kind: 'convert',
      format: 'qed',
      bytes: 512 * MiB,
      ...convertTo('qed'),
    },
    {
      id: '9.7',
      group: '9',
      title: 'qcow2: convert -O qcow2 of a 1 GiB raw image, half data',
      kind: 'convert',
      format: 'qcow2',
      bytes: 512 * MiB,
      twinOf: '7',
      ...convertTo('qcow2'),
    },
    // Queue depth 1: every request waits for the one before, so per-request latency (the
    // thread-pool round trip) is all that is measured.
    ...trio('10a', '10', '64 KiB rewrites in place, depth 1, 4096 req', 4096 * 64 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), '-w -s 64k -d 1 -c 4096'),
    ),
    ...trio('10b', '10', '4 KiB allocating writes, 64 KiB step, fresh 4 GiB image, depth 1, 4096 req', 4096 * 4 * KiB, (ctx, fmt) =>
      benchArgs(fmt, freshImage(ctx, fmt, '4G'), '-w -s 4k -S 64k -d 1 -c 4096'),
    ),
    ...trio('10c', '10', '4 KiB reads over an allocated region, depth 1, 16384 req', 16384 * 4 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), '-s 4k -d 1 -c 16384'),
    ),
    ...trio('10d', '10', '64 KiB reads, depth 1, 4096 req', 4096 * 64 * KiB, (ctx, fmt) =>
      benchArgs(fmt, dataImage(ctx, fmt), '-s 64k -d 1 -c 4096'),
    ),
  ];
  // Present in the table in id order: 1..7 and 10, then the raw mirrors (8.x), then qcow2 (9.x),
  // then the tools' rows (11.x convert, 12.x check and map, 13.x NBD) in their own order.
  const rank = (w: Workload): number =>
    (w.format === 'raw' ? 100 : w.format === 'qcow2' ? 200 : 0) + Number.parseInt(w.id.replace(/^[89]\./, ''), 10);
  return [...list.sort((a, b) => rank(a) - rank(b) || a.id.localeCompare(b.id)), ...toolWorkloads()];
}

/**
 * The memory check: a 16 TiB image, its last cluster written then read back (QED, and qcow2:
 * both must keep only the tables they touch in memory).
 */
export const MEMORY_CHECK = {
  formats: ['qed', 'qcow2'] as const,
  size: 16 * TiB,
  clusterSize: 64 * KiB,
  limitMiB: 100,
  image(ctx: Ctx, format: 'qed' | 'qcow2'): string {
    return freshImage(ctx, format, '16T', `huge.${format}`);
  },
  writeArgs(format: 'qed' | 'qcow2', f: string): string[] {
    return ['-f', format, '-w', '-o', String(16 * TiB - 64 * KiB), '-s', '64k', '-d', '1', '-c', '1', '--pattern=0x77', f];
  },
  readArgs(format: 'qed' | 'qcow2', f: string): string[] {
    return ['-f', format, '-o', String(16 * TiB - 64 * KiB), '-s', '64k', '-d', '1', '-c', '1', f];
  },
};
