/**
 * Power loss during the metadata updates around internal snapshots that change sizes and
 * versions (formats whose profile has snapshots): a grow or shrink of an image that has
 * snapshots, an apply of a snapshot taken at another size, a downgrade that expands the
 * snapshots' zero clusters, and an upgrade that rewrites a v2 snapshot table lacking extra
 * data. Every earlier step is flushed; the power goes at a random request of the operation
 * and a random subset of its unflushed writes survives. After the open-time repair check finds
 * nothing but leaks, the disk reads as before the operation or as after it (a cut-short
 * resize may already have dropped clusters past the new end: those read as zeros), and every
 * snapshot still reads its own bytes at its own size.
 */
import fc from 'fast-check';
import { BlockDriverState, BlockError, VirtualClock, bdrvAmendOptions, bdrvSnapshotGoto } from '../../src/index.js';
import { memStoreRead, memStripPrefix } from '../../src/drivers/mem/index.js';
import { powerlossStoreCreate } from '../../src/drivers/powerloss/index.js';
import { ModelMismatch } from './commands.js';
import { expectOnlyLeaks } from './fault-props.js';
import { buildImage, fcParams, freshPrefix, profileOf, type Geometry, type PropertyOptions } from './harness.js';
import { firstDiff, mulberry32, pattern } from './model.js';
import { snapshotCreate } from './snapshot-cmds.js';

export type SizeOp = 'grow' | 'shrink' | 'apply' | 'downgrade' | 'upgrade';

export interface SnapshotPowerLossCase {
  geom: Geometry;
  op: SizeOp;
  /** Clusters added by the grow before the second snapshot, and by a 'grow' op. */
  growBy: number;
  crashAfter: number;
  crashSeed: number;
  seed: number;
}

export const snapshotPowerLossStats = { cases: 0, cut: 0, completed: 0 };

/**
 * Rewrite a qcow2 snapshot table in place with `keep` bytes of extra data per entry (what an
 * older QEMU wrote into v2 images); the table only gets shorter.
 */
export function stripSnapshotExtraData(b: Uint8Array, keep: number): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const nb = v.getUint32(60);
  const off = Number(v.getBigUint64(64));
  const out: number[] = [];
  let pos = off;
  for (let i = 0; i < nb; i++) {
    pos = Math.ceil(pos / 8) * 8;
    while (out.length % 8 !== 0) out.push(0);
    const extra = v.getUint32(pos + 36);
    const strings = v.getUint16(pos + 12) + v.getUint16(pos + 14);
    // A copy of its own (a Buffer's slice would be a view into the file's bytes).
    const h = Uint8Array.from(b.subarray(pos, pos + 40));
    new DataView(h.buffer).setUint32(36, keep);
    out.push(...h, ...b.subarray(pos + 40, pos + 40 + keep), ...b.subarray(pos + 40 + extra, pos + 40 + extra + strings));
    pos += 40 + extra + strings;
  }
  b.set(out, off);
}

const caseArb = (opts: PropertyOptions): fc.Arbitrary<SnapshotPowerLossCase> =>
  fc.record({
    // No backing file: what the guest sees is the image alone.
    geom: profileOf(opts)
      .geometryArb(opts.wide === true)
      .map((g): Geometry => ({ ...g, backing: 'none' })),
    op: fc.constantFrom<SizeOp>('grow', 'shrink', 'apply', 'apply', 'downgrade', 'upgrade'),
    growBy: fc.integer({ min: 1, max: 6 }),
    crashAfter: fc.nat({ max: opts.wide ? 120 : 50 }),
    crashSeed: fc.nat(),
    seed: fc.nat({ max: 1 << 20 }),
  });

async function readAll(bs: BlockDriverState): Promise<Uint8Array> {
  const buf = new Uint8Array(await bs.getLength());
  await bs.pread(0, buf);
  return buf;
}

/** Every sector of `got` is `before`'s or zeros (zeros past `before`'s end). */
function oldOrZeros(got: Uint8Array, before: Uint8Array): boolean {
  for (let a = 0; a < got.length; a += 512) {
    const now = got.subarray(a, a + 512);
    if (now.every((x) => x === 0)) continue;
    if (firstDiff(now, before.subarray(a, a + 512)) !== -1) return false;
  }
  return true;
}

