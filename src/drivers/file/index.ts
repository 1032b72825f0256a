export { fileDriver, fileStripPrefix } from './file.js';
