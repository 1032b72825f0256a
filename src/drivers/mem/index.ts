export { memDriver } from './mem.js';
export {
  MEM_CHUNK_SIZE,
  MemStore,
  type MemStoreSnapshot,
  memStoreCreate,
  memStoreDelete,
  memStoreExists,
  memStoreGet,
  memStoreNames,
  memStoreRead,
  memStoreRestore,
  memStoreSnapshot,
  memStoreWrite,
  memStripPrefix,
} from './store.js';
