/**
 * What both package entries share: the generic block layer and every driver that needs no Node
 * API. src/index.ts (Node) adds the host-file driver and Node's http transport; src/browser.ts
 * uses this as it is. Nothing here, nor anything it imports, may import a `node:` module (a
 * test bundles the browser entry and checks).
 */
import type { BlockDriver } from './block/driver.js';
import { blkdebugDriver } from './drivers/blkdebug/index.js';
import { blkverifyDriver } from './drivers/blkverify/index.js';
import { httpDriver, httpsDriver } from './drivers/http/index.js';
import { memDriver } from './drivers/mem/index.js';
import { powerlossDriver } from './drivers/powerloss/index.js';
import { qcow2Driver } from './drivers/qcow2/index.js';
import { qedDriver } from './drivers/qed/index.js';
import { rawDriver } from './drivers/raw/index.js';

export * from './block/index.js';
export * from './drivers/mem/index.js';
export { rawDriver } from './drivers/raw/index.js';
export { qedDriver } from './drivers/qed/index.js';
export { qcow2Driver } from './drivers/qcow2/index.js';
export { blkdebugDriver } from './drivers/blkdebug/index.js';
export { blkverifyDriver } from './drivers/blkverify/index.js';
export * from './drivers/powerloss/index.js';
export * from './drivers/http/index.js';

/**
 * The drivers that run anywhere, in registration order. Order matters for probing only on ties
 * (the later registration wins): raw's weak claim (1) loses to any magic match.
 */
export const portableDrivers: readonly BlockDriver[] = [
  memDriver,
  powerlossDriver,
  blkdebugDriver,
  blkverifyDriver,
  rawDriver,
  qedDriver,
  qcow2Driver,
  httpDriver,
  httpsDriver,
];
