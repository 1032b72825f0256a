/**
 * Differential check against QEMU: after a random sequence (and after a power loss with its
 * open-time repair), the image and its backing chain are dumped into a temp dir and handed to
 * the real qemu-img 7.2: `compare` against the model's bytes must say identical, `check` must
 * find no corruption and no leak. QEMU cannot open QED images with table_size = 1 (an
 * overflow guard of its own), so those geometries are left out here.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { BlockDriverState, VirtualClock } from '../../src/index.js';
import { memStoreNames, memStoreRead } from '../../src/drivers/mem/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from '../interop/qemu.js';
import { commandArb, ModelMismatch, runSequence } from './commands.js';
import { buildImage, fcParams, freshPrefix, profileOf, type ImageSetup, type PropertyOptions } from './harness.js';

/** Dump every store of the run into `dir` under its own name; returns the top image's path. */
function dumpRun(setup: ImageSetup, dir: string): string {
  for (const n of memStoreNames()) {
    if (n.startsWith(`${setup.prefix}-`)) writeFileSync(join(dir, n), memStoreRead(n));
  }
  return join(dir, setup.top.slice(setup.top.indexOf(':') + 1));
}

export function qemuAgrees(setup: ImageSetup, what: string): void {
  const dir = makeTempDir('blocklayer-fuzz-');
  try {
    const top = dumpRun(setup, dir);
    const model = join(dir, 'model.raw');
    writeFileSync(model, setup.model.bytes);
    // An external data file is recorded under its mem: name: name its dumped copy instead.
    const dataFile = setup.geom.formatOptions?.dataFile;
    const image =
      typeof dataFile === 'string'
        ? `json:${JSON.stringify({ driver: setup.format, file: { filename: top }, 'data-file': { filename: join(dir, `${setup.prefix}-${dataFile}`) } })}`
        : top;
    const cmp = runQemuImg(['compare', '-f', setup.format, '-F', 'raw', image, model]);
    if (cmp.status !== 0) {
      throw new ModelMismatch(`${what}: qemu-img compare (status ${cmp.status}): ${cmp.stdout.trim()} ${cmp.stderr.trim()}`);
    }
    const chk = runQemuImg(['check', '-f', setup.format, '--output=json', image]);
    if (chk.status !== 0) {
      throw new ModelMismatch(`${what}: qemu-img check (status ${chk.status}): ${chk.stdout.trim()} ${chk.stderr.trim()}`);
    }
  } finally {
    removeTempDir(dir);
  }
}

export async function propQemuInterop(opts: PropertyOptions): Promise<void> {
  if (!requireQemu()) return;
  const profile = profileOf(opts);
  // No grow past what QEMU's own limits allow is generated: sizes stay small.
  const geom = profile.geometryArb(false).filter((g) => profile.name !== 'qed' || g.tableSize > 1);
  await fc.assert(
    fc.asyncProperty(geom, fc.array(commandArb(), { minLength: 1, maxLength: opts.wide ? 40 : 20, size: opts.wide ? 'large' : 'small' }), async (g, cmds) => {
      const setup = await buildImage(g, freshPrefix('qi'), { profile });
      try {
        const n = await runSequence(setup, cmds);
        qemuAgrees(setup, 'after a random sequence');
        opts.onCommands?.(n);
      } finally {
        setup.cleanup();
      }
    }),
    fcParams(opts),
  );
}

// ---------------------------------------------------------------------------------------------
// The other direction: QEMU writes, we read.

export interface QemuWriteCase {
  clusterBits: number;
  tableBits: number;
  sizeSectors: number;
  backing: 'none' | 'raw';
  ops: { zero: boolean; at: number; len: number; byte: number; place: 'any' | 'cluster' }[];
  grow: number;
}

export const qemuWriteCaseArb: fc.Arbitrary<QemuWriteCase> = fc.record({
  clusterBits: fc.integer({ min: 12, max: 16 }),
  tableBits: fc.integer({ min: 1, max: 4 }),
  sizeSectors: fc.integer({ min: 1, max: 4096 }),
  backing: fc.constantFrom<'none' | 'raw'>('none', 'raw'),
  ops: fc.array(
    fc.record({
      zero: fc.boolean(),
      at: fc.nat(),
      len: fc.nat(),
      byte: fc.integer({ min: 1, max: 255 }),
      place: fc.constantFrom<'any' | 'cluster'>('any', 'cluster'),
    }),
    { minLength: 1, maxLength: 12 },
  ),
  grow: fc.nat({ max: 16 }),
});

/**
 * qemu-io writes a random sequence (write -P, write -z, unaligned too, truncate) into a QED
 * or qcow2 image; we open it, read the model's bytes and our check finds nothing.
 */
