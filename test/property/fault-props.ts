/**
 * Fault properties: injected I/O errors (blkdebug) and power loss (the powerloss protocol).
 * In both, what the guest was told succeeded must survive, what failed may be old or new per
 * sector, and the image must come back with nothing worse than leaked clusters.
 */
import fc from 'fast-check';
import { BlockDriverState, BlockError, IOVector, VirtualClock, aioToPromise, bdrvAmendOptions, type CheckResult } from '../../src/index.js';
import { blkdebugState } from '../../src/drivers/blkdebug/index.js';
import { memStoreGet, memStoreRead } from '../../src/drivers/mem/index.js';
import { powerlossStoreCreate } from '../../src/drivers/powerloss/index.js';
import { ModelMismatch, expectClean, placeFor, spanArb, type Span } from './commands.js';
import { buildImage, fcParams, freshPrefix, hostRawBacking, profileOf, type Geometry, type ImageSetup, type PropertyOptions } from './harness.js';
import { ByteModel, mulberry32, pattern } from './model.js';
import type { FormatProfile } from './profile.js';
import { QED_PROFILE } from './qed-profile.js';
import { compressStats, compressedClusterAt, compressibleData, writeCompressedOrPlain } from './compress-cmds.js';
import { snapshotCreate, snapshotDelete } from './snapshot-cmds.js';
import { callbackGeometryArb, powerlossCountingRegistry } from './submit-stats.js';

export interface GuestWrite {
  /**
   * snapshot / unsnapshot: create or delete an internal snapshot (guest bytes unchanged);
   * compress: one whole cluster written compressed where QEMU's rule allows (see compress-cmds);
   * aio: a write through the AIO interface, widened to whole sectors (QED starts a rewrite
   * with a completion callback only from there).
   */
  kind: 'write' | 'zero' | 'snapshot' | 'unsnapshot' | 'compress' | 'aio';
  span: Span;
  seed: number;
}

export const guestWriteArb: fc.Arbitrary<GuestWrite> = fc.record({
  kind: fc.constantFrom<'write' | 'zero'>('write', 'write', 'write', 'zero'),
  span: spanArb,
  seed: fc.nat({ max: 1 << 20 }),
});

/**
 * Guest writes, AIO ones among them, and for formats with internal snapshots now and then a
 * snapshot created or deleted; for formats with compressed clusters, compressed writes.
 */
export function guestOpArb(profile: FormatProfile): fc.Arbitrary<GuestWrite> {
  return fc.oneof(
    { weight: 8, arbitrary: guestWriteArb },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('aio' as const), span: spanArb, seed: fc.nat({ max: 1 << 20 }) }) },
    ...(profile.snapshots
      ? [{ weight: 2, arbitrary: fc.record({ kind: fc.constantFrom<'snapshot' | 'unsnapshot'>('snapshot', 'unsnapshot'), span: spanArb, seed: fc.nat({ max: 1 }) }) }]
      : []),
    ...(profile.compressedWrites === true ? [{ weight: 2, arbitrary: fc.record({ kind: fc.constant('compress' as const), span: spanArb, seed: fc.nat({ max: 1 << 20 }) }) }] : []),
  );
}

const isSnapshotOp = (w: GuestWrite): boolean => w.kind === 'snapshot' || w.kind === 'unsnapshot';

/** Place a guest write and return its data (zeros for writeZeroes, nothing for snapshot operations). */
export function placeWrite(w: GuestWrite, setup: ImageSetup): { offset: number; data: Uint8Array } {
  if (isSnapshotOp(w)) return { offset: 0, data: new Uint8Array(0) };
  const cs = setup.geom.clusterSize;
  if (w.kind === 'compress') {
    // Odd seeds write noise, which is stored uncompressed.
    const at = compressedClusterAt(w.span.at, setup.model.size, cs);
    return at === null ? { offset: 0, data: new Uint8Array(0) } : { offset: at, data: compressibleData(cs, w.seed, w.seed % 2 === 0) };
  }
  const p = placeFor(setup, w.span);
  if (w.kind === 'aio') {
    // Whole sectors, as the AIO interface takes them (the image's size is a multiple of 512).
    const start = Math.floor(p.offset / 512) * 512;
    const end = Math.min(setup.model.size, Math.ceil((p.offset + Math.max(p.len, 1)) / 512) * 512);
    return { offset: start, data: pattern(end - start, w.seed) };
  }
  return { offset: p.offset, data: w.kind === 'zero' ? new Uint8Array(p.len) : pattern(p.len, w.seed) };
}

