/**
 * Dirty bitmap properties, for formats that keep persistent bitmaps (the profile says which
 * geometries do). `bitmaps`: random writes, zero writes, discards, grows, reopens and bitmap
 * actions (add at any granularity, enable, disable, clear, remove); after every command each
 * bitmap holds exactly the chunks enabled writes touched, a reopen brings the same bits back,
 * and check stays clean. `bitmappowerloss`: the power goes at a random request of an open that
 * marks bitmaps in use, writes, flushes, and the close that stores them; after recovery each
 * bitmap is in use (inconsistent), gone, or consistent with bits between what was acknowledged
 * and what was attempted: never a clean, wrong bitmap.
 */
import fc from 'fast-check';
import {
  BlockDriverState,
  BlockError,
  VirtualClock,
  bdrvCanStoreNewDirtyBitmap,
  bdrvCreateDirtyBitmap,
  bdrvFindDirtyBitmap,
  bdrvRemoveDirtyBitmap,
  type BdrvDirtyBitmap,
} from '../../src/index.js';
import { memStoreRead } from '../../src/drivers/mem/index.js';
import { powerlossStoreCreate } from '../../src/drivers/powerloss/index.js';
import { ModelMismatch, expectClean, spanArb, type Span } from './commands.js';
import { applyWrite, expectOnlyLeaks, guestWriteArb, placeWrite, type GuestWrite } from './fault-props.js';
import { buildImage, fcParams, freshPrefix, profileOf, type Geometry, type PropertyOptions } from './harness.js';
import { mulberry32 } from './model.js';
import type { FormatProfile } from './profile.js';

/** The model of one bitmap: its granularity, whether it follows writes, the dirty chunks. */
interface ModelBitmap {
  granularity: number;
  enabled: boolean;
  chunks: Set<number>;
}

function markChunks(m: Map<string, ModelBitmap>, offset: number, len: number, onlyEnabled = true): void {
  if (len <= 0) return;
  for (const b of m.values()) {
    if (onlyEnabled && !b.enabled) continue;
    for (let c = Math.floor(offset / b.granularity); c <= Math.floor((offset + len - 1) / b.granularity); c++) b.chunks.add(c);
  }
}

function chunksOf(bm: BdrvDirtyBitmap): Set<number> {
  const out = new Set<number>();
  for (let c = 0; c < bm.nbBits; c++) if (bm.get(c)) out.add(c);
  return out;
}

function sameSet(a: Set<number>, b: Set<number>): boolean {
  return a.size === b.size && [...a].every((x) => b.has(x));
}

/** Every bitmap of the node is the model's, bit for bit. */
function compareBitmaps(bs: BlockDriverState, m: Map<string, ModelBitmap>, what: string): void {
  if (bs.dirtyBitmaps.length !== m.size) throw new ModelMismatch(`${what}: ${bs.dirtyBitmaps.length} bitmaps, model ${m.size}`);
  for (const [name, want] of m) {
    const bm = bdrvFindDirtyBitmap(bs, name);
    if (!bm || bm.inconsistent || bm.granularity !== want.granularity || bm.enabled !== want.enabled) {
      throw new ModelMismatch(`${what}: bitmap ${name} missing or changed`);
    }
    if (!sameSet(chunksOf(bm), want.chunks)) {
      throw new ModelMismatch(`${what}: bitmap ${name} has chunks ${[...chunksOf(bm)].join(',')}, model ${[...want.chunks].join(',')}`);
    }
  }
}

type BitmapCommand =
  | { op: 'write' | 'zero' | 'discard'; span: Span; seed: number }
  | { op: 'add'; name: number; gBits: number; disabled: boolean }
  | { op: 'enable' | 'disable' | 'clear' | 'remove'; name: number }
  | { op: 'grow'; clusters: number }
  | { op: 'reopen' };

const commandArb: fc.Arbitrary<BitmapCommand> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ op: fc.constantFrom<'write' | 'zero' | 'discard'>('write', 'write', 'zero', 'discard'), span: spanArb, seed: fc.nat({ max: 1 << 20 }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('add' as const), name: fc.nat({ max: 3 }), gBits: fc.integer({ min: 9, max: 17 }), disabled: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constantFrom<'enable' | 'disable' | 'clear' | 'remove'>('enable', 'disable', 'clear', 'remove'), name: fc.nat({ max: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('grow' as const), clusters: fc.integer({ min: 1, max: 8 }) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'reopen' as const }) },
);

interface BitmapCase {
  geom: Geometry;
  cmds: BitmapCommand[];
}

