/**
 * Fault properties: the guest writes and model checks they share, and injected I/O errors
 * (blkdebug); power loss is in powerloss-props.ts. In both, what the guest was told succeeded
 * must survive, what failed may be old or new per sector, and the image must come back with
 * nothing worse than leaked clusters.
 */
import fc from 'fast-check';
import { BlockDriverState, BlockError, IOVector, VirtualClock, aioToPromise, type CheckResult } from '../../src/index.js';
import { blkdebugState } from '../../src/drivers/blkdebug/index.js';
import { ModelMismatch, expectClean, placeFor, spanArb, type Span } from './commands.js';
import { buildImage, fcParams, freshPrefix, profileOf, type Geometry, type ImageSetup, type PropertyOptions } from './harness.js';
import { pattern } from './model.js';
import type { FormatProfile } from './profile.js';
import { QED_PROFILE } from './qed-profile.js';
import { compressedClusterAt, compressibleData, writeCompressedOrPlain } from './compress-cmds.js';
import { snapshotCreate, snapshotDelete } from './snapshot-cmds.js';

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

export const isSnapshotOp = (w: GuestWrite): boolean => w.kind === 'snapshot' || w.kind === 'unsnapshot';

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
