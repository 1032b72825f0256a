/**
 * Guest command sequences and the runner that applies them to an image and to the byte-array
 * model side by side. Offsets and lengths are drawn as abstract numbers and placed at run time
 * (the image grows, so its size is not known when the command is drawn), with a bias towards
 * sector and cluster boundaries, where the bugs live.
 */
import fc from 'fast-check';
import { BlockDriverState, BlockError, IOVector, VirtualClock, aioToPromise, bdrvAmendOptions, type CheckResult, type CreateOptions } from '../../src/index.js';
import { memStoreRestore, memStoreSnapshot, memStripPrefix } from '../../src/drivers/mem/index.js';
import type { ImageSetup } from './harness.js';
import { firstDiff, pattern } from './model.js';
import type { FormatProfile } from './profile.js';
import { compressCommandArb, runCompressCommand, type CompressCommand } from './compress-cmds.js';
import { runSnapshotCommand, snapshotCommandArb, snapshotStats, type ModelSnapshot, type SnapshotCommand } from './snapshot-cmds.js';

export type Placement = 'any' | 'sector' | 'cluster' | 'edge';

export interface Span {
  at: number;
  len: number;
  place: Placement;
}

export type Command =
  | { op: 'write'; span: Span; seed: number }
  | { op: 'zero'; span: Span }
  | { op: 'read'; span: Span }
  | { op: 'flush' }
  | { op: 'grow'; by: number }
  | { op: 'reopen' }
  | { op: 'rebase'; how: 'copy' | 'remove' }
  | { op: 'check' }
  | { op: 'discard'; span: Span }
  | { op: 'map' }
  | { op: 'reopenCor' }
  | { op: 'aio'; write: boolean; span: Span; seed: number }
  | { op: 'rebaseTooLong'; extra: number }
  | { op: 'amend'; pick: number }
  | SnapshotCommand
  | CompressCommand;

export const spanArb: fc.Arbitrary<Span> = fc.record({
  at: fc.nat({ max: 0x7fffffff }),
  len: fc.nat({ max: 0x7fffffff }),
  place: fc.constantFrom<Placement>('any', 'sector', 'cluster', 'edge'),
});

/**
 * Commands for any format, plus internal snapshots and compressed writes when the profile says
 * the format has them.
 */
export function commandArb(profile?: FormatProfile): fc.Arbitrary<Command> {
  return fc.oneof(
    ...(profile?.snapshots === true ? [{ weight: 2, arbitrary: snapshotCommandArb as fc.Arbitrary<Command> }] : []),
    ...(profile?.compressedWrites === true ? [{ weight: 2, arbitrary: compressCommandArb as fc.Arbitrary<Command> }] : []),
    { weight: 6, arbitrary: fc.record({ op: fc.constant('write' as const), span: spanArb, seed: fc.nat({ max: 1 << 20 }) }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('zero' as const), span: spanArb }) },
    { weight: 5, arbitrary: fc.record({ op: fc.constant('read' as const), span: spanArb }) },
    { weight: 1, arbitrary: fc.constant({ op: 'flush' as const }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('grow' as const), by: fc.integer({ min: 0, max: 64 }) }) },
    { weight: 1, arbitrary: fc.constant({ op: 'reopen' as const }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('rebase' as const), how: fc.constantFrom<'copy' | 'remove'>('copy', 'remove') }) },
    { weight: 1, arbitrary: fc.constant({ op: 'check' as const }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('discard' as const), span: spanArb }) },
    { weight: 1, arbitrary: fc.constant({ op: 'map' as const }) },
    { weight: 1, arbitrary: fc.constant({ op: 'reopenCor' as const }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('rebaseTooLong' as const), extra: fc.nat({ max: 5000 }) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('amend' as const), pick: fc.nat({ max: 1000 }) }) },
    {
      weight: 2,
      arbitrary: fc.record({ op: fc.constant('aio' as const), write: fc.boolean(), span: spanArb, seed: fc.nat({ max: 1 << 20 }) }),
    },
  );
}