export async function applyWrite(bs: BlockDriverState, w: GuestWrite, offset: number, data: Uint8Array): Promise<void> {
  if (w.kind === 'snapshot') await snapshotCreate(bs, `s${w.seed}`);
  else if (w.kind === 'unsnapshot') await snapshotDelete(bs, `s${w.seed}`);
  else if (w.kind === 'zero') await bs.writeZeroes(offset, data.length);
  else if (w.kind === 'compress') {
    if (data.length > 0) await writeCompressedOrPlain(bs, offset, data);
  }
  else if (w.kind === 'aio') {
    if (data.length > 0) await aioToPromise((cb) => bs.aioWritev(offset / 512, IOVector.from(data), data.length / 512, cb));
  }
  else await bs.pwrite(offset, data);
}

/**
 * Compare the image with a model in which the sectors of `uncertain` may hold either the old
 * or the new bytes (a failed or unacknowledged write). Returns the bytes read.
 */
export async function compareWithUncertain(
  bs: BlockDriverState,
  oldModel: Uint8Array,
  alternatives: { offset: number; data: Uint8Array }[],
  what: string,
): Promise<Uint8Array> {
  const got = new Uint8Array(oldModel.length);
  await bs.pread(0, got);
  // Per sector, the acceptable contents: the old one and each alternative applied in order
  // (a later acknowledged write never loses to an earlier unacknowledged one: the caller
  // passes only unacknowledged ones here).
  const S = 512;
  const sectors = Math.ceil(oldModel.length / S);
  for (let s = 0; s < sectors; s++) {
    const a = s * S;
    const b = Math.min(oldModel.length, a + S);
    if (equalRange(got, oldModel, a, b)) continue;
    let ok = false;
    // Any subset applied in order: with few alternatives, enumerate.
    const touching = alternatives.filter((w) => w.offset < b && w.offset + w.data.length > a);
    const n = Math.min(touching.length, 10);
    for (let mask = 1; mask < 1 << n && !ok; mask++) {
      const cand = oldModel.slice(a, b);
      for (let i = 0; i < n; i++) {
        if (!(mask & (1 << i))) continue;
        const w = touching[i];
        const from = Math.max(a, w.offset);
        const to = Math.min(b, w.offset + w.data.length);
        cand.set(w.data.subarray(from - w.offset, to - w.offset), from - a);
      }
      ok = equalRange(got, cand, a, b, a);
    }
    if (!ok) {
      let d = a;
      while (d < b && got[d] === oldModel[d]) d++;
      throw new ModelMismatch(`${what}: sector ${s} (guest offset ${d}) holds neither the old nor any written content`);
    }
  }
  return got;
}

function equalRange(x: Uint8Array, y: Uint8Array, a: number, b: number, yBase = 0): boolean {
  for (let i = a; i < b; i++) if (x[i] !== y[i - yBase]) return false;
  return true;
}

export function expectOnlyLeaks(r: CheckResult, what: string): void {
  if (r.corruptions !== 0 || r.checkErrors !== 0) {
    throw new ModelMismatch(`${what}: check found corruptions=${r.corruptions} checkErrors=${r.checkErrors} leaks=${r.leaks}`);
  }
}

// ---------------------------------------------------------------------------------------------
// blkdebug

