/**
 * Internal snapshot commands for formats whose profile has them (qcow2): create, apply and
 * delete in the sequential model, which keeps the guest bytes of every snapshot and restores
 * them on apply; and the create/delete operations the power-loss property interleaves with
 * guest writes.
 */
import fc from 'fast-check';
import {
  BlockError,
  bdrvSnapshotCreate,
  bdrvSnapshotDelete,
  bdrvSnapshotFind,
  bdrvSnapshotGoto,
  type BlockDriverState,
} from '../../src/index.js';
import { type RunState, touchUnit } from './commands.js';

export type SnapshotAction = 'create' | 'apply' | 'delete';

export interface SnapshotCommand {
  op: 'snapshot';
  action: SnapshotAction;
  /** Which of three names (names may repeat, as in QEMU). */
  pick: number;
}

export const snapshotCommandArb: fc.Arbitrary<SnapshotCommand> = fc.record({
  op: fc.constant('snapshot' as const),
  action: fc.constantFrom<SnapshotAction>('create', 'create', 'apply', 'delete'),
  pick: fc.nat({ max: 2 }),
});

/** What the model remembers of a snapshot: the guest bytes and the clusters the image held. */
export interface ModelSnapshot {
  name: string;
  bytes: Uint8Array;
  touched: Set<number>;
}

/** Applies that changed the disk size, and grows of images holding snapshots: the tests see they ran. */
export const snapshotStats = { appliedAcrossSizes: 0, grownWithSnapshots: 0 };

class SnapshotMismatch extends Error {
  override readonly name = 'ModelMismatch';
}

/** Take a snapshot as qemu-img does; false when refcounts would overflow (EINVAL, nothing written). */
export async function snapshotCreate(bs: BlockDriverState, name: string): Promise<boolean> {
  try {
    await bdrvSnapshotCreate(bs, { id: '', name, vmStateSize: 0, dateSec: 0, dateNsec: 0, vmClockNsec: 0n, icount: 0n });
    return true;
  } catch (e) {
    // Narrow refcounts (1 or 2 bits) cannot count a second reference.
    if (e instanceof BlockError && e.code === 'EINVAL') return false;
    // Data in an external data file cannot be shared with a snapshot: QEMU refuses them too.
    if (e instanceof BlockError && e.code === 'ENOTSUP' && bs.dataFile !== null) return false;
    throw e;
  }
}

/** Delete the first snapshot called `name`, as qemu-img snapshot -d; false when there is none. */
export async function snapshotDelete(bs: BlockDriverState, name: string): Promise<boolean> {
  const sn = await bdrvSnapshotFind(bs, name);
  if (sn === undefined) return false;
  await bdrvSnapshotDelete(bs, sn.id, sn.name);
  return true;
}

export async function runSnapshotCommand(st: RunState, c: SnapshotCommand): Promise<void> {
  const { setup } = st;
  const name = `s${c.pick}`;
  const list = (st.snapshots ??= []);
  st.log.push(`snapshot ${c.action} ${name}`);
  switch (c.action) {
    case 'create':
      if (await snapshotCreate(st.bs, name)) list.push({ name, bytes: setup.model.bytes.slice(), touched: new Set(setup.touched) });
      return;
    case 'delete': {
      const deleted = await snapshotDelete(st.bs, name);
      const i = list.findIndex((s) => s.name === name);
      if (deleted !== i >= 0) throw new SnapshotMismatch(`${st.log.join('; ')}: delete ${deleted ? 'found' : 'missed'} the snapshot`);
      if (i >= 0) list.splice(i, 1);
      return;
    }
    case 'apply': {
      const sn = list.find((s) => s.name === name);
      let err: unknown = null;
      try {
        await bdrvSnapshotGoto(st.bs, name);
      } catch (e) {
        err = e;
      }
      if (!sn) {
        if (!(err instanceof BlockError) || err.code !== 'ENOENT') throw new SnapshotMismatch(`${st.log.join('; ')}: applying a missing snapshot gave ${String(err)}`);
        return;
      }
      // Narrow refcounts (1 or 2 bits, maybe from an amend) cannot count the snapshot's
      // clusters twice: refused before anything is written, the guest sees what it saw.
      if (err instanceof BlockError && err.code === 'EINVAL') return;
      if (err instanceof Error) throw err;
      // The image takes the snapshot's bytes and its size (the snapshot may predate a grow).
      if (sn.bytes.length !== setup.model.size) snapshotStats.appliedAcrossSizes++;
      setup.model.bytes = sn.bytes.slice();
      setup.touched = new Set(sn.touched);
      // What the snapshot left to a backing file that has been removed since reads as zeros.
      if (setup.backingView === null) {
        const u = touchUnit(setup);
        for (let k = 0; k * u < setup.model.size; k++) if (!setup.touched.has(k)) setup.model.zero(k * u, Math.min(u, setup.model.size - k * u));
        // Past the end of its last unit (cluster, or subcluster), the snapshot keeps what
        // copy-on-write put there then: the removed backing file's bytes (a later grow shows
        // them) or zeros.
        const last = Math.floor((setup.model.size - 1) / u);
        const removed = setup.removedBacking;
        if (setup.touched.has(last) && setup.model.size % u !== 0 && removed) {
          const tail = new Uint8Array((last + 1) * u);
          tail.set(removed.subarray(0, Math.min(tail.length, removed.length)));
          setup.tailView = tail;
        } else {
          setup.tailView = undefined;
        }
      }
      return;
    }
  }
}
