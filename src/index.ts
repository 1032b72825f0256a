/**
 * Public entry of blocklayer for Node: the generic block layer plus a default registry holding
 * every built-in driver, the host-file and NBD drivers included, and http(s) over node:http.
 * Browsers get src/browser.ts instead (the `browser` export condition). Registration lives here
 * (not in src/block) so that the core never imports the drivers and no import cycle can form.
 */
import { BlockDriverRegistry, setDefaultRegistry } from './block/registry.js';
import { fileDriver } from './drivers/file/index.js';
import { setHttpTransport } from './drivers/http/index.js';
import { nodeHttpTransport } from './drivers/http/node-transport.js';
import { registerObjectType } from './block/objects.js';
import { authzSimpleType, nbdDriver, tlsCredsPskType, tlsCredsX509Type } from './drivers/nbd/index.js';
import { portableDrivers } from './portable.js';
import { defaultQcow2Codec, setQcow2Codec } from './drivers/qcow2/compress.js';
import { zlibEngineCodec } from './drivers/qcow2/compress-engine.js';
import { addonZlibEngine } from './drivers/file/seek.js';

export * from './portable.js';
export { addonPath, fileDriver, ioEngineName, qemuMemalign } from './drivers/file/index.js';
export type { EngineKind } from './drivers/file/index.js';
export { nodeHttpTransport, type NodeHttpTransportOptions } from './drivers/http/node-transport.js';
// The NBD client needs node:net; the browser entry leaves this driver out.
export * from './drivers/nbd/index.js';

/**
 * The registry `BlockDriverState.open` and `bdrvCreate` use when none is passed: the host-file
 * driver first (the default protocol), the NBD client, then the portable ones.
 */
export const defaultRegistry = new BlockDriverRegistry();
for (const drv of [fileDriver, nbdDriver, ...portableDrivers]) {
  defaultRegistry.register(drv);
}

setDefaultRegistry(defaultRegistry);

// qcow2's zlib clusters go through the addon's system zlib, off the main thread and several
// at once (qemu-img's bytes, as pako's are); pako where the addon is missing. The addon is
// only looked for at the first compressed cluster.
setQcow2Codec(zlibEngineCodec(addonZlibEngine, defaultQcow2Codec));

// --object types that need Node (they read credential files), known to every ObjectTable.
for (const t of [tlsCredsX509Type, tlsCredsPskType, authzSimpleType]) registerObjectType(t);

// node:https can trust an extra CA and switch certificate checks off (sslverify=off); fetch
// cannot.
setHttpTransport(nodeHttpTransport());

// The NBD server (Node only: it listens on sockets). Its wire codecs live in src/nbd/protocol.
export {
  NbdServer,
  NbdExport,
  type NbdExportOptions,
  type NbdServerOptions,
  type NbdServerEvents,
  type NbdClientInfo,
  type NbdListenAddress,
  type NbdTlsOptions,
} from './nbd/index.js';
// Transmission flags as qemu-nbd -L names them.
export { NBD_FLAG_HAS_FLAGS, nbdFlagNames } from './nbd/index.js';
