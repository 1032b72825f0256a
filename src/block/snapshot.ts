/**
 * Internal snapshots of a node (QEMU's block/snapshot.c): the generic side of the driver
 * hooks, with QEMU's behaviour for formats that have none.
 */
import type { QEMUSnapshotInfo } from './driver.js';
import { IOVector } from './iovec.js';
import { BlockError, ERRNO_MESSAGES, toBlockError } from './errors.js';
import { checkWritable, inflight } from './io/requests.js';
import type { BlockDriverState } from './node.js';

/**
 * bdrv_snapshot_list: the format's snapshots. A node without the hook passes the question to
 * its file child when it is a filter; a format without snapshots has an empty list (qemu-img
 * prints nothing for it, as for an image without snapshots).
 */
export async function bdrvSnapshotList(bs: BlockDriverState): Promise<QEMUSnapshotInfo[]> {
  return inflight(bs, 'snapshot_list', async () => {
    if (bs.driver.snapshotList) return bs.driver.snapshotList(bs);
    if (bs.driver.isFilter === true && bs.file) return bdrvSnapshotList(bs.file);
    return [];
  });
}

/** bdrv_snapshot_find as qemu-img 7.2 uses it: by name only. */
export async function bdrvSnapshotFind(bs: BlockDriverState, name: string): Promise<QEMUSnapshotInfo | undefined> {
  return (await bdrvSnapshotList(bs)).find((sn) => sn.name === name);
}

/** The node that takes snapshots: the format itself, or below a filter (bdrv_snapshot_fallback). */
function snapshotNode(bs: BlockDriverState): BlockDriverState {
  let n = bs;
  while (n.driver.isFilter === true && n.file && !n.driver.snapshotCreate) n = n.file;
  return n;
}

/** bdrv_snapshot_create: ENOTSUP (errno -95 in qemu-img's message) without the hook. */
export async function bdrvSnapshotCreate(bs: BlockDriverState, sn: QEMUSnapshotInfo): Promise<void> {
  const n = snapshotNode(bs);
  checkWritable(n, 'snapshot_create');
  // Requests in flight finish first (bdrv_drained_begin): none may write into clusters
  // whose sharing is about to change.
  await n.drain();
  await inflight(n, 'snapshot_create', async () => {
    if (!n.driver.snapshotCreate) throw new BlockError('ENOTSUP', ERRNO_MESSAGES.ENOTSUP, { op: 'snapshot_create' });
    await n.driver.snapshotCreate(n, sn);
  });
}

export async function bdrvSnapshotGoto(bs: BlockDriverState, idOrName: string): Promise<void> {
  const n = snapshotNode(bs);
  checkWritable(n, 'snapshot_goto');
  await n.drain();
  await inflight(n, 'snapshot_goto', async () => {
    if (!n.driver.snapshotGoto) throw new BlockError('ENOTSUP', 'Block driver does not support snapshots', { op: 'snapshot_goto' });
    try {
      await n.driver.snapshotGoto(n, idOrName);
    } catch (e) {
      // Whatever went wrong, the tools say it as QEMU's error_setg_errno does.
      const be = toBlockError(e);
      throw new BlockError(be.code, `Failed to load snapshot: ${be.errnoMessage}`, { op: 'snapshot_goto', cause: e });
    }
  });
}

export async function bdrvSnapshotDelete(bs: BlockDriverState, id: string, name: string): Promise<void> {
  const n = snapshotNode(bs);
  checkWritable(n, 'snapshot_delete');
  await n.drain();
  await inflight(n, 'snapshot_delete', async () => {
    if (!n.driver.snapshotDelete) {
      throw new BlockError('ENOTSUP', `Block format '${n.driver.formatName}' used by device '' does not support internal snapshot deletion`, { op: 'snapshot_delete' });
    }
    await n.driver.snapshotDelete(n, id, name);
  });
}

/**
 * bdrv_snapshot_load_tmp: a read-only node shows a snapshot (matched by id and/or name) until
 * it is closed; what `convert -l` and `convert -s` read.
 */
export async function bdrvSnapshotLoadTmp(bs: BlockDriverState, id: string | undefined, name: string | undefined): Promise<void> {
  if (id === undefined && name === undefined) throw new BlockError('EINVAL', 'snapshot_id and name are both NULL', { op: 'snapshot_load_tmp' });
  const n = snapshotNode(bs);
  await inflight(n, 'snapshot_load_tmp', async () => {
    if (!n.driver.snapshotLoadTmp) {
      throw new BlockError('ENOTSUP', `Block format '${n.driver.formatName}' used by device '' does not support temporarily loading internal snapshots`, {
        op: 'snapshot_load_tmp',
      });
    }
    await n.driver.snapshotLoadTmp(n, id, name);
  });
}

/** bdrv_snapshot_load_tmp_by_id_or_name: as an id first, then (not found) as a name. */
export async function bdrvSnapshotLoadTmpByIdOrName(bs: BlockDriverState, idOrName: string): Promise<void> {
  try {
    await bdrvSnapshotLoadTmp(bs, idOrName, undefined);
  } catch (e) {
    const code = toBlockError(e).code;
    if (code !== 'ENOENT' && code !== 'EINVAL') throw e;
    await bdrvSnapshotLoadTmp(bs, undefined, idOrName);
  }
}

/**
 * bdrv_save_vmstate / bdrv_load_vmstate: VM state bytes at `pos` of the format's VM state
 * area, through a filter to the format below it; ENOTSUP where no format keeps one.
 */
export async function bdrvVmstate(bs: BlockDriverState, write: boolean, pos: number, buf: Uint8Array): Promise<void> {
  const op = write ? 'save_vmstate' : 'load_vmstate';
  if (write) checkWritable(bs, op);
  await inflight(bs, op, async () => {
    const drv = bs.driver;
    if (write && drv.saveVmstate) return drv.saveVmstate(bs, IOVector.from(buf), pos);
    if (!write && drv.loadVmstate) return drv.loadVmstate(bs, IOVector.from(buf), pos);
    if (bs.driver.isFilter === true && bs.file) return bdrvVmstate(bs.file, write, pos, buf);
    throw new BlockError('ENOTSUP', undefined, { op });
  });
}