/**
 * Place an abstract span inside an image of `size` bytes with clusters of `cs` bytes, allocated
 * in units of `sub` bytes (subclusters; the cluster when there are none).
 */
export function place(span: Span, size: number, cs: number, maxLen: number, sub = cs): { offset: number; len: number } {
  let offset = span.at % size;
  // Half of the spans placed on (or next to) cluster boundaries go to subcluster boundaries
  // instead, chosen by a bit the placement drops anyway: the draws stay those of runs made
  // before subclusters, so their seeds replay.
  const unit = sub < cs && span.at % 2 === 1 ? sub : cs;
  switch (span.place) {
    case 'sector':
      offset -= offset % 512;
      break;
    case 'cluster':
      offset -= offset % unit;
      break;
    case 'edge': {
      // A few bytes either side of a cluster (or subcluster) boundary.
      const b = offset - (offset % unit);
      offset = Math.min(size - 1, Math.max(0, b + ((span.len % 17) - 8)));
      break;
    }
    case 'any':
      break;
  }
  const room = size - offset;
  let len: number;
  if (span.place === 'cluster' || span.place === 'sector') {
    const u = span.place === 'cluster' ? unit : 512;
    len = Math.min(room, u * (1 + (span.len % Math.max(1, Math.floor(maxLen / u)))));
  } else {
    len = Math.min(room, 1 + (span.len % maxLen));
  }
  return { offset, len };
}

/** Place a span in the image under test, at its cluster and subcluster boundaries. */
export function placeFor(setup: ImageSetup, span: Span): { offset: number; len: number } {
  const cs = setup.geom.clusterSize;
  return place(span, setup.model.size, cs, Math.min(3 * cs + 1024, 1 << 20), setup.profile.subclusterSize?.(setup.geom) ?? cs);
}

export class ModelMismatch extends Error {
  override readonly name = 'ModelMismatch';
}

export function describeCmd(c: Command, placed?: { offset: number; len: number }): string {
  const where = placed ? ` ${placed.offset}+${placed.len}` : '';
  return `${c.op}${where}${'how' in c ? ` ${c.how}` : ''}${'by' in c ? ` +${c.by}` : ''}`;
}

/** The format's own facts about the image (qemu-img info's "Format specific information"). */
async function specificInfo(bs: BlockDriverState): Promise<Record<string, unknown>> {
  const info = await bs.driver.getSpecificInfo?.(bs);
  return info?.data ?? {};
}

/** Assert that a check found nothing (or, with `leaksOk`, nothing but leaks). */
export function expectClean(r: CheckResult, what: string, leaksOk = false): void {
  if (r.corruptions !== 0 || r.checkErrors !== 0 || (!leaksOk && r.leaks !== 0)) {
    throw new ModelMismatch(
      `${what}: check found corruptions=${r.corruptions} leaks=${r.leaks} checkErrors=${r.checkErrors}`,
    );
  }
}

export async function readAndCompare(bs: BlockDriverState, setup: ImageSetup, offset: number, len: number, what: string) {
  const buf = new Uint8Array(len);
  await bs.pread(offset, buf);
  const want = setup.model.read(offset, len);
  const d = firstDiff(buf, want);
  if (d >= 0) {
    throw new ModelMismatch(
      `${what}: read ${offset}+${len} differs at guest offset ${offset + d}: got ${buf[d]} want ${want[d]}`,
    );
  }
}

/** Compare the whole disk with the model. */
export async function compareAll(bs: BlockDriverState, setup: ImageSetup, what: string): Promise<void> {
  const len = await bs.getLength();
  if (len !== setup.model.size) throw new ModelMismatch(`${what}: length ${len}, model ${setup.model.size}`);
  const step = 1 << 20;
  for (let off = 0; off < len; off += step) await readAndCompare(bs, setup, off, Math.min(step, len - off), what);
}

export interface RunState {
  bs: BlockDriverState;
  setup: ImageSetup;
  copies: number;
  executed: number;
  /** The node is open with copy-on-read. */
  cor?: boolean;
  /** Internal snapshots taken so far, oldest first. */
  snapshots?: ModelSnapshot[];
  log: string[];
}

