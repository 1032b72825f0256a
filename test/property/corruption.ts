/**
 * Corrupted images: a valid QED image (our create + writes) with bytes mutated at header
 * fields, L1 and L2 entries or anywhere. Whatever the bytes say, open, read, write, check and
 * close end in a result or a BlockError: never a TypeError or RangeError, never a hang, never an
 * allocation sized from untrusted input (Uint8Array/ArrayBuffer allocations are capped while the
 * corrupted image is in use), and a read-only open never writes.
 */
import fc from 'fast-check';
import { BlockDriverState, BlockError, VirtualClock } from '../../src/index.js';
import { memStoreRead, memStoreWrite } from '../../src/drivers/mem/index.js';
import { ModelMismatch } from './commands.js';
import { applyWrite, guestWriteArb, placeWrite, type GuestWrite } from './fault-props.js';
import { buildImage, fcParams, freshPrefix, geometryArb, type Geometry, type ImageSetup, type PropertyOptions } from './harness.js';

/** Header fields: [offset, size in bytes]. */
export const HEADER_FIELDS = {
  magic: [0, 4],
  clusterSize: [4, 4],
  tableSize: [8, 4],
  headerSize: [12, 4],
  features: [16, 8],
  compatFeatures: [24, 8],
  autoclearFeatures: [32, 8],
  l1TableOffset: [40, 8],
  imageSize: [48, 8],
  backingFilenameOffset: [56, 4],
  backingFilenameSize: [60, 4],
} as const;
export type HeaderField = keyof typeof HEADER_FIELDS;

/** A value to store, relative to the image where that makes sense. */
export type MutValue =
  | { k: 'const'; v: bigint }
  | { k: 'cluster'; n: number } // n-th cluster's offset (maybe past the end)
  | { k: 'fileEnd'; delta: number }
  | { k: 'random'; v: bigint };

export type Mutation =
  | { kind: 'header'; field: HeaderField; value: MutValue }
  | { kind: 'l1'; index: number; value: MutValue }
  | { kind: 'l2'; table: number; index: number; value: MutValue }
  | { kind: 'byte'; at: number; value: number }
  | { kind: 'truncate'; keep: number };

const U64_MAX = (1n << 64n) - 1n;

export const mutValueArb: fc.Arbitrary<MutValue> = fc.oneof(
  fc.record({
    k: fc.constant('const' as const),
    v: fc.constantFrom(0n, 1n, 2n, 8n, 512n, 4096n, 65536n, 1n << 26n, 1n << 27n, 0xffffffffn, 1n << 32n, 1n << 53n, 1n << 63n, U64_MAX),
  }),
  fc.record({ k: fc.constant('cluster' as const), n: fc.integer({ min: 0, max: 40 }) }),
  fc.record({ k: fc.constant('fileEnd' as const), delta: fc.integer({ min: -8192, max: 8192 }) }),
  fc.record({ k: fc.constant('random' as const), v: fc.bigInt({ min: 0n, max: U64_MAX }) }),
);

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('header' as const),
      field: fc.constantFrom(...(Object.keys(HEADER_FIELDS) as HeaderField[])),
      value: mutValueArb,
    }),
  },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('l1' as const), index: fc.nat({ max: 4096 }), value: mutValueArb }) },
  {
    weight: 3,
    arbitrary: fc.record({ kind: fc.constant('l2' as const), table: fc.nat({ max: 8 }), index: fc.nat({ max: 1 << 16 }), value: mutValueArb }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('byte' as const), at: fc.nat(), value: fc.nat({ max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), keep: fc.integer({ min: 0, max: 1000 }) }) },
);

export interface CorruptCase {
  geom: Geometry;
  writes: GuestWrite[];
  mutations: Mutation[];
  /** Guest operations tried on the corrupted image. */
  ops: GuestWrite[];
  inBacking?: boolean;
}

export const corruptCaseArb = (wide = false): fc.Arbitrary<CorruptCase> =>
  fc.record({
    // Small clusters: every table lies within the few-MiB file, so the allocation cap is tight.
    geom: geometryArb(false).map((g) => ({
      ...g,
      clusterSize: Math.min(g.clusterSize, 65536),
      backing: g.backing === 'chain3' ? ('qed' as const) : g.backing,
    })),
    /** Corrupt the QED backing file instead of the image (when there is one). */
    inBacking: fc.boolean(),
    writes: fc.array(guestWriteArb, { minLength: 1, maxLength: 6 }),
    mutations: fc.array(mutationArb, { minLength: 1, maxLength: wide ? 6 : 3 }),
    ops: fc.array(guestWriteArb, { maxLength: 4 }),
  });

