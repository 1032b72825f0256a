/**
 * The NBD wire protocol (fixed newstyle handshake, simple and structured replies): constants
 * and pure codecs for both directions, shared by the server (src/nbd) and the client driver.
 * Nothing here touches a socket. All integers on the wire are big-endian; 64-bit fields
 * (cookies, offsets) are bigint so that a hostile 2^64-1 is seen as what it is. Decoders take
 * exactly the bytes of one header or payload and throw a BlockError('EINVAL') with QEMU's
 * wording when the bytes do not add up.
 *
 * This module is the one import for users of the protocol; the parts live in constants.ts
 * (numbers and names), errno.ts (errno values and BlockError mapping), option-codec.ts
 * (handshake) and request-codec.ts (transmission).
 */
export * from './constants.js';
export * from './errno.js';
export { encodeString, decodeString } from './bytes.js';
export * from './option-codec.js';
export * from './request-codec.js';