/**
 * The unit copy-on-write fills in the image under test, and that `touched` counts in: its
 * subcluster (with extended L2 entries a write copies only the subclusters it touches), else
 * its cluster.
 */
export function touchUnit(setup: ImageSetup): number {
  return setup.profile.subclusterSize?.(setup.geom) ?? setup.geom.clusterSize;
}

/** Mark the units a write or copy-on-read over [offset, offset+len) made the image hold. */
export function markTouched(setup: ImageSetup, offset: number, len: number): void {
  const u = touchUnit(setup);
  for (let c = Math.floor(offset / u); c * u < offset + len; c++) setup.touched.add(c);
}

/** Apply one command to the image and the model; throws ModelMismatch on any divergence. */
export async function runCommand(st: RunState, c: Command): Promise<void> {
  const { setup } = st;
  const model = setup.model;
  const cs = setup.geom.clusterSize;
  const maxLen = Math.min(3 * cs + 1024, 1 << 20);
  st.executed++;
  switch (c.op) {
    case 'write': {
      const p = placeFor(setup, c.span);
      st.log.push(describeCmd(c, p));
      const data = pattern(p.len, c.seed);
      await st.bs.pwrite(p.offset, data);
      model.write(p.offset, data);
      markTouched(setup, p.offset, p.len);
      return;
    }
    case 'zero': {
      const p = placeFor(setup, c.span);
      st.log.push(describeCmd(c, p));
      await st.bs.writeZeroes(p.offset, p.len);
      model.zero(p.offset, p.len);
      markTouched(setup, p.offset, p.len);
      return;
    }
    case 'read': {
      const p = placeFor(setup, c.span);
      st.log.push(describeCmd(c, p));
      await readAndCompare(st.bs, setup, p.offset, p.len, st.log.join('; '));
      // Copy-on-read put what was read into the image: it stays after a backing removal.
      if (st.cor) markTouched(setup, p.offset, p.len);
      return;
    }
    case 'flush':
      st.log.push('flush');
      await st.bs.flush();
      return;
    case 'grow': {
      // Up to 48 sectors, or up to 16 whole clusters.
      const newSize = model.size + (c.by <= 48 ? c.by * 512 : (c.by - 48) * cs);
      st.log.push(`grow ${model.size}->${newSize}`);
      const oldSize = model.size;
      if ((st.snapshots?.length ?? 0) > 0 && (await specificInfo(st.bs)).compat === '0.10') {
        // A v2 image with internal snapshots keeps its size (its snapshots need not record theirs).
        const err = await st.bs.truncate(newSize).then(
          () => null,
          (e: unknown) => e,
        );
        if (newSize !== oldSize && (!(err instanceof BlockError) || err.code !== 'ENOTSUP')) {
          throw new ModelMismatch(`${st.log.join('; ')}: grow of a v2 image with snapshots gave ${String(err)}`);
        }
        return;
      }
      // v3 snapshots keep their own size: applying one later resizes back (snapshot-cmds.ts).
      await st.bs.truncate(newSize);
      if ((st.snapshots?.length ?? 0) > 0 && newSize !== oldSize) snapshotStats.grownWithSnapshots++;
      model.grow(newSize, setup.backingView ?? setup.tailView ?? undefined);
      await learnGrown(st.bs, setup, oldSize, st.log.join('; '), st.cor === true);
      return;
    }
    case 'reopen':
      st.log.push('reopen');
      await st.bs.close();
      st.bs = await setup.open();
      st.cor = false;
      return;
    case 'discard': {
      const p = placeFor(setup, c.span);
      st.log.push(describeCmd(c, p));
      await st.bs.discard(p.offset, p.len);
      // QED has no discard: the request succeeds and changes nothing (as qemu-io shows).
      if (setup.profile.discard === 'zeroes-clusters') await learnDiscard(st, p.offset, p.len);
      return;
    }
    case 'amend': {
      const choices = setup.profile.amendChoices ?? [];
      if (choices.length === 0) return;
      const opts = choices[c.pick % choices.length];
      st.log.push(`amend ${JSON.stringify(opts)}`);
      await amendKeepingData(st.bs, opts, setup, st.log.join('; '));
      // Its whole-disk read copied everything the backing file showed into the image.
      if (st.cor) markTouched(setup, 0, model.size);
      return;
    }
    case 'map': {
      st.log.push('map');
      await checkMap(st.bs, setup, st.log.join('; '));
      return;
    }
    case 'reopenCor': {
      // Copy-on-read: reads pull backing data into the image; the guest sees no change.
      st.log.push('reopen copy-on-read');
      await st.bs.close();
      st.cor = true;
      st.bs = await BlockDriverState.open(setup.top, {
        format: setup.format,
        registry: setup.registry,
        copyOnRead: true,
        clock: new VirtualClock(),
      });
      return;
    }
    case 'aio': {
      const sectors = Math.floor(model.size / 512);
      if (sectors === 0) return;
      const first = c.span.at % sectors;
      const nb = 1 + (c.span.len % Math.min(sectors - first, Math.max(1, Math.floor(maxLen / 512))));
      const offset = first * 512;
      st.log.push(`aio_${c.write ? 'write' : 'read'} ${offset}+${nb * 512}`);
      const buf = c.write ? pattern(nb * 512, c.seed) : new Uint8Array(nb * 512);
      await aioToPromise((cb) =>
        c.write ? st.bs.aioWritev(first, IOVector.from(buf), nb, cb) : st.bs.aioReadv(first, IOVector.from(buf), nb, cb),
      );
      if (c.write) {
        model.write(offset, buf);
        markTouched(setup, offset, buf.length);
      } else {
        if (st.cor) markTouched(setup, offset, buf.length);
        const want = model.read(offset, buf.length);
        const d = firstDiff(buf, want);
        if (d >= 0) throw new ModelMismatch(`${st.log.join('; ')}: aio read differs at ${offset + d}`);
      }
      return;
    }
    case 'rebaseTooLong': {
      // A backing name that does not fit in the header cluster: refused, nothing written.
      const tooLong = setup.profile.tooLongBackingName(cs, c.extra);
      const name = 'n'.repeat(tooLong.length);
      st.log.push(`rebase to a ${name.length}-byte name`);
      let err: unknown = null;
      try {
        await st.bs.changeBackingFile(name, 'raw');
      } catch (e) {
        err = e;
      }
      if (!(err instanceof BlockError) || err.code !== tooLong.code) {
        throw new ModelMismatch(`${st.log.join('; ')}: expected ${tooLong.code}, got ${err instanceof Error ? err.message : 'success'}`);
      }
      await st.bs.close();
      st.bs = await setup.open();
      st.cor = false;
      if (st.bs.backingFile !== setup.backingName) {
        throw new ModelMismatch(`${st.log.join('; ')}: backing file became '${st.bs.backingFile}'`);
      }
      return;
    }
    case 'snapshot':
      await runSnapshotCommand(st, c);
      return;
    case 'compress':
      await runCompressCommand(st, c);
      return;
    case 'check': {
      st.log.push('check');
      expectClean(await st.bs.check(), st.log.join('; '), setup.profile.leaksAfterCleanOps);
      return;
    }
    case 'rebase': {
      if (c.how === 'remove') {
        st.log.push('rebase remove');
        await st.bs.changeBackingFile(null, null);
        // What the image never touched now reads as zeros; touched units (clusters, or
        // subclusters) hold their data (copy-on-write copied the backing bytes in).
        const u = touchUnit(setup);
        for (let c0 = 0; c0 * u < model.size; c0++) {
          if (!setup.touched.has(c0)) model.zero(c0 * u, Math.min(u, model.size - c0 * u));
        }
        // A touched unit that straddles the end holds, past the end, what copy-on-write
        // copied from the backing file (QEMU does not clip the COW at the image end either):
        // a later grow shows it.
        const last = Math.floor((model.size - 1) / u);
        if (setup.touched.has(last) && (last + 1) * u > model.size && setup.backingView) {
          const tail = new Uint8Array((last + 1) * u);
          tail.set(setup.backingView.subarray(0, Math.min(tail.length, setup.backingView.length)));
          setup.tailView = tail;
        }
        if (setup.backingView) setup.removedBacking = setup.backingView;
        setup.backingView = null;
        setup.backingName = '';
        setup.backingFmt = '';
        // As in QEMU, the change is to the header only: the open node keeps reading its old
        // backing node until the image is opened again.
        await st.bs.close();
        st.bs = await setup.open();
        st.cor = false;
        return;
      }
      if (setup.backingName === '') return;
      // Point the image at a byte-identical copy of its backing file: nothing may change.
      st.copies++;
      // Backing names are relative, in the image's own namespace: for mem, name = store name;
      // for host files, a file next to the image.
      const newName = `${setup.prefix}-copy${st.copies}-${setup.backingFmt}`;
      if (setup.copyFile) setup.copyFile(setup.backingName, newName);
      else memStoreRestore(newName, memStoreSnapshot(memStripPrefix(setup.backingName)));
      st.log.push(`rebase copy ${newName}`);
      await st.bs.changeBackingFile(newName, setup.backingFmt);
      setup.backingName = newName;
      // The change is read back at the next open.
      await st.bs.close();
      st.bs = await setup.open();
      st.cor = false;
      if (st.bs.backingFile !== newName) {
        throw new ModelMismatch(`${st.log.join('; ')}: backing file is '${st.bs.backingFile}', want '${newName}'`);
      }
      return;
    }
  }
}