/** How the corrupted images fared (refused at open vs. opened and used). */
export const corruptStats = { cases: 0, roOpened: 0, rwOpened: 0, blockErrors: 0 };

export const corruptExamples: [CorruptCase][] = [];

function getLE(b: Uint8Array, off: number, size: number): bigint {
  let v = 0n;
  for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(off + i < b.length ? b[off + i] : 0);
  return v;
}

function putLE(b: Uint8Array, off: number, size: number, v: bigint): void {
  for (let i = 0; i < size; i++) {
    if (off + i < b.length) b[off + i] = Number((v >> BigInt(8 * i)) & 0xffn);
  }
}

function resolveValue(v: MutValue, cs: number, fileLen: number, size: number): bigint {
  const mask = (1n << BigInt(8 * size)) - 1n;
  let out: bigint;
  switch (v.k) {
    case 'const':
    case 'random':
      out = v.v;
      break;
    case 'cluster':
      out = BigInt(v.n * cs);
      break;
    case 'fileEnd':
      out = BigInt(Math.max(0, fileLen + v.delta));
      break;
  }
  return out & mask;
}

/** Apply mutations to a valid image's bytes (the original stays untouched). */
export function mutate(image: Uint8Array, muts: readonly Mutation[]): Uint8Array {
  let b = image.slice();
  // Geometry as the valid image has it: where the tables are.
  const cs = Number(getLE(image, 4, 4));
  const ts = Number(getLE(image, 8, 4));
  const l1 = Number(getLE(image, 40, 8));
  const entries = (ts * cs) / 8;
  const l2Tables: number[] = [];
  for (let i = 0; i < entries && l1 + 8 * i + 8 <= image.length; i++) {
    const e = Number(getLE(image, l1 + 8 * i, 8));
    if (e !== 0) l2Tables.push(e);
  }
  for (const m of muts) {
    switch (m.kind) {
      case 'header': {
        const [off, size] = HEADER_FIELDS[m.field];
        putLE(b, off, size, resolveValue(m.value, cs, b.length, size));
        break;
      }
      case 'l1':
        putLE(b, l1 + 8 * (m.index % entries), 8, resolveValue(m.value, cs, b.length, 8));
        break;
      case 'l2': {
        if (l2Tables.length === 0) break;
        const t = l2Tables[m.table % l2Tables.length];
        putLE(b, t + 8 * (m.index % entries), 8, resolveValue(m.value, cs, b.length, 8));
        break;
      }
      case 'byte':
        if (b.length > 0) b[m.at % b.length] = m.value;
        break;
      case 'truncate':
        b = b.slice(0, Math.floor((b.length * m.keep) / 1000));
        break;
    }
  }
  return b;
}

export class AllocationTooLarge extends Error {
  override readonly name = 'AllocationTooLarge';
}

/**
 * Run `fn` with Uint8Array / ArrayBuffer allocations above `limit` bytes refused: an image that
 * makes the driver allocate what its header says, before checking it against the file, fails
 * the property with AllocationTooLarge.
 */
export async function withAllocationLimit<T>(limit: number, fn: () => Promise<T>): Promise<T> {
  const g = globalThis as unknown as Record<string, unknown>;
  const origU8 = globalThis.Uint8Array;
  const origAB = globalThis.ArrayBuffer;
  const guard = <C extends object>(ctor: C, name: string): C =>
    new Proxy(ctor, {
      construct(target, args: unknown[], newTarget) {
        const n = args[0];
        if (typeof n === 'number' && n > limit) {
          throw new AllocationTooLarge(`new ${name}(${n}) while a corrupted image is open (limit ${limit})`);
        }
        return Reflect.construct(target as unknown as new (...a: unknown[]) => object, args, newTarget) as object;
      },
    });
  g.Uint8Array = guard(origU8, 'Uint8Array');
  g.ArrayBuffer = guard(origAB, 'ArrayBuffer');
  try {
    return await fn();
  } finally {
    g.Uint8Array = origU8;
    g.ArrayBuffer = origAB;
  }
}

const OP_TIMEOUT_MS = 10_000;

