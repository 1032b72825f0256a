// The NBD client driver and what tools build on it: names and options, export listing, TLS
// credentials objects.
export { nbdDriver } from './nbd.js';
export { nbdCanonicalName, nbdConfig, nbdParseFilename, type NbdConfig, type NbdServerAddress } from './config.js';
export { nbdListExports, type NbdListedExport } from './list.js';
export type { NbdExportInfo } from './handshake.js';
export { addTlsCreds, findTlsCreds, removeTlsCreds, serverTlsOptions, type TlsCredsObject } from './tls.js';
