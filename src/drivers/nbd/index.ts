export { nbdDriver } from './nbd.js';
export { nbdCanonicalName, nbdConfig, type NbdConfig, type NbdServerAddress } from './config.js';
export { addTlsCreds, findTlsCreds, removeTlsCreds, type TlsCredsObject } from './tls.js';
