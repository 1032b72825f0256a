// The rows that time whole tools rather than `bench` requests: convert between the formats
// (11.x), check and map of large fragmented images (12.x), and NBD copies through blk-nbd or
// qemu-nbd (13.x). Each row checks once that ours produced what QEMU produced.
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { BLK_IMG, run, sameBytes } from './lib.js';
import { convertSource, convertSourceAs, FRAGMENTED, fragmentedImage, once, type Ctx, type Format } from './images.js';
import { makeNbdSource, nbdServerCommand, nbdUri } from './nbd-server.js';
import type { Tool, Workload } from './workloads.js';

const MiB = 1024 * 1024;

/**
 * A convert row: both tools convert `source` with the same options, each to an output of its
 * own; after the first pair the outputs must be identical byte for byte (qemu-img's layout,
 * as test/interop's convert tests require), and they are removed when the row ends.
 */
export function convertRow(
  outFormat: Format,
  source: (ctx: Ctx) => { path: string; format: Format },
  opts: string[] = [],
): Pick<Workload, 'prepare' | 'verify' | 'finish'> {
  const out = (ctx: Ctx, tool: Tool): string => join(ctx.dir, `converted-${tool}.${outFormat}`);
  let verified = false;
  return {
    prepare: (ctx, tool) => {
      const src = source(ctx);
      const dst = out(ctx, tool);
      rmSync(dst, { force: true });
      // Once the first pair is compared, every run starts without the other tool's output
      // either: its dirty pages (up to half a GiB, still being written back) made the next
      // convert cost up to twice the system time (bench/RESULTS.md, Method).
      if (verified) rmSync(out(ctx, tool === 'qemu' ? 'ours' : 'qemu'), { force: true });
      return ['-f', src.format, '-O', outFormat, ...opts, src.path, dst];
    },
    verify: (ctx) => {
      verified = true;
      return sameBytes(out(ctx, 'qemu'), out(ctx, 'ours')) ? null : `the ${outFormat} written differs from qemu-img's`;
    },
    finish: (ctx) => {
      for (const tool of ['qemu', 'ours'] as const) rmSync(out(ctx, tool), { force: true });
    },
  };
}

/** The compressed rows convert a smaller source: zlib runs over every data cluster. */
const COMPRESSED_MIB = 128;

function convertRows(): Workload[] {
  const raw = (ctx: Ctx) => ({ path: convertSource(ctx), format: 'raw' as const });
  const as = (format: 'qed' | 'qcow2', compressed = false) => (ctx: Ctx) => ({
    path: convertSourceAs(ctx, format, compressed ? { compressed, mib: COMPRESSED_MIB } : {}),
    format,
  });
  const row = (id: string, title: string, format: Format, bytes: number, r: Pick<Workload, 'prepare' | 'verify' | 'finish'>): Workload => ({
    id,
    group: '11',
    title,
    kind: 'convert',
    format,
    bytes,
    ...r,
  });
  const half = 512 * MiB;
  const halfSmall = (COMPRESSED_MIB / 2) * MiB;
  return [
    row('11.1', 'convert qed -> raw, 1 GiB, half data', 'qed', half, convertRow('raw', as('qed'))),
    row('11.2', 'convert qcow2 -> raw, 1 GiB, half data', 'qcow2', half, convertRow('raw', as('qcow2'))),
    row('11.3', 'convert qcow2 -> qcow2, 1 GiB, half data', 'qcow2', half, convertRow('qcow2', as('qcow2'))),
    row('11.4', `convert -c raw -> qcow2 (zlib), ${COMPRESSED_MIB} MiB, half data`, 'raw', halfSmall, convertRow('qcow2', (ctx) => ({ path: convertSource(ctx, COMPRESSED_MIB), format: 'raw' }), ['-c'])),
    row('11.5', `convert compressed qcow2 -> raw, ${COMPRESSED_MIB} MiB, half data`, 'qcow2', halfSmall, convertRow('raw', as('qcow2', true))),
    row('11.6', 'convert qed -> qcow2, 1 GiB, half data', 'qed', half, convertRow('qcow2', as('qed'))),
    row('11.7', 'convert raw -> raw, 1 GiB, half data', 'raw', half, convertRow('raw', raw)),
  ];
}

/** Ours answers exactly what qemu-img answers (stdout byte for byte). */
function sameStdout(what: string): NonNullable<Workload['verify']> {
  return (_ctx, qemu, ours) => (qemu.stdout === ours.stdout ? null : `blk-img ${what} printed other than qemu-img's`);
}

