export { opfsDriver, opfsRemove, opfsSetPort, opfsStripPrefix } from './opfs.js';
export type { OpfsPort, OpfsReply, OpfsRequest } from './protocol.js';
