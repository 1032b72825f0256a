// Images the benchmark workloads run on, all made by qemu-img so that both tools meet the very
// same bytes and layout. Shared sources are made once per session (ctx.made) and reused.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { run } from './lib.js';

/** The image formats the workloads run on (QED first; raw and qcow2 mirror it). */
export type Format = 'qed' | 'raw' | 'qcow2';

export interface Ctx {
  dir: string;
  qemuImg: string;
  /** Images already made in this session (lazy, shared between workloads). */
  made: Set<string>;
}

export function qemuImg(ctx: Ctx, ...args: string[]): void {
  run([ctx.qemuImg, ...args]);
}

/** Make `name` in ctx.dir once per session with `make`; its path. */
export function once(ctx: Ctx, name: string, make: (path: string) => void): string {
  const f = join(ctx.dir, name);
  if (!ctx.made.has(f)) {
    rmSync(f, { force: true });
    make(f);
    ctx.made.add(f);
  }
  return f;
}

/** A 4 GiB image whose first 1 GiB is written with 0xa5 (made once, reused: reads, rewrites). */
export function dataImage(ctx: Ctx, format: Format): string {
  return once(ctx, `data.${format}`, (f) => {
    qemuImg(ctx, 'create', '-q', '-f', format, f, '4G');
    qemuImg(ctx, 'bench', '-q', '-f', format, '-w', '-t', 'unsafe', '-s', '1M', '-d', '16', '-c', '1024', '--pattern=0xa5', f);
  });
}

/** A brand-new empty image for one run (allocating writes). */
export function freshImage(ctx: Ctx, format: Format, size: string, name = `fresh.${format}`): string {
  const f = join(ctx.dir, name);
  rmSync(f, { force: true });
  qemuImg(ctx, 'create', '-q', '-f', format, f, size);
  return f;
}

/** 1 GiB raw backing file, first 256 MiB written (made once). */
export function backingRaw(ctx: Ctx): string {
  return once(ctx, 'backing.raw', (f) => {
    qemuImg(ctx, 'create', '-q', '-f', 'raw', f, '1G');
    qemuImg(ctx, 'bench', '-q', '-f', 'raw', '-w', '-t', 'unsafe', '-s', '1M', '-d', '16', '-c', '256', '--pattern=0x3c', f);
  });
}

/**
 * A raw convert source of `mib` MiB, every other MiB written: half data, half holes (made
 * once). 1024 MiB for the plain converts, smaller where zlib compresses every cluster.
 */
export function convertSource(ctx: Ctx, mib = 1024): string {
  const name = mib === 1024 ? 'convert-src.raw' : `convert-src-${mib}m.raw`;
  return once(ctx, name, (f) => {
    qemuImg(ctx, 'create', '-q', '-f', 'raw', f, `${mib}M`);
    qemuImg(ctx, 'bench', '-q', '-f', 'raw', '-w', '-t', 'unsafe', '-s', '1M', '-S', '2M', '-d', '16', '-c', String(mib / 2), '--pattern=0x5a', f);
  });
}

/** The convert source in another format, converted by qemu-img (`-c`: compressed qcow2). */
export function convertSourceAs(ctx: Ctx, format: 'qed' | 'qcow2', opts: { compressed?: boolean; mib?: number } = {}): string {
  const src = convertSource(ctx, opts.mib);
  const name = `${src.slice(src.lastIndexOf('/') + 1, -'.raw'.length)}${opts.compressed === true ? '-c' : ''}.${format}`;
  return once(ctx, name, (f) => qemuImg(ctx, 'convert', ...(opts.compressed === true ? ['-c'] : []), '-f', 'raw', '-O', format, src, f));
}

/** Guest size and scatter of the fragmented images of check and map (12.x). */
export const FRAGMENTED = { size: '64G', writes: 40000, step: '1600k' } as const;

/**
 * A 64 GiB image with 40000 scattered 4 KiB writes, one every 1600 KiB: tens of thousands of
 * data clusters in L2 tables that are many and partly full (made once).
 */
export function fragmentedImage(ctx: Ctx, format: 'qed' | 'qcow2'): string {
  return once(ctx, `fragmented.${format}`, (f) => {
    qemuImg(ctx, 'create', '-q', '-f', format, f, FRAGMENTED.size);
    qemuImg(ctx, 'bench', '-q', '-f', format, '-w', '-t', 'unsafe', '-s', '4k', '-S', FRAGMENTED.step, '-d', '16', '-c', String(FRAGMENTED.writes), '--pattern=0x6b', f);
  });
}
