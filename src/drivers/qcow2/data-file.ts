/**
 * External data files (incompatible bit 2, the data file name extension; autoclear bit 1
 * "raw external data"). Guest data lives in another file, at host offset == guest offset;
 * the qcow2 file keeps only metadata, and refcounts count only its own clusters: a data
 * cluster has no refcount anywhere.
 *
 * The data file is a child node (`bs.dataFile`, QEMU's `data-file` child), opened from the
 * `data-file.*` options when given, else from the name the image records, used as given:
 * QEMU 7.2 opens it relative to the working directory, not to the image (unlike backing
 * files), and so do we. With raw external data the data file must read as the guest disk
 * without the metadata: zero writes and preallocation write the data file too, and L2
 * entries map guest offset to the same host offset.
 */
import type { OpenOptions } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import type { BlockDriverState } from '../../block/node.js';
import { bdrvOpenChild } from '../../block/open-options.js';
import { QCOW2_AUTOCLEAR_DATA_FILE_RAW, QCOW2_INCOMPAT_DATA_FILE, type QCowHeader } from './header.js';
import { qcow2PreWriteOverlapCheck } from './corrupt.js';
import { clusterType, L2E_OFFSET_MASK } from './entries.js';
import { qcow2DiscardPassthrough, type Qcow2DiscardType } from './refcount.js';
import type { BDRVQcow2State } from './state.js';

/** The image keeps its data in an external data file (has_data_file). */
export function qcow2HasDataFile(s: BDRVQcow2State): boolean {
  return (s.header.incompatibleFeatures & QCOW2_INCOMPAT_DATA_FILE) !== 0n;
}

/** The data file is a valid raw image of the guest disk (data_file_is_raw). */
export function qcow2DataFileIsRaw(s: BDRVQcow2State): boolean {
  return (s.header.autoclearFeatures & QCOW2_AUTOCLEAR_DATA_FILE_RAW) !== 0n;
}

/** The node guest data clusters live in: the data file, or the qcow2 file itself. */
export function qcow2DataNode(s: BDRVQcow2State): BlockDriverState {
  const node = s.bs.dataFile ?? (qcow2HasDataFile(s) ? null : s.bs.file);
  // An image opened without its data file (qemu-img info) does no guest I/O.
  if (!node) throw new BlockError('EIO', "'data-file' is required for this image", { op: 'qcow2', path: s.bs.filename });
  return node;
}

/**
 * Open the data file of the image under `bs` (the data-file part of qcow2_do_open), with
 * QEMU's errors: an image with the bit needs one (from the options or its extension), an
 * image without it takes none, and raw external data needs a data file. Nothing is opened
 * when no guest I/O will be done (info).
 */
export async function qcow2OpenDataFile(bs: BlockDriverState, header: QCowHeader, imageDataFile: string | null, options: OpenOptions): Promise<void> {
  const fail = (message: string): never => {
    throw new BlockError('EINVAL', message, { op: 'open', path: bs.filename });
  };
  if ((header.incompatibleFeatures & QCOW2_INCOMPAT_DATA_FILE) === 0n) {
    // Without guest I/O the option is not looked at (qemu-img info takes it silently).
    if (options.childOptions?.['data-file'] !== undefined && options.noIO !== true) {
      fail("'data-file' can only be set for images with an external data file");
    }
    if ((header.autoclearFeatures & QCOW2_AUTOCLEAR_DATA_FILE_RAW) !== 0n) fail('data-file-raw requires a data file');
    return;
  }
  // Given by the creator of a new image (QEMU passes its node by name), or not needed.
  if (bs.dataFile !== null || options.noIO === true) return;
  // The options first (they win over the recorded name), then the name the image records.
  const child = await bdrvOpenChild(bs, 'data-file', imageDataFile);
  if (!child) fail("'data-file' is required for this image");
  bs.dataFile = child;
}

/**
 * The overlap check before a guest data write at host `offset` (qcow2_pre_write_overlap_check
 * with data_file set): data going to a data file cannot overwrite metadata, so none is done.
 */
export function qcow2PreWriteDataCheck(s: BDRVQcow2State, offset: number, size: number): void {
  if (!qcow2HasDataFile(s)) qcow2PreWriteOverlapCheck(s, 0, offset, size);
}

/**
 * Drop a data cluster an L2 entry no longer points at (qcow2_free_any_cluster with a data
 * file): it has no refcount, so it is only discarded in the data file, when this kind of free
 * passes discards down. The entry was changed in the L2 cache first.
 */
export async function qcow2FreeDataCluster(s: BDRVQcow2State, entry: bigint, type: Qcow2DiscardType): Promise<void> {
  const t = clusterType(entry, s.header.version >= 3 && !s.extendedL2, true);
  if ((t !== 'normal' && t !== 'zero-alloc') || !qcow2DiscardPassthrough(s, type)) return;
  try {
    await qcow2DataNode(s).discard(Number(entry & L2E_OFFSET_MASK), s.clusterSize);
  } catch {
    // Discard is advisory, as in QEMU.
  }
}