/** A guest request of a command, placed in the image (writes and zero writes as fault-props does). */
function guestOf(c: { op: 'write' | 'zero' | 'discard'; span: Span; seed: number }): GuestWrite {
  return { kind: c.op === 'zero' ? 'zero' : 'write', span: c.span, seed: c.seed };
}

export async function runBitmapCase(c: BitmapCase, profile: FormatProfile): Promise<number> {
  const setup = await buildImage(c.geom, freshPrefix('bm'), { profile });
  let bs = await setup.open();
  let commands = 0;
  try {
    if (!profile.persistentBitmaps(c.geom)) {
      // The image cannot keep them: adding one is refused, cleanly.
      const refused = await bdrvCanStoreNewDirtyBitmap(bs, 'b', 65536).then(() => false, (e: unknown) => e instanceof BlockError);
      if (!refused) throw new ModelMismatch('a persistent bitmap was accepted by an image that cannot keep it');
      return 1;
    }
    const model = new Map<string, ModelBitmap>();
    for (const cmd of c.cmds) {
      commands++;
      const what = `after ${cmd.op} (#${commands})`;
      switch (cmd.op) {
        case 'write':
        case 'zero':
        case 'discard': {
          const g = guestOf(cmd);
          const { offset, data } = placeWrite(g, setup);
          // The data itself is the sequential property's business: here only which bytes changed.
          if (cmd.op === 'discard') await bs.discard(offset, data.length);
          else await applyWrite(bs, g, offset, data);
          markChunks(model, offset, data.length);
          break;
        }
        case 'add': {
          const name = `b${cmd.name}`;
          if (model.has(name)) break;
          const g = 2 ** cmd.gBits;
          await bdrvCanStoreNewDirtyBitmap(bs, name, g);
          const bm = await bdrvCreateDirtyBitmap(bs, g, name);
          bm.persistent = true;
          bm.enabled = !cmd.disabled;
          model.set(name, { granularity: g, enabled: !cmd.disabled, chunks: new Set() });
          break;
        }
        case 'enable':
        case 'disable':
        case 'clear':
        case 'remove': {
          const name = `b${cmd.name}`;
          const m = model.get(name);
          const bm = bdrvFindDirtyBitmap(bs, name);
          if (!m || !bm) break;
          if (cmd.op === 'remove') {
            await bdrvRemoveDirtyBitmap(bs, name);
            model.delete(name);
          } else if (cmd.op === 'clear') {
            bm.clear();
            m.chunks.clear();
          } else {
            bm.enabled = m.enabled = cmd.op === 'enable';
          }
          break;
        }
        case 'grow': {
          const size = setup.model.size + cmd.clusters * setup.geom.clusterSize;
          await bs.truncate(size);
          setup.model.grow(size);
          break;
        }
        case 'reopen':
          await bs.close();
          bs = await setup.open();
          break;
      }
      compareBitmaps(bs, model, what);
    }
    await bs.close();
    bs = await setup.open({ readOnly: true });
    compareBitmaps(bs, model, 'after the last close');
    expectClean(await bs.check(), 'after the bitmap sequence');
  } finally {
    await bs.close();
    setup.cleanup();
  }
  return commands;
}

export const bitmapExamples: [BitmapCase][] = [];

export async function propBitmaps(opts: PropertyOptions): Promise<void> {
  const profile = profileOf(opts);
  const arb = fc.record({ geom: profile.geometryArb(opts.wide ?? false), cmds: fc.array(commandArb, { minLength: 1, maxLength: opts.wide ? 40 : 16 }) });
  await fc.assert(
    fc.asyncProperty(arb, async (c) => {
      const n = await runBitmapCase(c, profile);
      opts.onCommands?.(n);
    }),
    { ...fcParams(opts), examples: [...bitmapExamples, ...((opts.examples ?? []) as [BitmapCase][])] },
  );
}

// ---------------------------------------------------------------------------------------------

interface BitmapPowerLossCase {
  geom: Geometry;
  gBits: number;
  /** Writes before the durable close that stores bitmap b0. */
  before: GuestWrite[];
  /** Writes of the open the power loss hits, a flush after those marked. */
  ops: { w: GuestWrite; flushAfter: boolean }[];
  /** Add b1 at the start of that open. */
  addSecond: boolean;
  crashAfter: number;
  crashSeed: number;
}

/** What the recovering opens found (npm test asserts that each outcome is reached). */
export const bitmapStats = { inUse: 0, gone: 0, consistent: 0, crashes: 0 };

export const bitmapPowerLossExamples: [BitmapPowerLossCase][] = [];

