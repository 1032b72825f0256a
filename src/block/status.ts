/**
 * Allocation status (QEMU's bdrv_co_block_status, bdrv_is_allocated(_above),
 * bdrv_block_status_above): one layer, or the backing chain from the top down.
 */
import type { BlockStatus } from './driver.js';
import { BlockError } from './errors.js';
import { checkArgs, inflight, invalidNumber } from './io/requests.js';
import type { BlockDriverState } from './node.js';

export type Allocation = { allocated: boolean; pnum: number };

/**
 * Clamp a status query to the image (QEMU answers past-the-end queries with nothing).
 * Returns the number of bytes to ask about.
 */
async function statusRange(bs: BlockDriverState, op: string, offset: number, bytes: number): Promise<number> {
  checkArgs(bs, op, offset, bytes);
  // A user's protocol node answers for its sector tail too: the driver says zeros past EOF.
  return clampToLength(bs, op, offset, bytes, await bs.userLength());
}

function clampToLength(bs: BlockDriverState, op: string, offset: number, bytes: number, len: number): number {
  if (offset > len) {
    throw new BlockError('EIO', `${op}: offset ${offset} is past the end of the image (${len} bytes)`, {
      op,
      offset,
      path: bs.filename,
    });
  }
  return Math.min(bytes, len - offset);
}

/** Block status of this layer only. */
export async function bdrvBlockStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus> {
  checkArgs(bs, 'block_status', offset, bytes);
  return inflight(bs, 'block_status', async () => {
    // A length known without waiting saves a promise per query: map asks once per extent.
    const known = bs.knownLength();
    const n = known !== null ? clampToLength(bs, 'block_status', offset, bytes, known) : await statusRange(bs, 'block_status', offset, bytes);
    if (n === 0) return { pnum: 0, allocated: false, data: false, zero: false };
    return blockStatusUnchecked(bs, offset, n);
  });
}

/**
 * Block status of this layer now, synchronously, when the driver can answer without waiting
 * (its blockStatusNow hook): null when it cannot, or for anything blockStatus would refuse or
 * report, which then does the query properly. The query starts and ends within this call, so
 * it needs no place among the requests in flight.
 */
export function bdrvBlockStatusNow(bs: BlockDriverState, offset: number, bytes: number): BlockStatus | null {
  const drv = bs.driver;
  if (drv.blockStatusNow === undefined || invalidNumber(offset) || invalidNumber(bytes) || bytes === 0 || offset + bytes > Number.MAX_SAFE_INTEGER) return null;
  const len = bs.knownLength();
  if (len === null || offset >= len) return null;
  const n = Math.min(bytes, len - offset);
  const st = drv.blockStatusNow(bs, offset, n);
  if (st === null || !Number.isSafeInteger(st.pnum) || st.pnum <= 0) return null;
  return st.pnum > n ? { ...st, pnum: n } : st;
}

