// Backing chains as qemu-img names them: finding a file in an open chain, and QEMU's
// path_combine for the backing file names info prints.
import { toolHost } from '../shared/host.js';
import { protocolPrefix, type BlockDriverState } from '../../index.js';

/**
 * bdrv_find_backing_image: the node of bs's chain (below bs) whose file is `name`. An open chain
 * never holds one file twice (opening such a chain fails with ELOOP), so the first match is the
 * only one.
 */
export function findBackingImage(bs: BlockDriverState, name: string): BlockDriverState | null {
  const host = toolHost();
  const want = host.resolvePath(name);
  for (let b = bs.backing; b; b = b.backing) {
    if (host.resolvePath(b.filename) === want) return b;
  }
  return null;
}


/**
 * QEMU's path_combine, which info prints verbatim: a relative backing name is appended to the
 * image name's directory prefix (up to and including its last '/'), without normalising.
 */
export function qemuPathCombine(base: string, filename: string): string {
  // bdrv_get_full_backing_filename_from_filename: a name with a protocol is taken as it is.
  if (filename.startsWith('/') || protocolPrefix(filename) !== null) return filename;
  const colon = base.indexOf(':');
  const slash = base.indexOf('/');
  let p = colon > 0 && (slash < 0 || colon < slash) ? colon + 1 : 0;
  const last = base.lastIndexOf('/');
  if (last + 1 > p) p = last + 1;
  return base.slice(0, p) + filename;
}