/** Await one operation: its result, a BlockError (returned), or a property failure. */
async function settle<T>(what: string, p: Promise<T>): Promise<T | BlockError> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ModelMismatch(`${what}: no answer after ${OP_TIMEOUT_MS} ms (hang)`)), OP_TIMEOUT_MS);
  });
  try {
    return await Promise.race([p, hang]);
  } catch (e) {
    if (e instanceof BlockError) {
      corruptStats.blockErrors++;
      return e;
    }
    if (e instanceof ModelMismatch) throw e;
    const name = e instanceof Error ? e.name : typeof e;
    const msg = e instanceof Error ? e.message : '';
    throw new ModelMismatch(`${what}: threw ${name} instead of a BlockError: ${msg}`, { cause: e });
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Write a fresh image's starting data through a plain open and close it, the model following
 * (the repair case reads it back; the corruption case does not need it). Returns how many
 * writes ran.
 */
async function prefill(setup: ImageSetup, writes: readonly GuestWrite[]): Promise<number> {
  const bs = await setup.open();
  for (const w of writes) {
    const { offset, data } = placeWrite(w, setup);
    await applyWrite(bs, w, offset, data);
    setup.model.write(offset, data);
  }
  await bs.close();
  return writes.length;
}

export async function runCorruptCase(c: CorruptCase): Promise<number> {
  const setup = await buildImage(c.geom, freshPrefix('cor'));
  let commands = 0;
  try {
    if (setup.format !== 'qed') return 0;
    commands += await prefill(setup, c.writes);
    // The backing file is opened read-only under the image: corrupt it, and it must come
    // through byte for byte.
    const inBacking = c.inBacking === true && setup.backingFmt === 'qed';
    const storeName = inBacking ? setup.backingName : setup.top.slice('mem:'.length);
    const valid = memStoreRead(storeName);
    const bad = mutate(valid, c.mutations);
    memStoreWrite(storeName, bad);
    const limit = Math.max(8 << 20, 2 * bad.length);
    const clock = new VirtualClock();
    const open = (readOnly: boolean): Promise<BlockDriverState> =>
      BlockDriverState.open(setup.top, { format: 'qed', readOnly, registry: setup.registry, clock });

    await withAllocationLimit(limit, async () => {
      // 1. Read-only: whatever happens, not one byte of the file changes.
      corruptStats.cases++;
      const ro = await settle('open read-only', open(true));
      if (!(ro instanceof BlockError)) {
        corruptStats.roOpened++;
        const len = await settle('getLength', ro.getLength());
        if (typeof len === 'number') {
          for (const w of c.ops) {
            const at = len === 0 ? 0 : w.span.at % len;
            const n = Math.min(len - at, 1 + (w.span.len % 65536));
            await settle('read', ro.pread(at, new Uint8Array(n)));
            await settle('blockStatus', ro.blockStatus(at, Math.max(1, n)));
            commands++;
          }
        }
        await settle('check read-only', ro.check());
        await settle('close read-only', ro.close());
      }
      const after = memStoreRead(storeName);
      if (after.length !== bad.length || after.some((x, i) => x !== bad[i])) {
        throw new ModelMismatch('a read-only open changed the image file');
      }

      // 2. Read-write: open (the open-time repair may run), guest I/O, repairing check.
      const rw = await settle('open read-write', open(false));
      if (!(rw instanceof BlockError)) {
        corruptStats.rwOpened++;
        const len = await settle('getLength', rw.getLength());
        if (typeof len === 'number' && len > 0) {
          for (const w of c.ops) {
            const at = w.span.at % len;
            const n = Math.min(len - at, 1 + (w.span.len % 65536));
            const data = new Uint8Array(n).fill(w.seed & 0xff);
            if (w.kind === 'zero') await settle('writeZeroes', rw.writeZeroes(at, n));
            else await settle('write', rw.pwrite(at, data));
            await settle('read', rw.pread(at, new Uint8Array(n)));
            commands++;
          }
        }
        await settle('check repair', rw.check({ errors: true, leaks: true }));
        await settle('grow', rw.truncate(typeof len === 'number' ? len + 512 : 512));
        await settle('close read-write', rw.close());
        // 3. And it opens again (or refuses with a BlockError).
        const again = await settle('reopen', open(false));
        if (!(again instanceof BlockError)) {
          await settle('check', again.check());
          await settle('close', again.close());
        }
      }
      if (inBacking) {
        const now = memStoreRead(storeName);
        if (now.length !== bad.length || now.some((x, i) => x !== bad[i])) {
          throw new ModelMismatch('the read-only backing file was written');
        }
      }
    });
  } finally {
    setup.cleanup();
  }
  return commands;
}

export async function propCorruption(opts: PropertyOptions): Promise<void> {
  await fc.assert(
    fc.asyncProperty(corruptCaseArb(opts.wide), async (c) => {
      const n = await runCorruptCase(c);
      opts.onCommands?.(n);
    }),
    { ...fcParams(opts), examples: [...corruptExamples, ...((opts.examples ?? []) as [CorruptCase][])] },
  );
}

// ---------------------------------------------------------------------------------------------
// I/O errors during the open-time repair

export interface RepairFaultCase {
  geom: Geometry;
  writes: GuestWrite[];
  /** L2 entries to point past the end of the file (what a crash leaves behind). */
  dangling: number[];
  event: 'l2_load' | 'l2_update' | 'l1_update' | 'read_aio' | 'write_aio';
  once: boolean;
}

export const repairFaultCaseArb: fc.Arbitrary<RepairFaultCase> = fc.record({
  geom: geometryArb(false).map((g) => ({ ...g, clusterSize: Math.min(g.clusterSize, 65536), backing: 'none' as const })),
  writes: fc.array(guestWriteArb, { minLength: 1, maxLength: 6 }),
  dangling: fc.array(fc.nat({ max: 1 << 16 }), { minLength: 0, maxLength: 3 }),
  event: fc.constantFrom<RepairFaultCase['event']>('l2_load', 'l2_update', 'l1_update', 'read_aio', 'write_aio'),
  once: fc.boolean(),
});

/**
 * A dirty image (NEED_CHECK set, L2 entries pointing past EOF) opened read-write through
 * blkdebug with an error armed at a metadata event: the open (and its repair) either works or
 * fails with a BlockError, and the image is not made worse: a later plain open repairs it
 * completely and the data that was there reads back.
 */
export async function runRepairFaultCase(c: RepairFaultCase): Promise<number> {
  const setup = await buildImage(c.geom, freshPrefix('rf'));
  let commands = 0;
  try {
    if (setup.format !== 'qed') return 0;
    commands += await prefill(setup, c.writes);
    const storeName = setup.top.slice('mem:'.length);
    const img = memStoreRead(storeName);
    const cs = Number(getLE(img, 4, 4));
    const ts = Number(getLE(img, 8, 4));
    const l1 = Number(getLE(img, 40, 8));
    const entries = (ts * cs) / 8;
    const tables: number[] = [];
    for (let i = 0; i < entries; i++) {
      const e = Number(getLE(img, l1 + 8 * i, 8));
      if (e !== 0) tables.push(e);
    }
    const danglingAt: number[] = [];
    if (tables.length > 0) {
      for (const d of c.dangling) {
        const t = tables[d % tables.length];
        const idx = d % entries;
        // Only unallocated entries: the guest data the model knows stays reachable.
        if (getLE(img, t + 8 * idx, 8) !== 0n) continue;
        putLE(img, t + 8 * idx, 8, BigInt(img.length - (img.length % cs) + cs * (1 + (d % 3))));
        danglingAt.push(idx);
      }
    }
    putLE(img, 16, 8, getLE(img, 16, 8) | 2n); // NEED_CHECK
    memStoreWrite(storeName, img);

    const config = `[inject-error]\nevent = "${c.event}"\nonce = "${c.once ? 'on' : 'off'}"\n`;
    const dbg = await settle(
      'open through blkdebug',
      BlockDriverState.open(`blkdebug::${setup.top}`, {
        format: 'qed',
        registry: setup.registry,
        clock: new VirtualClock(),
        driverOptions: { configText: config },
      }),
    );
    if (!(dbg instanceof BlockError)) {
      await settle('read', dbg.pread(0, new Uint8Array(Math.min(setup.model.size, 65536))));
      await settle('close', dbg.close());
    }
    commands++;
    const again = await setup.open();
    try {
      const r = await again.check();
      if (r.corruptions !== 0 || r.checkErrors !== 0) {
        throw new ModelMismatch(`after a repair under injected ${c.event}: corruptions=${r.corruptions} checkErrors=${r.checkErrors}`);
      }
      const got = new Uint8Array(setup.model.size);
      await again.pread(0, got);
      const d = got.findIndex((x, i) => x !== setup.model.bytes[i]);
      if (d >= 0) throw new ModelMismatch(`after a repair under injected ${c.event}: data differs at ${d}`);
    } finally {
      await again.close();
    }
  } finally {
    setup.cleanup();
  }
  return commands;
}

export async function propRepairFault(opts: PropertyOptions): Promise<void> {
  await fc.assert(
    fc.asyncProperty(repairFaultCaseArb, async (c) => {
      const n = await runRepairFaultCase(c);
      opts.onCommands?.(n);
    }),
    fcParams(opts),
  );
}
