/**
 * Holes in host files: lseek(SEEK_DATA / SEEK_HOLE) and fallocate (zero ranges, punched holes)
 * through the small native addon in native/ (binding.gyp). Node's fs has neither lseek nor
 * fallocate.
 * The addon is found the node-gyp-build way: a developer's build/Release first (node-gyp, run
 * by `npm ci`), then the binary shipped in the package under prebuilds/<platform>-<arch>/, so
 * an installed package needs neither a compiler nor its install script.
 * The addon is optional: when none loads (another platform, no compiler, another libc) the file
 * driver reports every byte as data and zeroes by writing zeros, which is always correct, only
 * slower and without holes.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ZlibClusterEngine } from '../qcow2/compress-engine.js';

export interface SeekAddon {
  /** First data byte at or after `offset`; -1 when none (trailing hole, or at/after EOF). */
  seekData(fd: number, offset: number): number;
  /** First hole byte at or after `offset` (EOF counts as one); -1 when offset is at/after EOF. */
  seekHole(fd: number, offset: number): number;
  /*
   * fallocate, on the thread pool; reject with a Node-style system error (`code` the errno
   * name, EOPNOTSUPP as 'ENOTSUP'). Optional: an addon built before they existed lacks them,
   * and the driver then treats them as unsupported.
   */
  /** FALLOC_FL_ZERO_RANGE: the range reads as zeros; grows the file when it ends past EOF. */
  zeroRange?: (fd: number, offset: number, length: number) => Promise<void>;
  /** FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: deallocate, reads as zeros, length unchanged. */
  punchHole?: (fd: number, offset: number, length: number) => Promise<void>;
  /** fallocate mode 0: allocate the range; grows the file when it ends past EOF. */
  allocateRange?: (fd: number, offset: number, length: number) => Promise<void>;
  /**
   * preadv2(RWF_NOWAIT) on this thread: up to `size` bytes at `offset` into `buffers`, only
   * what the page cache holds. Bytes read (short when partly cached, 0 at end of file), -1 when
   * nothing could be read without waiting or the read failed, -2 when the host has no
   * RWF_NOWAIT reads. Optional, like the fallocate calls.
   */
  preadNowait?: (fd: number, buffers: readonly Uint8Array[], offset: number, size: number) => number;
  /**
   * A reply (`head`, then `size` bytes of `fd` at `offset`) sent into the socket `sock` with
   * sendfile(2) when every page is cached (native/sendfile.c): -2 when the host cannot, else
   * as BlockDriver.sendfileNow. Optional, like the rest.
   */
  sendFileNow?: (sock: number, head: Uint8Array, fd: number, offset: number, size: number, spill: Uint8Array, sndbuf: number) => number;
  /*
   * qcow2's zlib clusters with the system zlib on the thread pool (native/zlib.c, see
   * ZlibClusterEngine). Optional, like the rest.
   */
  deflateCluster?: (src: Uint8Array, dst: Uint8Array) => Promise<number>;
  inflateCluster?: (src: Uint8Array, dst: Uint8Array) => Promise<number>;
  inflateClusters?: (src: Uint8Array, dst: Uint8Array, bounds: Uint32Array) => Promise<number>;
  /**
   * Where `buf` starts past the last `align`-byte boundary in memory (memalign.ts). Optional,
   * like the rest.
   */
  memOffset?: (buf: Uint8Array, align: number) => number;
  /*
   * The I/O engine (native/engine.c; engine.ts drives it). Optional, like the rest.
   */
  /** Start (or restart) the engine: 'auto', 'io_uring' or 'threads'; the back end started. */
  engineStart?: (kind: string, onComplete: (count: number) => void, results: Float64Array, inlineWrites?: boolean) => string;
  /** Queue one request; its slot, or -1 when every slot is busy. */
  engineSubmit?: (
    op: number,
    fd: number,
    buffers: Uint8Array | readonly Uint8Array[] | null,
    offset: number,
    length: number,
    mode: number,
    writeOffset?: number,
  ) => number;
  /** A Node-shaped system error (code, errno, syscall) for a failed request. */
  engineError?: (errno: number, syscall: string) => Error;
  /** Wait for what is in flight (delivered as usual), then stop. */
  engineStop?: () => void;
  /**
   * Requests the running back end handed straight to io-wq (IOSQE_ASYNC) since it started;
   * canLink: it takes zero-writes (op 4) as one request (an older addon has no such key).
   */
  engineStats?: () => { asyncReads: number; asyncWrites: number; canLink?: boolean; writerWrites?: number; inlineWrites?: number };
}

