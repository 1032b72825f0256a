export { fileDriver, fileStripPrefix } from './file.js';
export { ioEngineName } from './engine.js';
export type { EngineKind } from './engine.js';
export { addonPath } from './seek.js';
export { qemuMemalign } from './memalign.js';