/** How often the faults really hit (a property whose fault never fires proves nothing). */
export const faultStats = {
  cases: 0,
  injections: 0,
  crashes: 0,
  crashedMidRequest: 0,
  pendingAtCrash: 0,
  concurrentGroups: 0,
  amends: 0,
  crashedInAmend: 0,
  /** Guest flushes issued while a group of power-loss writes was in flight. */
  flushesDuringWrites: 0,
  /** Power losses that cut an image and its external data file together. */
  dataFileCrashes: 0,
  snapshotOps: 0,
  snapshotOpsCut: 0,
};

export interface InjectCase {
  geom: Geometry;
  before: GuestWrite[];
  target: GuestWrite;
  /** A debug event of the profile's driver. */
  event: string;
  errno: 5 | 28;
  immediately: boolean;
  /** Close and reopen between `before` and the target (cold L2 cache). */
  cold: boolean;
  /** The target is a read of the target span (or a flush) instead of a write. */
  targetKind?: 'write' | 'read' | 'flush';
}

export const injectCaseArb = (wide = false, profile: FormatProfile = QED_PROFILE): fc.Arbitrary<InjectCase> =>
  fc.record({
    geom: profile.geometryArb(wide),
    before: fc.array(guestWriteArb, { maxLength: wide ? 12 : 5 }),
    target: guestWriteArb,
    event: fc.constantFrom(...profile.debugEvents),
    errno: fc.constantFrom<5 | 28>(5, 28),
    immediately: fc.boolean(),
    cold: fc.boolean(),
    targetKind: fc.constantFrom<'write' | 'read' | 'flush'>('write', 'write', 'read', 'flush'),
  });

export const injectExamples: [InjectCase][] = [];

/**
 * An error injected at any of the driver's debug events of a write fails that write with that error (when the event
 * is followed by I/O within it), and the image is left with nothing but leaks; everything else
 * reads back as before, the failed write's sectors old or new.
 */