function checkMapRows(): Workload[] {
  const where = `${FRAGMENTED.size.replace('G', ' GiB')} image, ${FRAGMENTED.writes} scattered 4 KiB writes (${FRAGMENTED.step} step)`;
  const rows: Workload[] = [];
  let n = 1;
  for (const format of ['qed', 'qcow2'] as const) {
    rows.push({
      id: `12.${n++}`,
      group: '12',
      title: `check of a ${format} ${where}`,
      kind: 'img',
      format,
      bytes: 0,
      prepare: (ctx) => ['check', '-f', format, fragmentedImage(ctx, format)],
      verify: sameStdout('check'),
    });
    rows.push({
      id: `12.${n++}`,
      group: '12',
      title: `map --output=json of a ${format} ${where}`,
      kind: 'img',
      format,
      bytes: 0,
      prepare: (ctx) => ['map', '--output=json', '-f', format, fragmentedImage(ctx, format)],
      verify: sameStdout('map'),
    });
  }
  return rows;
}

/** Size of the image the NBD rows copy (three quarters data). */
export const NBD_SOURCE_MIB = 512;

function nbdSource(ctx: Ctx): string {
  return once(ctx, 'nbd-src.raw', (f) => makeNbdSource(f, NBD_SOURCE_MIB));
}

function nbdSock(ctx: Ctx, tool: Tool): string {
  return join(ctx.dir, `nbd-${tool}.sock`);
}

function nbdRows(): Workload[] {
  const bytes = (NBD_SOURCE_MIB * 3 * MiB) / 4;
  const size = `${NBD_SOURCE_MIB} MiB raw, 3/4 data`;
  // 13.1 and 13.2: one client, the server is ours (blk-nbd) or QEMU's (qemu-nbd).
  const serverIs = (ctx: Ctx, tool: Tool) => {
    const sock = nbdSock(ctx, tool);
    return { cmd: nbdServerCommand(tool === 'qemu' ? 'qemu-nbd' : 'blk-nbd', nbdSource(ctx), sock), sock };
  };
  const out = (ctx: Ctx, tool: Tool): string => join(ctx.dir, `nbd-out-${tool}.raw`);
  const outputsEqual: NonNullable<Workload['verify']> = (ctx) =>
    sameBytes(out(ctx, 'qemu'), out(ctx, 'ours')) && sameBytes(out(ctx, 'ours'), nbdSource(ctx)) ? null : 'the copies differ from the image';
  // The client rewrites its own copy of the previous run in place (-n): copying into page-cache
  // pages newly allocated for a fresh output cost either client several times as much, at
  // random, which made 13.2 and 13.3 bimodal whoever ran (bench/RESULTS.md, "NBD"). The first
  // run writes into an empty file, so the pair compared after it holds what each run copied;
  // the holes stay holes, hence --target-is-zero.
  const convertInPlace = (ctx: Ctx, tool: Tool): string[] => {
    const dst = out(ctx, tool);
    if (!existsSync(dst)) run(['qemu-img', 'create', '-q', '-f', 'raw', dst, `${NBD_SOURCE_MIB}M`]);
    return ['convert', '-n', '--target-is-zero', '-O', 'raw', nbdUri(nbdSock(ctx, tool)), dst];
  };
  const removeOutputs = (ctx: Ctx): void => {
    for (const tool of ['qemu', 'ours'] as const) rmSync(out(ctx, tool), { force: true });
  };
  return [
    {
      id: '13.1',
      group: '13',
      title: `nbdcopy to null: from blk-nbd vs qemu-nbd, ${size}`,
      kind: 'nbd',
      format: 'raw',
      bytes,
      server: serverIs,
      prepare: (ctx, tool) => ['nbdcopy', nbdUri(nbdSock(ctx, tool)), 'null:'],
    },
    {
      id: '13.2',
      group: '13',
      title: `qemu-img convert -n -O raw from blk-nbd vs qemu-nbd, ${size}`,
      kind: 'nbd',
      format: 'raw',
      bytes,
      server: serverIs,
      prepare: (ctx, tool) => ['qemu-img', ...convertInPlace(ctx, tool)],
      verify: outputsEqual,
      finish: removeOutputs,
    },
    {
      // Our NBD client driver: blk-img convert vs qemu-img convert, both from qemu-nbd.
      id: '13.3',
      group: '13',
      title: `convert -n -O raw from qemu-nbd, blk-img vs qemu-img (client), ${size}`,
      kind: 'nbd',
      format: 'raw',
      bytes,
      server: (ctx, tool) => {
        const sock = nbdSock(ctx, tool);
        return { cmd: nbdServerCommand('qemu-nbd', nbdSource(ctx), sock), sock };
      },
      prepare: (ctx, tool) => [...(tool === 'qemu' ? ['qemu-img'] : [process.execPath, BLK_IMG]), ...convertInPlace(ctx, tool)],
      verify: outputsEqual,
      finish: removeOutputs,
    },
  ];
}

export function toolWorkloads(): Workload[] {
  return [...convertRows(), ...checkMapRows(), ...nbdRows()];
}