/** The driver's answer for a checked range, its pnum validated and clamped. */
export async function blockStatusUnchecked(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus> {
  const drv = bs.driver;
  if (!drv.coBlockStatus) {
    // QEMU's default for drivers without the hook: everything is allocated data, and a
    // protocol's data sits at the same offset in itself (so map shows "offset").
    if (drv.isProtocol === true) return { pnum: bytes, allocated: true, data: true, zero: false, offset, file: bs };
    return { pnum: bytes, allocated: true, data: true, zero: false };
  }
  const st = await drv.coBlockStatus(bs, offset, bytes);
  if (!Number.isSafeInteger(st.pnum) || st.pnum <= 0) {
    throw new BlockError('EIO', `Driver '${bs.driver.formatName}' returned block status with pnum ${st.pnum}`, {
      op: 'block_status',
      offset,
      path: bs.filename,
    });
  }
  return st.pnum > bytes ? { ...st, pnum: bytes } : st;
}

export async function bdrvIsAllocated(bs: BlockDriverState, offset: number, bytes: number): Promise<Allocation> {
  checkArgs(bs, 'is_allocated', offset, bytes);
  return inflight(bs, 'is_allocated', async () => {
    const n = await statusRange(bs, 'is_allocated', offset, bytes);
    if (n === 0) return { allocated: false, pnum: 0 };
    return isAllocatedUnchecked(bs, offset, n);
  });
}

async function isAllocatedUnchecked(bs: BlockDriverState, offset: number, bytes: number): Promise<Allocation> {
  const hook = bs.driver.coIsAllocated?.bind(bs.driver);
  if (hook) {
    const r = await hook(bs, offset, bytes);
    if (!Number.isSafeInteger(r.pnum) || r.pnum <= 0) {
      throw new BlockError('EIO', `Driver '${bs.driver.formatName}' returned is_allocated with pnum ${r.pnum}`, {
        op: 'is_allocated',
        offset,
        path: bs.filename,
      });
    }
    return { allocated: r.allocated, pnum: Math.min(r.pnum, bytes) };
  }
  const st = await blockStatusUnchecked(bs, offset, bytes);
  return { allocated: st.allocated, pnum: st.pnum };
}

/** The node and its backing nodes, top first, stopping before `base`. */
function chainAbove(bs: BlockDriverState, base: BlockDriverState | null): BlockDriverState[] {
  const nodes: BlockDriverState[] = base === bs ? [] : [bs];
  for (let b = bs.backing; b && b !== base; b = b.backing) nodes.push(b);
  return nodes;
}

/**
 * Is the range allocated anywhere from `bs` down to (not including) `base`
 * (bdrv_is_allocated_above)? `pnum` is how far the same answer holds.
 */
export async function bdrvIsAllocatedAbove(
  bs: BlockDriverState,
  base: BlockDriverState | null,
  offset: number,
  bytes: number,
): Promise<Allocation> {
  checkArgs(bs, 'is_allocated_above', offset, bytes);
  return inflight(bs, 'is_allocated_above', async () => {
    const n = await statusRange(bs, 'is_allocated_above', offset, bytes);
    if (n === 0) return { allocated: false, pnum: 0 };
    let pnum = n;
    for (const node of chainAbove(bs, base)) {
      const nodeLen = node === bs ? Infinity : await node.getLength();
      // A backing file shorter than the top reads as unallocated zeros past its end.
      if (offset >= nodeLen) continue;
      const ask = Math.min(n, nodeLen - offset);
      const r = node === bs ? await isAllocatedUnchecked(bs, offset, ask) : await node.isAllocated(offset, ask);
      if (r.allocated) return { allocated: true, pnum: r.pnum };
      // The unallocated answer holds only as far as every layer agrees; a layer's answer
      // that stops at its own end does not shorten it.
      if (r.pnum < pnum && (node === bs || offset + r.pnum < nodeLen)) pnum = r.pnum;
    }
    return { allocated: false, pnum };
  });
}

/**
 * Block status through the backing chain: the first layer that allocates the range answers;
 * `depth` says which (0 = this node). Unallocated everywhere reports the bottom layer's depth.
 */
export async function bdrvBlockStatusAbove(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus & { depth: number }> {
  checkArgs(bs, 'block_status', offset, bytes);
  return inflight(bs, 'block_status', async () => {
    let n = await statusRange(bs, 'block_status', offset, bytes);
    if (n === 0) return { pnum: 0, allocated: false, data: false, zero: false, depth: 0 };
    const nodes = chainAbove(bs, null);
    for (let depth = 0; ; depth++) {
      const node = nodes[depth];
      const nodeLen = node === bs ? Infinity : await node.getLength();
      if (offset >= nodeLen) {
        // Past the end of a shorter backing file: reads as zeros.
        return { pnum: n, allocated: false, data: false, zero: true, depth };
      }
      const ask = Math.min(n, nodeLen - offset);
      const st = node === bs ? await blockStatusUnchecked(bs, offset, ask) : await node.blockStatus(offset, ask);
      if (st.allocated || depth === nodes.length - 1) return { ...st, depth };
      n = st.pnum;
    }
  });
}
