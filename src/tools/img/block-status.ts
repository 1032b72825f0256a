// Block status as qemu-img's subcommands ask it: one layer with the generic layer's rules for
// unallocated ranges, and the status through a chain down to a base as QEMU's flag word.
import { BDRV_BLOCK_ALLOCATED, BDRV_BLOCK_DATA, BDRV_BLOCK_OFFSET_VALID, BDRV_BLOCK_ZERO, backingLengthNow, type BlockDriverState, type BlockStatus } from '../../index.js';

/** The status of one layer, with the generic block layer's rules for unallocated ranges. */
export type LayerStatus = BlockStatus;

/**
 * bdrv_block_status for one node: the driver's answer, plus "unallocated reads as zeros" when
 * there is no backing file or the range starts past the backing file's end.
 */
export async function layerStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<LayerStatus> {
  const st = await bs.blockStatus(offset, bytes);
  // ALLOCATED is what the driver itself claims (data or a zero marker); the generic layer's
  // "reads as zero" for unallocated ranges does not make them present.
  const r: LayerStatus = { ...st };
  if (!r.allocated && bs.driver.supportsBacking) {
    if (!bs.backing) r.zero = true;
    else if (offset >= (await bs.backing.getLength())) r.zero = true;
  }
  return r;
}

/**
 * The same status now, when the layer answers without waiting (a cached table, a backing
 * length known): null when it cannot, and layerStatus then asks and reports any error.
 */
export function layerStatusNow(bs: BlockDriverState, offset: number, bytes: number): LayerStatus | null {
  const st = bs.blockStatusNow(offset, bytes);
  if (st === null || st.allocated || !bs.driver.supportsBacking || st.zero) return st;
  const backingLen = backingLengthNow(bs);
  if (backingLen === null) return null;
  return offset >= backingLen ? { ...st, zero: true } : st;
}

export { BDRV_BLOCK_ALLOCATED, BDRV_BLOCK_DATA, BDRV_BLOCK_OFFSET_VALID, BDRV_BLOCK_ZERO };
export const BDRV_BLOCK_EOF = 0x20;

function toFlags(s: LayerStatus): number {
  return (
    (s.data ? BDRV_BLOCK_DATA : 0) |
    (s.zero ? BDRV_BLOCK_ZERO : 0) |
    (s.offset !== undefined ? BDRV_BLOCK_OFFSET_VALID : 0) |
    (s.allocated ? BDRV_BLOCK_ALLOCATED : 0)
  );
}

/**
 * blockStatusAboveFlags without a wait: when the top layer answers now (a host file's lseek, a
 * cached table; its length known) and no layer below it is to be asked. Null otherwise.
 */
export function blockStatusAboveFlagsNow(
  bs: BlockDriverState,
  base: BlockDriverState | null,
  offset: number,
  bytes: number,
): { flags: number; pnum: number } | null {
  const topLen = bs.knownLength();
  if (topLen === null) return null;
  const st = layerStatusNow(bs, offset, bytes);
  if (st === null || (!st.allocated && bs !== base && bs.backing !== null && bs.backing !== base)) return null;
  const flags = toFlags(st);
  return { flags: offset + st.pnum === topLen ? flags | BDRV_BLOCK_EOF : flags, pnum: st.pnum };
}

/**
 * bdrv_block_status_above(bs, base): the status through the chain down to (not including)
 * `base`, as QEMU's flag word. A layer that is shorter than the one above it reads as
 * allocated zeros past its end; EOF is set when the answer reaches the end of `bs`.
 */
export async function blockStatusAboveFlags(
  bs: BlockDriverState,
  base: BlockDriverState | null,
  offset: number,
  bytes: number,
): Promise<{ flags: number; pnum: number }> {
  // Answered now when the top layer can: convert and compare ask once per extent, and the
  // queued request path costs more than the answer.
  const now = blockStatusAboveFlagsNow(bs, base, offset, bytes);
  if (now !== null) return now;
  const topLen = bs.knownLength() ?? (await bs.getLength());
  let st = layerStatusNow(bs, offset, bytes) ?? (await layerStatus(bs, offset, bytes));
  let flags = toFlags(st);
  let pnum = st.pnum;
  if (!st.allocated && bs !== base) {
    for (let p = bs.backing; p && p !== base; p = p.backing) {
      if (offset >= (await p.getLength())) {
        // The layer above deferred to a shorter one: synthesised zeros count as allocated here.
        flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        break;
      }
      st = await layerStatus(p, offset, pnum);
      flags = toFlags(st);
      pnum = st.pnum;
      if (st.allocated) break;
    }
  }
  if (offset + pnum === topLen) flags |= BDRV_BLOCK_EOF;
  return { flags, pnum };
}