export async function runQemuWriteCase(c: QemuWriteCase, format: 'qed' | 'qcow2' = 'qed'): Promise<number> {
  const dir = makeTempDir('blocklayer-qw-');
  try {
    const cs = 2 ** c.clusterBits;
    let size = c.sizeSectors * 512;
    const img = join(dir, `img.${format}`);
    const model = new Uint8Array(size + c.grow * 512);
    const options = format === 'qed' ? `cluster_size=${cs},table_size=${2 ** c.tableBits}` : `cluster_size=${cs}`;
    const create = ['create', '-q', '-f', format, '-o', options];
    if (c.backing === 'raw') {
      const base = new Uint8Array(Math.floor(size / 2)).map((_, i) => (i * 7 + 3) & 0xff);
      writeFileSync(join(dir, 'base.raw'), base);
      model.set(base);
      create.push('-b', 'base.raw', '-F', 'raw');
    }
    const r = runQemuImg([...create, img, String(size)], { cwd: dir });
    if (r.status !== 0) throw new Error(`qemu-img create failed: ${r.stderr}`);
    const cmds: string[] = [];
    // QEMU 7.2 quirk of QED (which we do not copy): a write
    // that fills only part of a zero cluster copies the *backing* data into the rest of the
    // cluster. The model follows QEMU here: these bytes are what QEMU's image really holds.
    // qcow2 has no such quirk (a zero cluster's COW reads zeros).
    const backingView = model.slice();
    const zeroClusters = new Set<number>();
    // Allocated clusters stay allocated: write -z on one zeroes it in place, no marker.
    const allocated = new Set<number>();
    for (const o of c.ops) {
      let off = o.at % size;
      if (o.place === 'cluster') off -= off % cs;
      const len = Math.min(size - off, 1 + (o.len % (3 * cs)));
      cmds.push('-c', o.zero ? `write -z ${off} ${len}` : `write -P ${o.byte} ${off} ${len}`);
      // The sector-aligned span the block layer hands the format (read-modify-write).
      const a = off - (off % 512);
      const b = Math.min(size, off + len + ((512 - ((off + len) % 512)) % 512));
      for (let k = Math.floor(off / cs); k * cs < off + len; k++) {
        const cStart = k * cs;
        const cEnd = cStart + cs;
        const whole = o.zero && off <= cStart && off + len >= cEnd && cEnd <= size;
        if (whole) {
          if (!allocated.has(k)) zeroClusters.add(k);
          continue;
        }
        allocated.add(k);
        if (zeroClusters.has(k)) {
          zeroClusters.delete(k);
          if (c.backing === 'raw' && format === 'qed') {
            const end = Math.min(cEnd, size);
            if (cStart < a) model.set(backingView.subarray(cStart, Math.min(a, end)), cStart);
            if (b < end) model.set(backingView.subarray(b, end), b);
          }
        }
      }
      model.fill(o.zero ? 0 : o.byte, off, off + len);
    }
    if (c.grow > 0) {
      size += c.grow * 512;
      cmds.push('-c', `truncate ${size}`);
    }
    const io = runQemuIo(['-f', format, ...cmds, img]);
    if (io.status !== 0 || /failed/.test(io.stdout + io.stderr)) throw new Error(`qemu-io failed: ${io.stdout}${io.stderr}`);
    // With a raw backing the grown part shows the backing file, which is only half the size.
    const bs = await BlockDriverState.open(img, { format, readOnly: true, clock: new VirtualClock() });
    try {
      const got = new Uint8Array(size);
      await bs.pread(0, got);
      const want = model.subarray(0, size);
      const d = got.findIndex((x, i) => x !== want[i]);
      if (d >= 0) throw new ModelMismatch(`QEMU wrote ${cmds.filter((x) => x !== '-c').join('; ')}: we read ${got[d]} at ${d}, want ${want[d]}`);
      const chk = await bs.check();
      if (chk.corruptions !== 0 || chk.leaks !== 0 || chk.checkErrors !== 0) {
        throw new ModelMismatch(`our check of QEMU's image: ${JSON.stringify(chk)}`);
      }
    } finally {
      await bs.close();
    }
    return c.ops.length;
  } finally {
    removeTempDir(dir);
  }
}

/**
 * Found by fuzz seed 94: QEMU's partial write into a zero cluster over a raw backing file
 * copies backing bytes into the rest of the cluster (our model now knows; we read them right).
 */
export const qemuWriteExamples: [QemuWriteCase][] = [
  [
    {
      clusterBits: 12,
      tableBits: 1,
      sizeSectors: 8,
      backing: 'raw',
      ops: [
        { zero: true, at: 0, len: 22945791, byte: 1, place: 'any' },
        { zero: false, at: 0, len: 0, byte: 1, place: 'any' },
      ],
      grow: 0,
    },
  ],
  // Fuzz seed 424242: write -z over an *allocated* cluster zeroes it in place (no marker), so
  // a later partial write resurrects nothing.
  [
    {
      clusterBits: 12,
      tableBits: 1,
      sizeSectors: 8,
      backing: 'raw',
      ops: [
        { zero: false, at: 0, len: 0, byte: 1, place: 'any' },
        { zero: true, at: 0, len: 830156799, byte: 1, place: 'any' },
        { zero: false, at: 0, len: 0, byte: 1, place: 'any' },
      ],
      grow: 0,
    },
  ],
];

export async function propQemuWrites(opts: PropertyOptions): Promise<void> {
  if (!requireQemu()) return;
  const format = profileOf(opts).name;
  await fc.assert(
    fc.asyncProperty(qemuWriteCaseArb, async (c) => {
      const n = await runQemuWriteCase(c, format);
      opts.onCommands?.(n);
    }),
    { ...fcParams(opts), examples: format === 'qed' ? qemuWriteExamples : [] },
  );
}
