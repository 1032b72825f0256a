/**
 * Image creation (qemu-img create -f qed): the same bytes QEMU writes.
 *
 * Layout: header cluster (64-byte header, backing name right after it), then an all-zero L1
 * table of table_size clusters at offset cluster_size. File length (1 + ts) × cs.
 */
import type { CreateContext, CreateOptions, CreateOptionSpec } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import {
  encodeHeader,
  QED_CLUSTER_SIZE_MESSAGE,
  QED_DEFAULT_CLUSTER_SIZE,
  QED_DEFAULT_TABLE_SIZE,
  QED_F_BACKING_FILE,
  QED_F_BACKING_FORMAT_NO_PROBE,
  QED_HEADER_STRUCT_SIZE,
  QED_MAGIC,
  QED_MAX_BACKING_NAME,
  QED_TABLE_SIZE_MESSAGE,
  qedImageSizeMessage,
  qedIsClusterSizeValid,
  qedIsImageSizeValid,
  qedIsTableSizeValid,
  qedQemuCannotOpenTableSize,
  type QEDHeader,
} from './header.js';

/** QEMU 7.2's option names and help texts (`qemu-img create -f qed -o help`). */
export const qedCreateOptions: readonly CreateOptionSpec[] = [
  { name: 'size', key: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'backing_file', key: 'backingFile', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', key: 'backingFmt', type: 'string', help: 'Image format of the base image' },
  {
    name: 'cluster_size',
    key: 'clusterSize',
    type: 'size',
    help: 'Cluster size (in bytes)',
    default: QED_DEFAULT_CLUSTER_SIZE,
  },
  { name: 'table_size', key: 'tableSize', type: 'size', help: 'L1/L2 table size (in clusters)' },
];

export interface QEDCreateParams {
  imageSize: number;
  clusterSize: number;
  tableSize: number;
  backingFile: string;
  backingFmt: string;
}

function optNumber(options: CreateOptions, key: string, name: string, def: number): number {
  const v = options[key] ?? options[name];
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new BlockError('EINVAL', `Parameter '${name}' expects a size`, { op: 'create' });
  }
  return v;
}

function optString(options: CreateOptions, key: string, name: string): string {
  const v = options[key] ?? options[name];
  if (v === undefined) return '';
  if (typeof v !== 'string') throw new BlockError('EINVAL', `Parameter '${name}' expects a string`, { op: 'create' });
  return v;
}

/** Read and validate the create options in QEMU's order; nothing is written on failure. */
export function qedCreateParams(options: CreateOptions): QEDCreateParams {
  const size = optNumber(options, 'size', 'size', 0);
  const clusterSize = optNumber(options, 'clusterSize', 'cluster_size', QED_DEFAULT_CLUSTER_SIZE);
  const tableSize = optNumber(options, 'tableSize', 'table_size', QED_DEFAULT_TABLE_SIZE);
  const backingFile = optString(options, 'backingFile', 'backing_file');
  const backingFmt = optString(options, 'backingFmt', 'backing_fmt');
  // The legacy option path rounds the size up to whole sectors.
  const imageSize = Math.ceil(size / 512) * 512;

  const fail = (message: string): never => {
    throw new BlockError('EINVAL', message, { op: 'create' });
  };
  if (!qedIsClusterSizeValid(clusterSize)) fail(QED_CLUSTER_SIZE_MESSAGE);
  if (!qedIsTableSizeValid(tableSize)) fail(QED_TABLE_SIZE_MESSAGE);
  if (!Number.isSafeInteger(imageSize) || !qedIsImageSizeValid(imageSize, clusterSize, tableSize)) {
    fail(qedImageSizeMessage(clusterSize, tableSize));
  }
  const nameLength = new TextEncoder().encode(backingFile).length;
  // qed-format.md §17.6: a name that does not fit in the header cluster would be overwritten by the L1 table
  // (QEMU creates such an image anyway, and can never open it).
  const room = Math.min(clusterSize - QED_HEADER_STRUCT_SIZE, QED_MAX_BACKING_NAME - 1);
  if (nameLength > room) {
    fail(
      `Backing file name is too long: ${nameLength} bytes do not fit in the QED header ` +
        `(at most ${room} bytes with ${clusterSize}-byte clusters)`,
    );
  }
  return { imageSize, clusterSize, tableSize, backingFile, backingFmt };
}

/** Warnings a tool should print for these options (QEMU 7.2 cannot open table_size=1 images). */
export function qedCreateWarnings(options: CreateOptions): string[] {
  const tableSize = optNumber(options, 'tableSize', 'table_size', QED_DEFAULT_TABLE_SIZE);
  return qedQemuCannotOpenTableSize(tableSize)
    ? ['QED images with table_size=1 cannot be opened by QEMU (up to at least 7.2); they are valid per the QED spec']
    : [];
}

/** The header and backing-name bytes a new image starts with. */
export function qedNewHeader(p: QEDCreateParams): { header: QEDHeader; name: Uint8Array } {
  const name = new TextEncoder().encode(p.backingFile);
  let features = 0n;
  if (p.backingFile !== '') {
    features |= QED_F_BACKING_FILE;
    if (p.backingFmt === 'raw') features |= QED_F_BACKING_FORMAT_NO_PROBE;
  }
  const header: QEDHeader = {
    magic: QED_MAGIC,
    clusterSize: p.clusterSize,
    tableSize: p.tableSize,
    headerSize: 1,
    features,
    compatFeatures: 0n,
    autoclearFeatures: 0n,
    l1TableOffset: p.clusterSize,
    imageSize: p.imageSize,
    backingFilenameOffset: p.backingFile === '' ? 0 : QED_HEADER_STRUCT_SIZE,
    backingFilenameSize: p.backingFile === '' ? 0 : name.length,
  };
  return { header, name };
}

/** The create hook. */
export async function qedCreate(filename: string, options: CreateOptions, ctx: CreateContext): Promise<void> {
  const params = qedCreateParams(options);
  const { header, name } = qedNewHeader(params);
  // The protocol's options (preallocation...) reach the file as in QEMU, whose QED create makes
  // the file at the image size with them, then empties it: the result is an empty file either
  // way, so it is created at 0 here; a refused mode (metadata) still fails as QEMU's does.
  const file = await ctx.createFile(filename, { ...options, size: 0 });
  try {
    // Allocation is derived from the file length, so the file must start empty.
    if ((await file.getLength()) !== 0) await file.truncate(0);
    await file.pwrite(0, encodeHeader(header));
    if (name.length > 0) await file.pwrite(QED_HEADER_STRUCT_SIZE, name);
    await file.pwrite(header.l1TableOffset, new Uint8Array(params.clusterSize * params.tableSize));
    await file.flush();
  } finally {
    await file.close();
  }
}