export async function runInjectCase(c: InjectCase, profile: FormatProfile = QED_PROFILE): Promise<number> {
  const setup = await buildImage(c.geom, freshPrefix('inj'), { profile });
  let commands = 0;
  try {
    const config = `[inject-error]\nevent = "${c.event}"\nerrno = "${c.errno}"\nonce = "on"\nstate = "2"\nimmediately = "${c.immediately ? 'on' : 'off'}"\n`;
    const openDebug = (): Promise<BlockDriverState> =>
      BlockDriverState.open(`blkdebug::${setup.top}`, {
        format: setup.format,
        clock: new VirtualClock(),
        registry: setup.registry,
        driverOptions: { configText: config },
      });
    let bs = await openDebug();
    try {
      for (const w of c.before) {
        const { offset, data } = placeWrite(w, setup);
        await applyWrite(bs, w, offset, data);
        setup.model.write(offset, data);
        commands++;
      }
      if (c.cold) {
        await bs.close();
        bs = await openDebug();
      }
      const dbg = blkdebugState(bs);
      if (!dbg) throw new Error('no blkdebug node');
      const { offset, data } = placeWrite(c.target, setup);
      const before = dbg.errorsInjected;
      // A reference that cannot be dropped leaks, and the request goes on (QEMU's
      // qcow2_free_clusters prints the error and returns): count such swallowed errors.
      let freeFailures = 0;
      const onTrace = (t: { name: string }): void => {
        if (t.name === 'qcow2FreeClustersFailed') freeFailures++;
      };
      bs.events.on('trace', onTrace);
      dbg.state = 2;
      const kind = c.targetKind ?? 'write';
      let failure: unknown = null;
      try {
        if (kind === 'write') await applyWrite(bs, c.target, offset, data);
        else if (kind === 'read') {
          const buf = new Uint8Array(data.length);
          await bs.pread(offset, buf);
          const want = setup.model.read(offset, data.length);
          const d = buf.findIndex((x, i) => x !== want[i]);
          if (d >= 0) throw new ModelMismatch(`read after ${c.event} armed: differs at ${offset + d}`);
        } else await bs.flush();
      } catch (e) {
        if (e instanceof ModelMismatch) throw e;
        failure = e;
      }
      commands++;
      bs.events.off('trace', onTrace);
      dbg.state = 1;
      dbg.disarm();
      const injected = dbg.errorsInjected - before;
      faultStats.injections += injected > 0 ? 1 : 0;
      faultStats.cases++;
      const code = c.errno === 5 ? 'EIO' : 'ENOSPC';
      if (injected > 0 && failure === null && freeFailures === 0) {
        throw new ModelMismatch(`error injected at ${c.event} but the ${c.target.kind} at ${offset}+${data.length} succeeded`);
      }
      if (failure !== null) {
        // Anything but a BlockError (a TypeError from a driver bug) fails the property as is.
        if (!(failure instanceof BlockError)) throw failure instanceof Error ? failure : new Error(`non-Error thrown: ${typeof failure}`);
        if (injected === 0) throw new ModelMismatch(`write failed without an injected error: ${failure.message}`);
        if (failure.code !== code) {
          throw new ModelMismatch(`injected ${code} at ${c.event} but the write failed with ${failure.code}: ${failure.message}`);
        }
      }
      const oldModel = setup.model.bytes.slice();
      const alternatives = failure === null || kind !== 'write' ? [] : [{ offset, data }];
      if (failure === null && kind === 'write') setup.model.write(offset, data);
      // Close may itself fail if the failed write left the driver unable to flush; what
      // matters is the state on the store, checked after a plain reopen.
      await bs.close().catch(() => undefined);
      const again = await setup.open();
      try {
        expectOnlyLeaks(await again.check(), `after ${c.event} injection`);
        await compareWithUncertain(again, failure === null ? setup.model.bytes : oldModel, alternatives, `after ${c.event}`);
        // A failed read or flush changes nothing on the image: not even a leak.
        if (kind !== 'write') expectClean(await again.check(), `after a failed ${kind}`);
      } finally {
        await again.close();
      }
    } finally {
      await bs.close().catch(() => undefined);
    }
  } finally {
    setup.cleanup();
  }
  return commands;
}

export async function propBlkdebug(opts: PropertyOptions): Promise<void> {
  const profile = profileOf(opts);
  await fc.assert(
    fc.asyncProperty(injectCaseArb(opts.wide, profile), async (c) => {
      const n = await runInjectCase(c, profile);
      opts.onCommands?.(n);
    }),
    { ...fcParams(opts), examples: [...injectExamples, ...((opts.examples ?? []) as [InjectCase][])] },
  );
}

// ---------------------------------------------------------------------------------------------
// Power loss

export interface PowerLossCase {
  geom: Geometry;
  /** Writes, with a flush after those marked. */
  ops: { w: GuestWrite; flushAfter: boolean; withNext?: boolean; flushDuring?: boolean }[];
  /** Protocol requests allowed before the power goes (large = after the last op). */
  crashAfter: number;
  /** Seeds which volatile writes survive. */
  crashSeed: number;
  /** Writes after recovery, to see that the repaired image is usable. */
  after: GuestWrite[];
  /** Lose power again after this many requests of the recovering open (its repair). */
  repairCrash?: number | null;
  /** Amend the image (profile.amendChoices[pick]) after op group `after`: power may go during it. */
  amend?: { after: number; pick: number } | null;
  /** A raw backing file on the host instead of mem (see hostRawBacking). */
  hostBacking?: boolean;
  /** Writes land after a random number of turns instead of the driver's 1..3. */
  slowWrites?: boolean;
}

