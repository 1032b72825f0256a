/**
 * Public entry of blocklayer for browsers (`import 'blocklayer'` under the `browser` export
 * condition, or `blocklayer/browser`): the generic block layer and every driver that needs no
 * Node API (mem, raw, qed, qcow2, blkdebug, blkverify, powerloss, http/https over fetch),
 * registered in a default registry, plus `opfs:` (the Origin Private File System). qcow2's
 * compressed clusters use its default codec: pako and fzstd, and for zstd writes libzstd in
 * WebAssembly, bundled and loaded on the first one. No host-file driver: a page stores images
 * in `mem:` or `opfs:` and reads remote ones over `https://`.
 *
 * Use:
 *   import { BlockBackend, defaultRegistry } from 'blocklayer';     // bundler, browser target
 *   defaultRegistry.register(myStorageDriver);                       // optional: more drivers
 *   const blk = await BlockBackend.open('https://example.org/disk.qcow2', { readOnly: true });
 *
 * Remote images need a server that answers HEAD with Content-Length and `Accept-Ranges: bytes`
 * and, cross-origin, CORS headers exposing Content-Length, Accept-Ranges and Content-Range
 * (the browser drops the Cookie header: use the page's own cookies).
 * setHttpTransport replaces fetch with any other HttpTransport. Nothing this file imports may
 * import a `node:` module: test/unit/browser-bundle.test.ts bundles it and checks.
 */
import { BlockDriverRegistry, setDefaultRegistry } from './block/registry.js';
import { opfsDriver } from './drivers/opfs/index.js';
import { portableDrivers } from './portable.js';

export * from './portable.js';
export * from './drivers/opfs/index.js';

/** The registry `BlockDriverState.open` and `bdrvCreate` use when none is passed. */
export const defaultRegistry = new BlockDriverRegistry();
for (const drv of portableDrivers) {
  defaultRegistry.register(drv);
}
// Browsers only: the Origin Private File System, through a worker the page hands over
// (opfsSetPort).
defaultRegistry.register(opfsDriver);

setDefaultRegistry(defaultRegistry);

/**
 * qemu_memalign's browser twin: `size` zeroed bytes. Alignment in memory only speeds up a host
 * kernel's page-cache copies (drivers/file/memalign.ts), which a page never asks for; convert's
 * chunk buffers come from here when the tools run in the teaching page.
 */
export function qemuMemalign(size: number): Uint8Array {
  return new Uint8Array(size);
}
