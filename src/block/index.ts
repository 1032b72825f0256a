export * from './errors.js';
export * from './iovec.js';
export { bufferIsZero, sectorRun } from './buffer-is-zero.js';
export * from './clock.js';
export { AioTaskPool } from './aio-task.js';
export * from './coroutine.js';
export * from './events.js';
export * from './aio.js';
export * from './driver.js';
export * from './registry.js';
export * from './node.js';
export * from './backend.js';
export * from './create.js';
export * from './debug.js';
export { combineBackingPath, protocolPrefix, canonicalImageName } from './path.js';
export * as blockPath from './path.js';
export * from './options.js';
export * from './qdict.js';
export { parseQemuJson, formatQemuJson, quoteJsonString, type QValue } from './qjson.js';
export * from './objects.js';
export { bdrvOpenOptions } from './open-options.js';
export { storageGetInfo } from './info.js';
export { bdrvAmendOptions } from './amend.js';
export {
  bdrvSnapshotCreate,
  bdrvSnapshotDelete,
  bdrvSnapshotFind,
  bdrvSnapshotGoto,
  bdrvSnapshotList,
  bdrvSnapshotLoadTmp,
  bdrvSnapshotLoadTmpByIdOrName,
  bdrvVmstate,
} from './snapshot.js';
export { parseOptionSize, qemuStrtosz, type StrtoszResult } from './strtosz.js';
export * from './dirty-bitmap.js';
export * from './status-extents.js';
