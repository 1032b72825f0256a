/**
 * POSIX path helpers for image and backing file names. The core runs in browsers too, so this
 * cannot use `node:path`; names are always '/'-separated, as in QEMU's path_combine.
 */

export function isAbsolute(p: string): boolean {
  return p.startsWith('/');
}

/** Collapse '.', '..' and repeated slashes; '' becomes '.'. */
export function normalize(p: string): string {
  if (p === '') return '.';
  const abs = isAbsolute(p);
  const out: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length > 0 && out[out.length - 1] !== '..') out.pop();
      // '..' above the root stays at the root; above a relative start it is kept.
      else if (!abs) out.push('..');
      continue;
    }
    out.push(part);
  }
  const body = out.join('/');
  if (abs) return `/${body}`;
  return body === '' ? '.' : body;
}

/** Directory part: dirname('a/b') = 'a', dirname('b') = '.', dirname('/b') = '/'. */
export function dirname(p: string): string {
  const trimmed = p.length > 1 ? p.replace(/\/+$/, '') : p;
  const i = trimmed.lastIndexOf('/');
  if (i < 0) return '.';
  if (i === 0) return '/';
  return trimmed.slice(0, i);
}

export function basename(p: string): string {
  const trimmed = p.length > 1 ? p.replace(/\/+$/, '') : p;
  return trimmed.slice(trimmed.lastIndexOf('/') + 1);
}

/** Join and normalize; an absolute later part does NOT restart (use resolve for that). */
export function join(...parts: string[]): string {
  return normalize(parts.filter((s) => s !== '').join('/'));
}

/** Like join, but an absolute part discards everything before it. */
export function resolve(...parts: string[]): string {
  let acc = '';
  for (const part of parts) {
    if (part === '') continue;
    acc = isAbsolute(part) || acc === '' ? part : `${acc}/${part}`;
  }
  return normalize(acc);
}

/**
 * The protocol prefix of a filename ('mem' for 'mem:disk0', 'blkdebug' for 'blkdebug:c:f'), or
 * null. As QEMU's path_has_protocol: a colon that comes before any slash.
 */
export function protocolPrefix(filename: string): string | null {
  const colon = filename.indexOf(':');
  if (colon <= 0) return null;
  const slash = filename.indexOf('/');
  if (slash >= 0 && slash < colon) return null;
  return filename.slice(0, colon);
}

/**
 * Resolve a backing file name recorded in an image against the image's own name (QEMU's
 * path_combine): absolute names and names with a protocol prefix are taken as they are; a
 * relative name is relative to the image's directory, inside the image's protocol namespace
 * ('mem:dir/a.qed' + 'b.raw' -> 'mem:dir/b.raw').
 */
export function combineBackingPath(imageFilename: string, backingFile: string): string {
  if (backingFile === '' || isAbsolute(backingFile) || protocolPrefix(backingFile) !== null) {
    return backingFile;
  }
  const proto = protocolPrefix(imageFilename);
  const rest = proto === null ? imageFilename : imageFilename.slice(proto.length + 1);
  // A URL (http://host/dir/a.qed) keeps its authority: the name replaces the last path
  // component as it is, as path_combine does; the server resolves any '..'.
  if (proto !== null && rest.startsWith('//')) {
    const slash = imageFilename.lastIndexOf('/');
    return slash > proto.length + 2 ? imageFilename.slice(0, slash + 1) + backingFile : `${imageFilename}/${backingFile}`;
  }
  const dir = dirname(rest);
  let joined = dir === '.' ? normalize(backingFile) : resolve(dir, backingFile);
  // A host path keeps the image's leading './' (QEMU's path_combine keeps the directory as
  // written), and gets one when the result would otherwise read as a protocol prefix
  // ('./a:b/top.qed' + 'base.qed' is './a:b/base.qed', not protocol 'a').
  if (proto === null && !isAbsolute(joined) && !joined.startsWith('../')) {
    if (rest.startsWith('./') || protocolPrefix(joined) !== null) joined = `./${joined}`;
  }
  return proto === null ? joined : `${proto}:${joined}`;
}

/** A canonical spelling used to compare names along a backing chain (cycle detection). */
export function canonicalImageName(filename: string): string {
  const proto = protocolPrefix(filename);
  if (proto === null) return normalize(filename);
  // Only the plain stores (mem) have a path-like tail; filter configs are kept verbatim.
  if (proto === 'mem') return `mem:${normalize(filename.slice(4))}`;
  return filename;
}
