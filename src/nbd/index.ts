/** The NBD server: protocol codecs, exports and the NbdServer library API. */
export * from './protocol.js';
export { NbdExport, type NbdExportOptions, type MetaContext, type BlockSizes } from './export.js';
export { NbdServer, type NbdServerOptions, type NbdServerEvents, type NbdClientInfo, type NbdListenAddress } from './server.js';
export type { NbdTlsOptions } from './handshake.js';