/**
 * After a grow from `oldSize` (the model already grown with the backing bytes): where the
 * profile lets the format zero the new range instead, each new sector reads as the model or
 * as zeros, and the model learns which.
 */
export async function learnGrown(bs: BlockDriverState, setup: ImageSetup, oldSize: number, what: string, cor = false): Promise<void> {
  const { model } = setup;
  if (setup.profile.grow !== 'backing-or-zeros' || model.size <= oldSize) return;
  const got = new Uint8Array(model.size - oldSize);
  await bs.pread(oldSize, got);
  // Read through copy-on-read, the new range is in the image now.
  if (cor) markTouched(setup, oldSize, got.length);
  for (let a = oldSize; a < model.size; a += 512) {
    const b = Math.min(model.size, a + 512);
    const now = got.subarray(a - oldSize, b - oldSize);
    if (firstDiff(now, model.read(a, b - a)) < 0) continue;
    if (!now.every((x) => x === 0)) throw new ModelMismatch(`${what}: grown range at ${a} reads neither the backing file nor zeros`);
    model.zero(a, b - a);
  }
}

/**
 * After a discard of [offset, offset+len) on a format whose discard may drop clusters: each
 * cluster wholly inside the range (or the image's last cluster, from its start to the end)
 * reads as before or as zeros; every other byte as before. The model learns which.
 */
