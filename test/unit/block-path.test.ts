import { describe, expect, it } from 'vitest';
import {
  basename,
  canonicalImageName,
  combineBackingPath,
  dirname,
  isAbsolute,
  join,
  normalize,
  protocolPrefix,
  resolve,
} from '../../src/block/path.js';

describe('block/path', () => {
  it('normalize, dirname, basename, join, resolve behave like POSIX', () => {
    expect(normalize('a//b/./c/../d')).toBe('a/b/d');
    expect(normalize('/../x')).toBe('/x');
    expect(normalize('../x/..')).toBe('..');
    expect(normalize('')).toBe('.');
    expect(normalize('/')).toBe('/');
    expect(dirname('a/b')).toBe('a');
    expect(dirname('b')).toBe('.');
    expect(dirname('/b')).toBe('/');
    expect(dirname('/a/b/')).toBe('/a');
    expect(basename('/a/b.qed')).toBe('b.qed');
    expect(join('a', '', 'b', '../c')).toBe('a/c');
    expect(resolve('/a', 'b', '/c', 'd')).toBe('/c/d');
    expect(isAbsolute('/x')).toBe(true);
    expect(isAbsolute('x')).toBe(false);
  });

  it('finds protocol prefixes only before the first slash', () => {
    expect(protocolPrefix('mem:disk')).toBe('mem');
    expect(protocolPrefix('blkdebug:cfg:/img')).toBe('blkdebug');
    expect(protocolPrefix('/tmp/a:b')).toBeNull();
    expect(protocolPrefix('dir/a:b')).toBeNull();
    expect(protocolPrefix(':x')).toBeNull();
    expect(protocolPrefix('plain')).toBeNull();
  });

  it('combines backing names as QEMU does', () => {
    expect(combineBackingPath('/img/a.qed', 'b.raw')).toBe('/img/b.raw');
    expect(combineBackingPath('/img/sub/a.qed', '../b.raw')).toBe('/img/b.raw');
    expect(combineBackingPath('a.qed', 'b.raw')).toBe('b.raw');
    expect(combineBackingPath('rel/a.qed', 'b.raw')).toBe('rel/b.raw');
    // URLs keep their host; the name replaces the last component verbatim.
    expect(combineBackingPath('http://h:8080/d/a.qed', 'b.qed')).toBe('http://h:8080/d/b.qed');
    expect(combineBackingPath('https://h/d/a.qed', '../b.qed')).toBe('https://h/d/../b.qed');
    expect(combineBackingPath('http://h/d/a.qed', '/srv/b.qed')).toBe('/srv/b.qed');
    expect(combineBackingPath('/img/a.qed', '/abs/b.raw')).toBe('/abs/b.raw');
    expect(combineBackingPath('/img/a.qed', 'mem:b')).toBe('mem:b');
    expect(combineBackingPath('mem:dir/a.qed', 'b.raw')).toBe('mem:dir/b.raw');
    expect(combineBackingPath('mem:a.qed', 'b.raw')).toBe('mem:b.raw');
    expect(combineBackingPath('mem:dir/a.qed', '/abs')).toBe('/abs');
    // A colon name stays a plain path, and './' is kept as QEMU's path_combine keeps it.
    expect(combineBackingPath('./a:b.qed', 'base.qed')).toBe('./base.qed');
    expect(combineBackingPath('./a:b/top.qed', 'base.qed')).toBe('./a:b/base.qed');
    expect(combineBackingPath('d/x:top.qed', 'base.qed')).toBe('d/base.qed');
  });

  it('canonical names compare equal for equal images', () => {
    expect(canonicalImageName('/a/./b/../c.qed')).toBe('/a/c.qed');
    expect(canonicalImageName('mem:d//x/./y')).toBe('mem:d/x/y');
    expect(canonicalImageName('blkdebug:c:/x/../y')).toBe('blkdebug:c:/x/../y');
  });
});
