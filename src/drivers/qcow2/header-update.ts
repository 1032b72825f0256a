/**
 * The full header rewrite (QEMU's qcow2_update_header): header, extensions in QEMU's order,
 * backing name and zeros, rebuilt from memory into the whole first cluster.
 *
 * A disk writes one 512-byte sector atomically, not a cluster: a power cut in the middle of a
 * multi-sector write can leave some sectors old and some new. QEMU writes the cluster in one
 * go, so an update that moves the extensions or the backing name (a compat upgrade, a new
 * backing file, a bitmaps extension) can leave sector 0 pointing at a name or an extension
 * that is not on the disk yet, and the image no longer opens. Here every state the disk can
 * be in after a cut is a header that opens: the old one, the new one, or a short stepping
 * stone that means the same as the new one. The bytes that end on the disk are QEMU's.
 */
import { decodeExtensions, decodeHeader, encodeHeaderCluster, QCOW_MAGIC, type HeaderClusterContents } from './header.js';
import { qcow2File, type BDRVQcow2State } from './state.js';

/** The unit a disk writes atomically; what a torn write is made of. */
const SECTOR = 512;

/** How far into the first cluster a reader of this header reads (header, extensions, name). */
function headerReadEnd(cluster0: Uint8Array): number {
  if (cluster0.length < 72) return cluster0.length;
  const h = decodeHeader(cluster0);
  if (h.magic !== QCOW_MAGIC) return 0;
  let end: number;
  try {
    end = decodeExtensions(h, cluster0).end;
  } catch {
    // A header that does not parse: assume it is read to the end (the safest order).
    return cluster0.length;
  }
  if (h.backingFileOffset !== 0) end = Math.max(end, h.backingFileOffset + h.backingFileSize);
  return end;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Rewrite the whole first cluster from memory. Nothing is written when the contents do not
 * fit (ENOSPC from the encoder); s.header changes only once the new header is durable.
 */
export async function qcow2UpdateHeader(s: BDRVQcow2State): Promise<void> {
  const contents: HeaderClusterContents = {
    header: {
      ...s.header,
      l1Size: s.l1Table.length,
      l1TableOffset: s.l1TableOffset,
      refcountTableOffset: s.refcountTableOffset,
      refcountTableClusters: (s.refcountTable.length * 8) / s.clusterSize,
    },
    unknownHeaderFields: s.unknownHeaderFields,
    backingFile: s.backingFile,
    backingFormat: s.backingFormat,
    dataFile: s.imageDataFile,
    crypto: null,
    // Written while the image has bitmaps, even with the autoclear bit dropped around a
    // directory update: a crash then leaves bitmaps every reader ignores (QEMU's nb_bitmaps).
    bitmaps: s.bitmapsExtension,
    unknownExtensions: s.unknownExtensions,
  };
  const { buf, header } = encodeHeaderCluster(contents);
  const file = qcow2File(s);
  let old = s.headerCluster;
  if (old === null || old.length !== buf.length) {
    old = new Uint8Array(buf.length);
    await file.pread(0, old.subarray(0, Math.min(old.length, await file.getLength())));
  }
  s.headerCluster = null;
  const oldEnd = headerReadEnd(old);
  const newEnd = headerReadEnd(buf);
  const span = Math.min(buf.length, Math.max(oldEnd, newEnd));
  const head = buf.subarray(0, Math.min(SECTOR, buf.length));
  const tail = buf.subarray(head.length);
  if (span <= SECTOR || equalBytes(old.subarray(SECTOR, span), buf.subarray(SECTOR, span))) {
    // Whatever mix of sectors a cut leaves, the old reader and the new one find what they read
    // past sector 0 unchanged: one write.
    await file.pwrite(0, buf);
  } else if (oldEnd <= SECTOR) {
    // The old header reads sector 0 only: the new tail goes down first, unseen by it, and is
    // durable before the new sector 0 points into it.
    await file.pwrite(SECTOR, tail);
    await file.flush();
    await file.pwrite(0, head);
  } else if (newEnd <= SECTOR) {
    // The new header reads sector 0 only: it goes first (atomic), then the old tail it no
    // longer reads is cleared, so that the file ends as QEMU's.
    await file.pwrite(0, head);
    await file.flush();
    await file.pwrite(SECTOR, tail);
  } else {
    // Both read past sector 0. A stepping stone that fits in sector 0 (the same header
    // without its feature name table, which only names bits for humans) replaces the old
    // header atomically; then the new tail, then the new sector 0, each durable before the
    // next so that a cut leaves one of the three.
    const { buf: stone } = encodeHeaderCluster({ ...contents, omitFeatureTable: true });
    if (headerReadEnd(stone) <= SECTOR) {
      await file.pwrite(0, stone.subarray(0, SECTOR));
      await file.flush();
      await file.pwrite(SECTOR, tail);
      await file.flush();
      await file.pwrite(0, head);
    } else {
      // Names too long for sector 0: no order helps; one write, as QEMU's.
      await file.pwrite(0, buf);
    }
  }
  await file.flush();
  s.headerCluster = buf;
  s.header = header;
}
