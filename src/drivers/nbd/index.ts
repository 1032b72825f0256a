// The NBD client driver and what tools build on it: names and options, export listing, TLS
// credentials and authz-simple objects.
export { nbdDriver } from './nbd.js';
export { nbdCanonicalName, nbdConfig, nbdParseFilename, type NbdConfig, type NbdServerAddress } from './config.js';
export { nbdListExports, type NbdListedExport } from './list.js';
export type { NbdExportInfo } from './handshake.js';
export { serverTlsOptions } from './tls.js';
export {
  authzSimpleType,
  findAuthz,
  findTlsCreds,
  tlsCredsPskType,
  tlsCredsX509Type,
  type AuthzSimpleObject,
  type TlsCredsObject,
} from './tls-objects.js';