export const powerLossCaseArb = (wide = false, profile: FormatProfile = QED_PROFILE): fc.Arbitrary<PowerLossCase> =>
  fc.record({
    geom: callbackGeometryArb(profile, wide),
    ops: fc.array(fc.record({ w: guestOpArb(profile), flushAfter: fc.boolean(), withNext: fc.boolean(), flushDuring: fc.constantFrom(false, false, true) }), {
      minLength: 1,
      maxLength: wide ? 16 : 8,
    }),
    crashAfter: fc.nat({ max: wide ? 200 : 60 }),
    crashSeed: fc.nat(),
    after: fc.array(guestWriteArb, { maxLength: 3 }),
    repairCrash: fc.option(fc.nat({ max: 12 }), { freq: 3 }),
    amend: profile.amendChoices ? fc.option(fc.record({ after: fc.nat({ max: 8 }), pick: fc.nat({ max: 1000 }) }), { freq: 2 }) : fc.constant(null),
    hostBacking: fc.boolean(),
    slowWrites: fc.boolean(),
  });

export const powerLossExamples: [PowerLossCase][] = [
  // CI seed 1362462480 (QED over a QED backing file, one-cluster tables): a write, a zero
  // write of the cluster, a write over it, the power gone nine events in; the open-time check
  // left a corruption.
  [
    {
      geom: { clusterSize: 4096, tableSize: 1, size: 4608, backing: 'qed', backingSize: 4608, backingClusterSize: 4096, seed: 1 },
      ops: [
        { w: { kind: 'write', span: { at: 481355776, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
        { w: { kind: 'zero', span: { at: 0, len: 0, place: 'cluster' }, seed: 0 }, flushAfter: false, withNext: false },
        { w: { kind: 'write', span: { at: 0, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
      ],
      crashAfter: 9,
      crashSeed: 1707789704,
      after: [],
      repairCrash: null,
      amend: null,
    },
  ],
];

/**
 * qcow2 only. Fuzz seed 11 with snapshot operations outside the dirty bit: the power went
 * after the refcount increases of a snapshot create reached the disk and before the L2
 * tables' COPIED flags did, and check found two OFLAG_COPIED errors.
 */
export const qcow2PowerLossExamples: [PowerLossCase][] = [
  [
    {
      geom: { clusterSize: 512, tableSize: 1, size: 512, backing: 'none', backingSize: 512, backingClusterSize: 4096, seed: 1, formatOptions: {} },
      ops: [
        { w: { kind: 'write', span: { at: 0, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
        { w: { kind: 'zero', span: { at: 0, len: 0, place: 'cluster' }, seed: 0 }, flushAfter: true, withNext: false },
        { w: { kind: 'snapshot', span: { at: 0, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
      ],
      crashAfter: 16,
      crashSeed: 0,
      after: [],
      repairCrash: null,
    },
  ],
  // Fuzz seed 20261204: an amend to compat=0.10 of a lazy-refcounts image left the driver
  // using lazy refcounts on the v2 image, which cannot say it is dirty; the power went with
  // refcounts still held back, and check found two corruptions after reopening.
  [
    {
      geom: { clusterSize: 512, tableSize: 1, size: 1024, backing: 'none', backingSize: 1024, backingClusterSize: 4096, seed: 1, formatOptions: { lazyRefcounts: true } },
      ops: [
        { w: { kind: 'unsnapshot', span: { at: 0, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
        { w: { kind: 'write', span: { at: 0, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
        { w: { kind: 'write', span: { at: 0, len: 18478592, place: 'any' }, seed: 0 }, flushAfter: true, withNext: false },
      ],
      crashAfter: 21,
      crashSeed: 51920132,
      after: [],
      repairCrash: null,
      amend: { after: 0, pick: 0 },
    },
  ],
  // Fuzz seed 1, case 273: a compressed write, a write over it (a COW to a new cluster that
  // frees the compressed one) and a write that reuses that freed cluster at once. The L2
  // entry of the compressed cluster was on disk (the dirty bit set for the second write
  // flushed the L2 cache first), the update replacing it only cached; the power kept the
  // reuse's data and not that update, and cluster 0 no longer decompressed.
  [
    {
      geom: { clusterSize: 512, tableSize: 1, size: 1024, backing: 'none', backingSize: 1024, backingClusterSize: 4096, seed: 368171364, formatOptions: { lazyRefcounts: true } },
      ops: [
        { w: { kind: 'compress', span: { at: 0, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
        { w: { kind: 'write', span: { at: 0, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
        { w: { kind: 'write', span: { at: 134217216, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
      ],
      crashAfter: 17,
      crashSeed: 158696146,
      after: [],
      repairCrash: null,
      amend: null,
    },
  ],
  // The same without lazy refcounts: a guest flush puts the compressed cluster's entry on disk.
  [
    {
      geom: { clusterSize: 512, tableSize: 1, size: 1024, backing: 'none', backingSize: 1024, backingClusterSize: 4096, seed: 368171364, formatOptions: {} },
      ops: [
        { w: { kind: 'compress', span: { at: 0, len: 0, place: 'any' }, seed: 0 }, flushAfter: true, withNext: false },
        { w: { kind: 'write', span: { at: 0, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
        { w: { kind: 'write', span: { at: 134217216, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false },
      ],
      crashAfter: 17,
      crashSeed: 1,
      after: [],
      repairCrash: null,
      amend: null,
    },
  ],
];

/**
 * Power loss at a random request: every write acknowledged before a completed flush reads back
 * intact; unflushed writes may be there or not (per sector); after the open-time check no
 * corruption remains and nothing but leaks is left; the image takes new writes afterwards.
 */
/** The drivers of the power-loss runs: callback writes on the powerloss protocol counted. */
const powerlossRegistry = powerlossCountingRegistry();

export async function runPowerLossCase(c: PowerLossCase, profile: FormatProfile = QED_PROFILE): Promise<number> {
  // The image under test lives on the powerloss protocol; its backing chain on mem (a backing
  // file is read-only, so power loss cannot touch it).
  const setup = await buildImage(c.geom, freshPrefix('pl'), { profile, registry: powerlossRegistry });
  let commands = 0;
  const plName = `${setup.prefix}-top.${setup.format}`;
  let removeHostBacking: (() => void) | null = null;
  try {
    // Move the freshly created image onto a powerloss store: created durable, as qemu-img
    // create syncs before it exits.
    const store = powerlossStoreCreate(plName, memStoreRead(memStripName(setup.top)));
    // The backing file is found relative to the image: same prefix, mem namespace. Point the
    // powerloss image's recorded relative name at the mem store with an absolute mem: name.
    const file = `powerloss:${plName}`;
    const open = (): Promise<BlockDriverState> =>
      BlockDriverState.open(file, { format: setup.format, registry: setup.registry, clock: new VirtualClock() });
    // An external data file goes onto a powerloss store too, on the same power supply: the
    // power cut reaches both files at once.
    const dataName = typeof c.geom.formatOptions?.dataFile === 'string' ? `${setup.prefix}-${c.geom.formatOptions.dataFile}` : null;
    const dataStore = dataName === null ? null : powerlossStoreCreate(dataName, memStoreRead(dataName));
    dataStore?.flush();
    if (dataStore) store.sharePowerWith(dataStore);
    // Re-point the backing name at the mem namespace, the data file's at its powerloss store
    // (header rewrites + flush: durable).
    if (setup.backingName !== '' || dataName !== null) {
      const tmp = await BlockDriverState.open(file, {
        format: setup.format,
        registry: setup.registry,
        noBacking: true,
        clock: new VirtualClock(),
      });
      if (c.hostBacking === true) removeHostBacking = await hostRawBacking(setup, tmp);
      if (setup.backingName !== '' && removeHostBacking === null) await tmp.changeBackingFile(`mem:${setup.backingName}`, setup.backingFmt);
      if (dataName !== null) await bdrvAmendOptions(tmp, { dataFile: `powerloss:${dataName}` });
      await tmp.close();
    }
    store.flush();
    dataStore?.flush();

    let bs = await open();
    // Before the power can go: asking reads nothing from an image without bitmaps.
    let v2 = await isV2(bs);
    // Durable model: what a completed flush covered. Pending: acknowledged since then.
    let durable = setup.model.bytes.slice();
    let pending: { offset: number; data: Uint8Array }[] = [];
    store.failAfter(c.crashAfter);
    // Writes take 1..12 turns to land, drawn from the case: a write may still be in flight
    // long after a flush issued beside it completed, and writes complete out of order.
    if (c.slowWrites === true) {
      const hops = mulberry32(c.crashSeed ^ 0x5bd1e995);
      store.writeHops = () => 1 + hops(12);
      if (dataStore) dataStore.writeHops = store.writeHops;
    }
    // Consecutive ops with `withNext` run concurrently (non-overlapping ones only, so that
    // the order in which they reach the disk does not matter to the model); with `flushDuring`
    // a guest flush is issued while they are in flight.
    let i = 0;
    let amended = false;
    outer: while (i < c.ops.length) {
      const group: { offset: number; data: Uint8Array; w: GuestWrite }[] = [];
      let flushAfter = false;
      let flushDuring = false;
      do {
        const { w } = c.ops[i];
        // A v2 image has no dirty bit to cover a snapshot operation cut short (see the qcow2
        // driver's snapshot.ts): those run on v3 images only. What counts is the image's
        // version now, not at create: an amend may have downgraded it.
        if (isSnapshotOp(w) && v2) {
          i++;
          continue;
        }
        if (isSnapshotOp(w)) faultStats.snapshotOps++;
        if (w.kind === 'compress') compressStats.powerLossOps++;
        const { offset, data } = placeWrite(w, setup);
        const overlaps = group.some((g) => g.offset < offset + data.length && offset < g.offset + g.data.length);
        if (!overlaps) group.push({ offset, data, w });
        flushAfter = c.ops[i].flushAfter;
        flushDuring ||= c.ops[i].flushDuring === true && !isSnapshotOp(w);
        i++;
        // A snapshot operation drains the node: it runs alone.
      } while (i < c.ops.length && c.ops[i - 1].withNext === true && !isSnapshotOp(c.ops[i - 1].w) && !isSnapshotOp(c.ops[i].w));
      commands += group.length;
      // What was acknowledged before the group: all a flush issued beside it must make durable.
      const beforeGroup = setup.model.bytes.slice();
      const writes = group.map((g) => applyWrite(bs, g.w, g.offset, g.data));
      // Issued once the group's writes are in flight: it covers none of them (a write that
      // has not completed may reach the disk after it), but an L2 entry a write links on
      // completion must still not reach the disk before that write's data.
      const flushing = flushDuring ? bs.flush() : null;
      const results = await Promise.allSettled(flushing === null ? writes : [...writes, flushing]);
      if (group.length > 1) faultStats.concurrentGroups++;
      if (flushing !== null) {
        commands++;
        faultStats.flushesDuringWrites++;
      }
      let failed = false;
      for (let k = 0; k < group.length; k++) {
        const r = results[k];
        // Acknowledged or not, a write since the last flush may or may not be on the disk.
        pending.push({ offset: group[k].offset, data: group[k].data });
        if (r.status === 'fulfilled') setup.model.write(group[k].offset, group[k].data);
        else {
          if (!store.dead) throw r.reason instanceof Error ? r.reason : new Error('write failed');
          if (isSnapshotOp(group[k].w)) faultStats.snapshotOpsCut++;
          if (group[k].w.kind === 'compress') compressStats.powerLossCut++;
          failed = true;
        }
      }
      const flushed = results[group.length];
      if (flushed?.status === 'rejected' && !store.dead) throw flushed.reason instanceof Error ? flushed.reason : new Error('flush failed');
      if (failed || flushed?.status === 'rejected') {
        faultStats.crashedMidRequest++;
        break;
      }
      if (flushed !== undefined) {
        durable = beforeGroup;
        pending = group.map((g) => ({ offset: g.offset, data: g.data }));
      }
      if (c.amend && profile.amendChoices && !amended && i >= Math.min(c.amend.after, c.ops.length)) {
        amended = true;
        // Amend rewrites metadata, never guest data: the model does not change, and what was
        // pending stays uncertain (its flushes are the driver's, not the guest's).
        const opts = profile.amendChoices[c.amend.pick % profile.amendChoices.length];
        commands++;
        try {
          await bdrvAmendOptions(bs, opts);
          faultStats.amends++;
        } catch (e) {
          if (store.dead) {
            faultStats.crashedInAmend++;
            break;
          }
          if (!(e instanceof BlockError) || (e.code !== 'EINVAL' && e.code !== 'ENOTSUP')) throw e;
        }
        v2 = await isV2(bs);
      }
      if (flushAfter) {
        commands++;
        try {
          await bs.flush();
        } catch (e) {
          if (!store.dead) throw e;
          break outer;
        }
        durable = setup.model.bytes.slice();
        pending = [];
      }
    }
    // The process dies: no close path. Drop the node without flushing.
    store.failAfter(0);
    await bs.close().catch(() => undefined);
    faultStats.crashes++;
    faultStats.pendingAtCrash += store.pendingOps.length;
    const rand = mulberry32(c.crashSeed);
    store.crash(rand);
    if (dataStore) {
      dataStore.crash(rand);
      faultStats.dataFileCrashes++;
    }

    if (c.repairCrash !== undefined && c.repairCrash !== null) {
      // The power goes again while the recovering open reads and repairs the image.
      store.failAfter(c.repairCrash);
      try {
        const half = await open();
        store.failAfter(0);
        await half.close().catch(() => undefined);
      } catch (e) {
        if (!(e instanceof BlockError)) throw e;
      }
      faultStats.crashes++;
      store.crash(rand);
      dataStore?.crash(rand);
    }

    bs = await open();
    try {
      const r = await bs.check();
      expectOnlyLeaks(r, 'after power loss and open-time repair');
      const got = await compareWithUncertain(bs, durable, pending, 'after power loss');
      // Resolve the uncertainty: the model is what survived.
      const model = new ByteModel(got.length, got);
      for (const w of c.after) {
        const { offset, data } = placeWrite(w, { ...setup, model });
        await applyWrite(bs, w, offset, data);
        model.write(offset, data);
        commands++;
      }
      const back = new Uint8Array(model.size);
      await bs.pread(0, back);
      for (let i = 0; i < back.length; i++) {
        if (back[i] !== model.bytes[i]) throw new ModelMismatch(`after recovery writes: differs at ${i}`);
      }
      expectOnlyLeaks(await bs.check(), 'after recovery writes');
    } finally {
      await bs.close();
    }
  } finally {
    removeHostBacking?.();
    setup.cleanup();
  }
  return commands;
}

/** Whether the image is a qcow2 v2 (compat=0.10) one, as the driver reports it. */
async function isV2(bs: BlockDriverState): Promise<boolean> {
  const info = await bs.driver.getSpecificInfo?.(bs);
  return info?.data.compat === '0.10';
}

function memStripName(filename: string): string {
  const n = filename.startsWith('mem:') ? filename.slice(4) : filename;
  if (!memStoreGet(n)) throw new Error(`no mem store ${n}`);
  return n;
}

export async function propPowerLoss(opts: PropertyOptions): Promise<void> {
  const profile = profileOf(opts);
  await fc.assert(
    fc.asyncProperty(powerLossCaseArb(opts.wide, profile), async (c) => {
      const n = await runPowerLossCase(c, profile);
      opts.onCommands?.(n);
    }),
    {
      ...fcParams(opts),
      examples: [...powerLossExamples, ...(profile.name === 'qcow2' ? qcow2PowerLossExamples : []), ...((opts.examples ?? []) as [PowerLossCase][])],
    },
  );
}