/**
 * The package root: the nearest directory holding package.json above this module. This module
 * runs from src/drivers/file (tsx, vitest), dist/src/drivers/file (compiled, or installed under
 * node_modules/blocklayer) or dist/bin (the tools' bundle); all lead to the same root, which
 * holds build/ and prebuilds/.
 */
function packageRoot(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) return null;
    dir = up;
  }
}

/** node-gyp-build's loader (CommonJS, untyped): `path` finds the binary without loading it. */
interface NodeGypBuild {
  path(dir: string): string;
}

function isSeekAddon(m: unknown): m is SeekAddon {
  const o = m as Partial<SeekAddon> | null;
  return typeof o?.seekData === 'function' && typeof o.seekHole === 'function';
}

/** Where node-gyp (`npm ci`) puts the addon: binding.gyp's target, in build/Release. */
const RELEASE_BUILD = 'build/Release/blocklayer_seek.node';

/**
 * The addon's file, as node-gyp-build finds it. A build in build/Release (its first choice) is
 * taken by its path without loading node-gyp-build: resolving and running it cost about 3 ms
 * of CPU in every run of a tool. Prebuilds, and the variables that steer node-gyp-build, go
 * through it.
 */
function addonFile(root: string): string {
  if (!process.env.PREBUILDS_ONLY && !process.env.BLOCKLAYER_PREBUILD) {
    const built = join(root, RELEASE_BUILD);
    if (existsSync(built)) return built;
  }
  // Required at run time, not imported: the tools' bundle must not inline it, since its
  // lookup relies on CommonJS require.
  const require = process.getBuiltinModule('node:module').createRequire(import.meta.url);
  return (require('node-gyp-build') as NodeGypBuild).path(root);
}

/** The addons loaded, by file: loading one again (a test's reload) gives its exports again, as require does. */
const addonsLoaded = new Map<string, unknown>();

/**
 * Load the addon at `path` as require would (process.dlopen), without node:module: loading
 * that module, with the ES module loader it brings, cost every run of a tool about 0.4 ms.
 */
function loadAddonFile(path: string): unknown {
  if (!addonsLoaded.has(path)) {
    const m = { exports: {} as unknown };
    process.dlopen(m, path);
    addonsLoaded.set(path, m.exports);
  }
  return addonsLoaded.get(path);
}

/** The addon, or null when it is missing or unusable (never throws: holes are optional). */
export function loadSeekAddon(): SeekAddon | null {
  try {
    const root = packageRoot();
    if (root === null) return null;
    const path = addonFile(root);
    const m = loadAddonFile(path);
    if (!isSeekAddon(m)) return null;
    loadedFrom = { addon: m, path };
    return m;
  } catch {
    // Nothing built or shipped for this platform, or built for another ABI or libc, or a
    // broken build: fall back to "all data".
    return null;
  }
}

/** The last addon loaded and its file, for addonPath(). */
let loadedFrom: { addon: SeekAddon; path: string } | null = null;

/** The file the native addon in use was loaded from, or null on the pure-JS path. */
export function addonPath(): string | null {
  const a = seekAddon();
  return a !== null && a === loadedFrom?.addon ? loadedFrom.path : null;
}

/** Loaded on first use; `undefined` = not tried yet. */
let addon: SeekAddon | null | undefined;

/** The addon the file driver uses, or null (then every byte of a host file is data). */
export function seekAddon(): SeekAddon | null {
  if (addon === undefined) addon = loadSeekAddon();
  return addon;
}

/** The addon's zlib for qcow2's compressed clusters, or null (then pako does the work). */
export function addonZlibEngine(): ZlibClusterEngine | null {
  const a = seekAddon();
  return a?.deflateCluster !== undefined && a.inflateCluster !== undefined ? (a as ZlibClusterEngine) : null;
}

/**
 * Test seam: make the file driver use `a` (null simulates a missing addon; undefined reloads it
 * on next use). Returns the previous value for restoring.
 */
export function setSeekAddonForTest(a: SeekAddon | null | undefined): SeekAddon | null | undefined {
  const prev = addon;
  addon = a;
  return prev;
}