async function learnDiscard(st: RunState, offset: number, len: number): Promise<void> {
  const { model } = st.setup;
  const cs = st.setup.geom.clusterSize;
  const got = new Uint8Array(len);
  await st.bs.pread(offset, got);
  // Copy-on-read put what was read into the image: it stays after a backing removal.
  if (st.cor) markTouched(st.setup, offset, len);
  for (let c0 = Math.floor(offset / cs) * cs; c0 < offset + len; c0 += cs) {
    const a = Math.max(offset, c0);
    const b = Math.min(offset + len, c0 + cs, model.size);
    const whole = a === c0 && (b === c0 + cs || b === model.size);
    const old = model.read(a, b - a);
    const now = got.subarray(a - offset, b - offset);
    if (firstDiff(now, old) < 0) continue;
    if (whole && now.every((x) => x === 0)) {
      model.zero(a, b - a);
      continue;
    }
    throw new ModelMismatch(`${st.log.join('; ')}: discard changed ${a}+${b - a} to something neither old nor zeros`);
  }
}

/**
 * Block status agrees with the data: extents cover the disk without gaps, a range reported as
 * zero reads as zeros, and a mapped range holds the guest's bytes at the reported host offset.
 * (With a backing chain, blockStatusAbove answers for the whole chain.)
 */
