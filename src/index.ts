/**
 * Public entry of blocklayer: the generic block layer plus a default registry holding every
 * built-in driver. Registration lives here (not in src/block) so that the core never imports
 * the drivers and no import cycle can form.
 */
import { BlockDriverRegistry, setDefaultRegistry } from './block/registry.js';
import { fileDriver } from './drivers/file/index.js';
import { memDriver } from './drivers/mem/index.js';
import { rawDriver } from './drivers/raw/index.js';
import { qedDriver } from './drivers/qed/index.js';
import { blkdebugDriver } from './drivers/blkdebug/index.js';
import { blkverifyDriver } from './drivers/blkverify/index.js';
import { powerlossDriver } from './drivers/powerloss/index.js';

export * from './block/index.js';
export { fileDriver } from './drivers/file/index.js';
export * from './drivers/mem/index.js';
export { rawDriver } from './drivers/raw/index.js';

/**
 * The registry `BlockDriverState.open` and `bdrvCreate` use when none is passed. Order matters
 * for probing only on ties (the later registration wins).
 */
export const defaultRegistry = new BlockDriverRegistry();
defaultRegistry.register(fileDriver);
defaultRegistry.register(memDriver);
defaultRegistry.register(rawDriver);
defaultRegistry.register(qedDriver);
defaultRegistry.register(blkdebugDriver);
defaultRegistry.register(blkverifyDriver);
defaultRegistry.register(powerlossDriver);

setDefaultRegistry(defaultRegistry);