export async function runSnapshotPowerLossCase(c: SnapshotPowerLossCase, opts: PropertyOptions): Promise<number> {
  const profile = profileOf(opts);
  const v2 = c.geom.formatOptions?.compat === '0.10';
  // Resizing a v2 image with snapshots is refused; upgrade starts from v2, downgrade from v3.
  const op: SizeOp = v2 && c.op !== 'upgrade' ? 'upgrade' : !v2 && c.op === 'upgrade' ? 'downgrade' : c.op;
  const setup = await buildImage(c.geom, freshPrefix('spl'), { profile });
  const cs = c.geom.clusterSize;
  let commands = 0;
  try {
    // Before the cut: data, a zero write (zero clusters to expand), a snapshot, a grow (v3),
    // more data, a second snapshot. qemu-img flushes after each; so do we.
    const snaps: { name: string; bytes: Uint8Array }[] = [];
    let bs = await setup.open();
    const size0 = await bs.getLength();
    await bs.pwrite(0, pattern(Math.min(size0, 3 * cs), c.seed));
    await bs.writeZeroes(0, Math.min(size0, cs));
    if (await snapshotCreate(bs, 's0')) snaps.push({ name: 's0', bytes: await readAll(bs) });
    // (A downgrade needs every snapshot at the current size: no grow then.)
    if (!v2 && op !== 'downgrade') await bs.truncate(size0 + c.growBy * cs);
    const size1 = await bs.getLength();
    await bs.pwrite(size1 - Math.min(size1, cs), pattern(Math.min(size1, cs), c.seed + 1));
    if (await snapshotCreate(bs, 's1')) snaps.push({ name: 's1', bytes: await readAll(bs) });
    await bs.close();
    commands += 6;

    const name = `${setup.prefix}-top.${setup.format}`;
    const bytes = memStoreRead(memStripPrefix(setup.top));
    if (op === 'upgrade') stripSnapshotExtraData(bytes, 0);
    const store = powerlossStoreCreate(name, bytes);
    store.flush();
    const open = (): Promise<BlockDriverState> => BlockDriverState.open(`powerloss:${name}`, { format: setup.format, registry: setup.registry, clock: new VirtualClock() });
    bs = await open();
    const before = await readAll(bs);
    let after = before;
    store.failAfter(c.crashAfter);
    snapshotPowerLossStats.cases++;
    try {
      // The state the operation leads to, known before it starts (the cut may come anywhere).
      if (op === 'grow') {
        after = new Uint8Array(before.length + c.growBy * cs);
        after.set(before);
        await bs.truncate(after.length);
      } else if (op === 'shrink') {
        after = before.slice(0, Math.max(512, before.length - c.growBy * 512 * 3));
        await bs.truncate(after.length);
      } else if (op === 'apply') {
        if (snaps.length > 0) {
          after = snaps[0].bytes;
          await bdrvSnapshotGoto(bs, snaps[0].name);
        }
      } else {
        await bdrvAmendOptions(bs, { compat: op === 'upgrade' ? '1.1' : '0.10' });
      }
      commands++;
      await bs.flush();
      snapshotPowerLossStats.completed++;
    } catch (e) {
      // Refusals (refcounts too narrow for an apply) change nothing; anything else is the cut.
      if (!store.dead && !(e instanceof BlockError && (e.code === 'EINVAL' || e.code === 'ENOTSUP'))) throw e;
      if (store.dead) snapshotPowerLossStats.cut++;
      else after = before;
    }
    store.failAfter(0);
    await bs.close().catch(() => undefined);
    store.crash(mulberry32(c.crashSeed));

    const what = `${op} cut at request ${c.crashAfter}`;
    bs = await open();
    try {
      expectOnlyLeaks(await bs.check(), `${what}: after the open-time repair`);
      const got = await readAll(bs);
      const exact = firstDiff(got, after) === -1 || firstDiff(got, before) === -1;
      // A resize cut short: at the old or the new length, each sector old or zeros.
      const partial = op !== 'downgrade' && op !== 'upgrade' && (got.length === before.length || got.length === after.length) && (op !== 'apply' ? oldOrZeros(got, before) : oldOrZeros(got, before) || firstDiff(got, after) === -1);
      if (!exact && !partial) throw new ModelMismatch(`${what}: the disk (${got.length} bytes) is neither the old (${before.length}) nor the new (${after.length}) state`);
      for (const sn of snaps) {
        try {
          await bdrvSnapshotGoto(bs, sn.name);
        } catch (e) {
          // Narrow refcounts (1 or 2 bits) cannot count the snapshot's clusters twice: refused.
          if (e instanceof BlockError && e.code === 'EINVAL') continue;
          throw e;
        }
        const d = firstDiff(await readAll(bs), sn.bytes);
        if (d !== -1) throw new ModelMismatch(`${what}: snapshot ${sn.name} differs at ${d}`);
        commands++;
      }
      expectOnlyLeaks(await bs.check(), `${what}: after applying every snapshot`);
    } finally {
      await bs.close();
    }
  } finally {
    setup.cleanup();
  }
  return commands;
}

export const snapshotPowerLossExamples: [SnapshotPowerLossCase][] = [];

export async function propSnapshotPowerLoss(opts: PropertyOptions): Promise<void> {
  if (!profileOf(opts).snapshots) return;
  await fc.assert(
    fc.asyncProperty(caseArb(opts), async (c) => {
      const n = await runSnapshotPowerLossCase(c, opts);
      opts.onCommands?.(n);
    }),
    { ...fcParams(opts), examples: [...snapshotPowerLossExamples, ...((opts.examples ?? []) as [SnapshotPowerLossCase][])] },
  );
}