/** How many mapped extents checkMap compared with the host bytes. */
export const mapStats = { mappedExtentsChecked: 0, zeroExtentsChecked: 0 };

export async function checkMap(bs: BlockDriverState, setup: ImageSetup, what: string): Promise<void> {
  const len = setup.model.size;
  let off = 0;
  let extents = 0;
  while (off < len) {
    const st = await bs.blockStatusAbove(off, len - off);
    if (!Number.isSafeInteger(st.pnum) || st.pnum <= 0 || off + st.pnum > len) {
      throw new ModelMismatch(`${what}: block status at ${off} returned pnum ${st.pnum}`);
    }
    if (st.zero) {
      mapStats.zeroExtentsChecked++;
      const bytes = setup.model.read(off, st.pnum);
      const nz = bytes.findIndex((x) => x !== 0);
      if (nz >= 0) throw new ModelMismatch(`${what}: block status says zero at ${off}+${st.pnum}, but offset ${off + nz} holds ${bytes[nz]}`);
    }
    // A mapped extent (qemu-img map's "offset"): the host bytes there are the guest bytes.
    if (st.data && st.offset !== undefined && st.file) {
      mapStats.mappedExtentsChecked++;
      const n = Math.min(st.pnum, 1 << 16);
      const host = new Uint8Array(n);
      await st.file.pread(st.offset, host);
      const want = setup.model.read(off, n);
      const d = firstDiff(host, want);
      if (d >= 0) {
        throw new ModelMismatch(
          `${what}: block status maps ${off}+${st.pnum} to ${st.file.filename} offset ${st.offset}, but host byte ${st.offset + d} is ${host[d]}, guest ${want[d]}`,
        );
      }
    }
    off += st.pnum;
    if (++extents > 1_000_000) throw new ModelMismatch(`${what}: block status walk does not end`);
  }
}

/** Amends done and refused, so that tests can tell the amend commands really ran. */
export const amendStats = { amended: 0, refused: 0 };

/**
 * Amend `options`: a refusal (EINVAL, ENOTSUP) is allowed; either way the guest's bytes are
 * unchanged and check finds nothing.
 */
export async function amendKeepingData(bs: BlockDriverState, options: CreateOptions, setup: ImageSetup, what: string): Promise<void> {
  try {
    await bdrvAmendOptions(bs, options);
    amendStats.amended++;
  } catch (e) {
    if (!(e instanceof BlockError) || (e.code !== 'EINVAL' && e.code !== 'ENOTSUP')) throw e;
    amendStats.refused++;
  }
  await compareAll(bs, setup, `after ${what}`);
  expectClean(await bs.check(), `check after ${what}`, setup.profile.leaksAfterCleanOps);
}

/** Run a whole sequence, then compare everything and check; the image is closed at the end. */
export async function runSequence(setup: ImageSetup, cmds: readonly Command[]): Promise<number> {
  const st: RunState = { bs: await setup.open(), setup, copies: 0, executed: 0, log: [] };
  try {
    for (const c of cmds) await runCommand(st, c);
    await compareAll(st.bs, setup, `after ${st.log.join('; ')}`);
    expectClean(await st.bs.check(), `final check after ${st.log.join('; ')}`, setup.profile.leaksAfterCleanOps);
    await st.bs.close();
    // And once more from a fresh open: everything reached the store.
    const again = await setup.open({ readOnly: true });
    try {
      await compareAll(again, setup, `after reopen: ${st.log.join('; ')}`);
    } finally {
      await again.close();
    }
  } catch (e) {
    await st.bs.close().catch(() => undefined);
    if (e instanceof BlockError) {
      throw new ModelMismatch(`${st.log.join('; ')}: unexpected ${e.code}: ${e.message}`, { cause: e });
    }
    throw e;
  }
  return st.executed;
}
