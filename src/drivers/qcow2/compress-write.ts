/**
 * The compressed-write entry point the generic layer calls (qcow2_co_pwritev_compressed_part):
 * splits a request into clusters for qcow2CoPwritevCompressed, and turns the empty request
 * that ends a `convert -c` into padding the file to a whole sector.
 */
import { BlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import { qcow2HasDataFile } from './data-file.js';
import { qcow2CoPwritevCompressed } from './io.js';
import { type BDRVQcow2State, qcow2File } from './state.js';

const SECTOR = 512;

export async function qcow2CoPwritevCompressedPart(s: BDRVQcow2State, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  // Compressed clusters live in the qcow2 file, where an image with a data file keeps no data.
  if (qcow2HasDataFile(s)) throw new BlockError('ENOTSUP', undefined, { op: 'write_compressed', offset });
  if (bytes === 0) {
    // Compressed data is packed at byte granularity, so the file may end mid-sector; tools
    // that read the file in sectors want it whole (QEMU pads the same way on this signal).
    const file = qcow2File(s);
    const len = await file.getLength();
    const padded = Math.ceil(len / SECTOR) * SECTOR;
    if (padded !== len) await file.truncate(padded, 'off');
    return;
  }
  const cs = s.clusterSize;
  // Validate the whole request before the first cluster is written.
  if (offset % cs !== 0 || (bytes % cs !== 0 && offset + bytes !== s.header.size)) {
    throw new BlockError('EINVAL', undefined, { op: 'write_compressed', offset });
  }
  for (let done = 0; done < bytes; done += cs) {
    const n = Math.min(cs, bytes - done);
    await qcow2CoPwritevCompressed(s, offset + done, n, qiov.slice(done, n));
  }
}
