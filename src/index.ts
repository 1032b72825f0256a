/**
 * Public entry of blocklayer: the generic block layer plus a default registry holding every
 * built-in driver. Registration lives here (not in src/block) so that the core never imports
 * the drivers and no import cycle can form.
 */
import { BlockDriverRegistry, setDefaultRegistry } from './block/registry.js';
import { blkdebugDriver } from './drivers/blkdebug/index.js';
import { blkverifyDriver } from './drivers/blkverify/index.js';
import { fileDriver } from './drivers/file/index.js';
import { memDriver } from './drivers/mem/index.js';
import { nbdDriver } from './drivers/nbd/index.js';
import { powerlossDriver } from './drivers/powerloss/index.js';
import { qcow2Driver } from './drivers/qcow2/index.js';
import { qedDriver } from './drivers/qed/index.js';
import { rawDriver } from './drivers/raw/index.js';

export * from './block/index.js';
export { fileDriver } from './drivers/file/index.js';
export * from './drivers/mem/index.js';
export { rawDriver } from './drivers/raw/index.js';
export { qedDriver } from './drivers/qed/index.js';
export { qcow2Driver } from './drivers/qcow2/index.js';
export { blkdebugDriver } from './drivers/blkdebug/index.js';
export { blkverifyDriver } from './drivers/blkverify/index.js';
export { powerlossDriver } from './drivers/powerloss/index.js';
// The NBD client needs node:net; a browser entry leaves this driver out.
export * from './drivers/nbd/index.js';

/**
 * The registry `BlockDriverState.open` and `bdrvCreate` use when none is passed. Order matters
 * for probing only on ties (the later registration wins): raw's weak claim (1) loses to any
 * magic match.
 */
export const defaultRegistry = new BlockDriverRegistry();
for (const drv of [fileDriver, memDriver, nbdDriver, powerlossDriver, blkdebugDriver, blkverifyDriver, rawDriver, qedDriver, qcow2Driver]) {
  defaultRegistry.register(drv);
}

setDefaultRegistry(defaultRegistry);

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
