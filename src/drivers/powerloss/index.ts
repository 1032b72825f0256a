export { powerlossDriver } from './powerloss.js';
export {
  POWERLOSS_SECTOR,
  PowerLossStore,
  powerlossStoreCreate,
  powerlossStoreDelete,
  powerlossStoreGet,
  powerlossStripPrefix,
  type CrashReport,
  type RandomInt,
  type VolatileOp,
} from './store.js';
