/**
 * The power-loss property: the power goes at a random request of the powerloss protocol.
 * What a completed flush covered must survive, the rest may be old or new per sector, and
 * the open-time repair must leave nothing worse than leaked clusters.
 */
import fc from 'fast-check';
import { BlockDriverState, BlockError, VirtualClock, bdrvAmendOptions } from '../../src/index.js';
import { memStoreGet, memStoreRead } from '../../src/drivers/mem/index.js';
import { powerlossStoreCreate } from '../../src/drivers/powerloss/index.js';
import { ModelMismatch, spanArb } from './commands.js';
import { buildImage, fcParams, freshPrefix, hostRawBacking, profileOf, type Geometry, type PropertyOptions } from './harness.js';
import { ByteModel, mulberry32 } from './model.js';
import type { FormatProfile } from './profile.js';
import { QED_PROFILE } from './qed-profile.js';
import { compressStats } from './compress-cmds.js';
import { callbackGeometryArb, powerlossCountingRegistry } from './submit-stats.js';
import { applyWrite, compareWithUncertain, expectOnlyLeaks, faultStats, guestWriteArb, isSnapshotOp, placeWrite, type GuestWrite } from './fault-props.js';

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
 * qcow2 only. Fuzz seed 3 (wide): an image with an external data file over a qcow2 backing
 * file. A write COWs cluster 0 from the backing file into the data file and links it in the
 * L2 cache (owing a data-file flush before that table is written); an amend to
 * refcount_bits=1 frees the old refcount structures, whose decrease made the L2 cache give up
 * its dependency on the refcount cache, and that cleared the owed data flush with only the
 * qcow2 file flushed. The next write wrote the L2 table out: the power kept the entry and
 * not the data, and cluster 0 read as zeros instead of the backing file's bytes.
 */
export const dataFileAmendCase: PowerLossCase = {
  geom: { clusterSize: 512, tableSize: 1, size: 1024, backing: 'qcow2', backingSize: 1024, backingClusterSize: 4096, seed: 942786070, formatOptions: { dataFile: 'data.raw' } },
  ops: [
    { w: { kind: 'write', span: { at: 0, len: 0, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false, flushDuring: false },
    { w: { kind: 'aio', span: { at: 0, len: 512, place: 'any' }, seed: 0 }, flushAfter: false, withNext: false, flushDuring: false },
  ],
  crashAfter: 20,
  crashSeed: 0,
  after: [],
  repairCrash: null,
  amend: { after: 0, pick: 105 },
  hostBacking: false,
  slowWrites: false,
};

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
  [dataFileAmendCase],
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