/** The chunks of bitmap granularity `g` that these placed writes touch. */
function chunkSet(writes: readonly { offset: number; len: number }[], g: number): Set<number> {
  const m = new Map([['x', { granularity: g, enabled: true, chunks: new Set<number>() }]]);
  for (const w of writes) markChunks(m, w.offset, w.len);
  return m.get('x')?.chunks ?? new Set();
}

export async function runBitmapPowerLossCase(c: BitmapPowerLossCase, profile: FormatProfile): Promise<number> {
  if (!profile.persistentBitmaps(c.geom)) return 0;
  const setup = await buildImage({ ...c.geom, backing: 'none' }, freshPrefix('bmpl'), { profile });
  const plName = `${setup.prefix}-top.${setup.format}`;
  let commands = 0;
  try {
    const store = powerlossStoreCreate(plName, memStoreRead(setup.top.slice(4)));
    const open = (): Promise<BlockDriverState> => BlockDriverState.open(`powerloss:${plName}`, { format: setup.format, registry: setup.registry, clock: new VirtualClock() });
    const g = 2 ** c.gBits;
    // Durable start: b0 stored with the chunks of `before`.
    let bs = await open();
    const b0 = await bdrvCreateDirtyBitmap(bs, g, 'b0');
    b0.persistent = true;
    const acked: { offset: number; len: number }[] = [];
    for (const w of c.before) {
      const { offset, data } = placeWrite(w, setup);
      await applyWrite(bs, w, offset, data);
      acked.push({ offset, len: data.length });
      commands++;
    }
    await bs.close();
    store.flush();

    // The open the power loss hits: every request from the open's IN_USE update on counts.
    const attempted = [...acked];
    let b1Added = false;
    store.failAfter(c.crashAfter);
    try {
      bs = await open();
      try {
        if (c.addSecond) {
          const b1 = await bdrvCreateDirtyBitmap(bs, g, 'b1');
          b1.persistent = true;
          b1Added = true;
        }
        for (const { w, flushAfter } of c.ops) {
          const { offset, data } = placeWrite(w, setup);
          attempted.push({ offset, len: data.length });
          await applyWrite(bs, w, offset, data);
          acked.push({ offset, len: data.length });
          commands++;
          if (flushAfter) await bs.flush();
        }
      } finally {
        await bs.close();
      }
    } catch (e) {
      if (!store.dead) throw e;
    }
    if (store.dead) bitmapStats.crashes++;
    store.failAfter(0);
    store.crash(mulberry32(c.crashSeed));

    bs = await open();
    try {
      expectOnlyLeaks(await bs.check(), 'after power loss around bitmaps');
      const ackedChunks = chunkSet(acked, g);
      const attemptedChunks = chunkSet(attempted, g);
      for (const name of ['b0', 'b1']) {
        const bm = bdrvFindDirtyBitmap(bs, name);
        if (!bm || bm.inconsistent) {
          if (bm) bitmapStats.inUse++;
          else if (name === 'b0') bitmapStats.gone++;
          continue;
        }
        bitmapStats.consistent++;
        const got = chunksOf(bm);
        // A consistent bitmap was stored by a completed close: every write acknowledged before it
        // is in it (b1 only saw the writes after it was added, all of them in this open).
        const must = name === 'b0' ? ackedChunks : chunkSet(acked.slice(c.before.length), g);
        for (const x of must) if (!got.has(x)) throw new ModelMismatch(`${name} is consistent but misses chunk ${x}`);
        for (const x of got) if (!attemptedChunks.has(x)) throw new ModelMismatch(`${name} is consistent but has chunk ${x} nobody wrote`);
        if (name === 'b1' && !b1Added) throw new ModelMismatch('b1 exists but was never added');
      }
    } finally {
      await bs.close();
    }
  } finally {
    setup.cleanup();
  }
  return commands;
}

export async function propBitmapPowerLoss(opts: PropertyOptions): Promise<void> {
  const profile = profileOf(opts);
  const arb = fc.record({
    geom: profile.geometryArb(opts.wide ?? false),
    gBits: fc.integer({ min: 9, max: 17 }),
    before: fc.array(guestWriteArb, { maxLength: 4 }),
    ops: fc.array(fc.record({ w: guestWriteArb, flushAfter: fc.boolean() }), { maxLength: opts.wide ? 12 : 6 }),
    addSecond: fc.boolean(),
    crashAfter: fc.nat({ max: opts.wide ? 200 : 80 }),
    crashSeed: fc.nat(),
  });
  await fc.assert(
    fc.asyncProperty(arb, async (c) => {
      const n = await runBitmapPowerLossCase(c, profile);
      opts.onCommands?.(n);
    }),
    { ...fcParams(opts), examples: [...bitmapPowerLossExamples, ...((opts.examples ?? []) as [BitmapPowerLossCase][])] },
  );
}
