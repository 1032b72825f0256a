/**
 * The blkverify filter (`blkverify:RAW_REFERENCE:IMAGE`): every request goes to a raw reference
 * image and to the image under test. Reads are compared and the first differing byte fails the
 * request (QEMU aborts the process; a library reports EIO instead, naming the sector and the byte
 * offset); writes go to both, so the two stay in step for as long as the image under test is
 * correct.
 *
 * The reference is the node's `file` child (as QEMU's primary child); the image under test is
 * opened with format probing (or `driverOptions.testFormat`) and lives in the node's state.
 * Requests are sector-granular, as in QEMU's blkverify; the generic layer pads anything else.
 */
import type { BlockDriver, OpenOptions, WriteFlags } from '../../block/driver.js';
import { BDRV_SECTOR_SIZE } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import { IOVector } from '../../block/iovec.js';
import { BlockDriverState } from '../../block/node.js';

export const BLKVERIFY_PREFIX = 'blkverify:';

interface BlkverifyState {
  test: BlockDriverState;
}

/**
 * Split `blkverify:RAW:IMAGE`. QEMU splits at the first colon; so do we, except that a RAW
 * naming a protocol (`mem:ref`), as `isProtocol` tells, keeps its own colon.
 */
export function blkverifyParseFilename(
  filename: string,
  isProtocol: (name: string) => boolean = (n) => n === 'mem',
): { raw: string; image: string } {
  const bad = (): BlockError =>
    new BlockError('EINVAL', 'blkverify requires raw copy and original image path', { op: 'open', path: filename });
  if (!filename.startsWith(BLKVERIFY_PREFIX)) throw bad();
  const rest = filename.slice(BLKVERIFY_PREFIX.length);
  let c = rest.indexOf(':');
  if (c > 0 && isProtocol(rest.slice(0, c))) c = rest.indexOf(':', c + 1);
  if (c <= 0 || c === rest.length - 1) throw bad();
  return { raw: rest.slice(0, c), image: rest.slice(c + 1) };
}

function state(bs: BlockDriverState): BlkverifyState {
  const s = bs.opaque as BlkverifyState | null;
  if (!s || !bs.file) {
    throw new BlockError('EBADF', `blkverify node '${bs.filename}' is not open`, { op: 'blkverify', path: bs.filename });
  }
  return s;
}

/** A registered protocol or filter other than the host-file default. */
export function isProtocolName(bs: BlockDriverState, name: string): boolean {
  const d = bs.registry.find(name);
  return d !== undefined && d.protocolName === name;
}

async function blkverifyOpen(bs: BlockDriverState, options: OpenOptions): Promise<void> {
  const { raw, image } = blkverifyParseFilename(bs.filename, (n) => isProtocolName(bs, n));
  const common = {
    // Both images are the filter's children: a protocol node among them may grow.
    child: true,
    readOnly: options.readOnly,
    noFlush: options.noFlush,
    forceShare: options.forceShare,
    clock: bs.clock,
    registry: bs.registry,
    depth: bs.depth,
  };
  // The reference is raw by definition; read it through the raw format when there is one, so a
  // raw-format quirk cannot make the two sides differ for the wrong reason.
  const rawFormat = bs.registry.find('raw') ? 'raw' : bs.registry.findProtocol(raw).formatName;
  bs.file = await BlockDriverState.open(raw, { ...common, format: rawFormat });
  const test = await BlockDriverState.open(image, { ...common, format: options.driverOptions?.testFormat });
  bs.opaque = { test } satisfies BlkverifyState;
}

async function blkverifyClose(bs: BlockDriverState): Promise<void> {
  const s = bs.opaque as BlkverifyState | null;
  bs.opaque = null;
  // The reference is `file` and the generic layer closes it; the test image is ours.
  if (s) await s.test.close();
}

/** The message QEMU's blkverify printed, plus the byte offset. */
function mismatch(op: 'read' | 'write', offset: number, bytes: number, diffAt: number): BlockError {
  const sector = Math.floor(diffAt / BDRV_SECTOR_SIZE);
  return new BlockError(
    'EIO',
    `blkverify: ${op} sector_num=${Math.floor(offset / BDRV_SECTOR_SIZE)} nb_sectors=${Math.ceil(bytes / BDRV_SECTOR_SIZE)} contents mismatch in sector ${sector} (offset ${diffAt})`,
    { op: `blkverify_${op}`, offset: diffAt },
  );
}

/** Settle both sides before reporting: an error on one side must not leave the other running. */
async function both(a: Promise<void>, b: Promise<void>): Promise<void> {
  const [ra, rb] = await Promise.allSettled([a, b]);
  if (ra.status === 'rejected') throw ra.reason;
  if (rb.status === 'rejected') throw rb.reason;
}

export const blkverifyDriver: BlockDriver = {
  formatName: 'blkverify',
  protocolName: 'blkverify',
  isFilter: true,
  requestAlignment: BDRV_SECTOR_SIZE,

  open: blkverifyOpen,
  close: blkverifyClose,
  // The test image is a child the generic layer does not see: drain and reopen it with ours.
  async drainBegin(bs) {
    await state(bs).test.drain();
  },
  async reopen(bs, options) {
    await state(bs).test.reopen({ readOnly: options.readOnly, noFlush: options.noFlush });
  },

  async coPreadv(bs, offset, bytes, qiov) {
    const s = state(bs);
    // The test image reads into the caller's buffer, the reference into a scratch one.
    const ref = new Uint8Array(bytes);
    await both(s.test.preadv(offset, qiov.slice(0, bytes)), bs.file!.pread(offset, ref));
    const got = qiov.slice(0, bytes).toBuffer();
    for (let i = 0; i < bytes; i++) {
      if (got[i] !== ref[i]) throw mismatch('read', offset, bytes, offset + i);
    }
  },

  async coPwritev(bs, offset, bytes, qiov, flags: WriteFlags) {
    const s = state(bs);
    const part = qiov.slice(0, bytes);
    // Each side gets its own copy: a driver may keep or scribble on the buffer it was handed.
    const refCopy = IOVector.from(part.toBuffer());
    await both(s.test.pwritev(offset, part, flags), bs.file!.pwritev(offset, refCopy, flags));
  },

  async coFlush(bs) {
    // The reference holds nothing worth making durable (QEMU flushes only the test image).
    await state(bs).test.flush();
  },

  async truncate(bs, size) {
    const s = state(bs);
    await both(s.test.truncate(size), bs.file!.truncate(size));
  },

  getLength(bs) {
    return state(bs).test.getLength();
  },
};

/** The image under test behind a blkverify node (for tests that want to inspect it). */
export function blkverifyTestImage(bs: BlockDriverState): BlockDriverState | null {
  for (let n: BlockDriverState | null = bs; n; n = n.file) {
    if (n.driver === blkverifyDriver) return (n.opaque as BlkverifyState | null)?.test ?? null;
  }
  return null;
}
