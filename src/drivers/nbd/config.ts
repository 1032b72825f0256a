/**
 * Where an `nbd` node connects and what it asks for, from a filename (`nbd://host:port/exp`,
 * `nbd+unix:///exp?socket=PATH`, legacy `nbd:host:port:exportname=exp`, `nbd:unix:PATH`) and/or
 * the driver's option keys (QEMU's BlockdevOptionsNbd: server.*, legacy host/port/path, export,
 * tls-creds, tls-hostname, x-dirty-bitmap, reconnect-delay, open-timeout). Pure: no I/O.
 */
import { BlockError } from '../../block/errors.js';
import { parseOptBool, type RuntimeOptionSpec } from '../../block/options.js';
import type { FlatQDict } from '../../block/qdict.js';

/** IANA port of NBD. */
export const NBD_DEFAULT_PORT = 10809;

/** Where to connect; the optional fields are SocketAddress's (`ipv4=on` picks the family...). */
export type NbdServerAddress =
  | { type: 'inet'; host: string; port: string; family?: 4 | 6; keepAlive?: boolean; noUri?: boolean }
  | { type: 'unix'; path: string; abstract?: boolean };

export interface NbdConfig {
  server: NbdServerAddress;
  /** Export name; '' is the default export. */
  export: string;
  tlsCreds?: string;
  tlsHostname?: string;
  /** Metadata context queried instead of base:allocation (x-dirty-bitmap). */
  dirtyBitmap?: string;
  reconnectDelay: number;
  openTimeout: number;
}

/** Fields of QEMU's SocketAddress per server.type (what `server.*` may hold besides `type`). */
const SERVER_FIELDS: Record<string, readonly string[]> = {
  inet: ['host', 'port', 'numeric', 'to', 'ipv4', 'ipv6', 'keep-alive', 'mptcp'],
  unix: ['path', 'abstract', 'tight'],
  vsock: ['cid', 'port'],
  fd: ['str'],
};

/** The boolean fields of an inet or unix address. */
const SERVER_BOOLS = ['numeric', 'ipv4', 'ipv6', 'keep-alive', 'mptcp', 'abstract', 'tight'];

/**
 * The driver's runtime options (QEMU's nbd_runtime_opts plus the `server.*` fields of
 * SocketAddress), with their types: a value of the wrong type is refused before any connect.
 */
export const NBD_RUNTIME_OPTS: readonly RuntimeOptionSpec[] = [
  { name: 'host', type: 'string', help: 'TCP host to connect to' },
  { name: 'port', type: 'string', help: 'TCP port to connect to' },
  { name: 'path', type: 'string', help: 'Unix socket path to connect to' },
  { name: 'export', type: 'string', help: 'Name of the NBD export to open' },
  { name: 'tls-creds', type: 'string', help: 'ID of the TLS credentials to use' },
  { name: 'tls-hostname', type: 'string', help: 'Override hostname for validating TLS x509 certificate' },
  { name: 'x-dirty-bitmap', weak: true, type: 'string', help: 'experimental: expose named dirty bitmap in place of block status' },
  { name: 'reconnect-delay', weak: true, type: 'number', help: 'seconds to keep requests waiting for a lost connection (default 0)' },
  { name: 'open-timeout', weak: true, type: 'number', help: 'seconds to retry the first connection (default 0)' },
  // Strings here: serverAddress checks them with the field names QEMU's messages use.
  ...['type', ...new Set(Object.values(SERVER_FIELDS).flat())].map((f): RuntimeOptionSpec => ({ name: `server.${f}`, type: 'string' })),
];

/** Option keys the driver takes (anything else is refused as QEMU does). */
export const NBD_OPTION_KEYS: readonly string[] = NBD_RUNTIME_OPTS.map((o) => o.name);

function invalidUrl(filename: string): BlockError {
  return new BlockError('EINVAL', 'No valid URL specified', { op: 'open', path: filename });
}

/** Undo %XX escapes as QEMU's URI parser does; a broken escape makes the URL invalid. */
function unescape(s: string, filename: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw invalidUrl(filename);
  }
}

/**
 * nbd[+tcp|+unix]://[host[:port]]/[export][?socket=PATH] (nbd_parse_uri). The query may hold
 * only `socket`, and only for nbd+unix, where it is required.
 */
function parseUri(filename: string): Record<string, string> {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?$/.exec(filename);
  if (m === null) throw invalidUrl(filename);
  const [, scheme, authority, rawPath, query] = m;
  let isUnix: boolean;
  if (scheme === 'nbd' || scheme === 'nbd+tcp') isUnix = false;
  else if (scheme === 'nbd+unix') isUnix = true;
  else throw new BlockError('EINVAL', `Unknown protocol '${scheme}'`, { op: 'open', path: filename });

  const out: Record<string, string> = {};
  const path = unescape(rawPath.startsWith('/') ? rawPath.slice(1) : rawPath, filename);
  if (path !== '') out.export = path;

  const params = query === undefined || query === '' ? [] : query.split('&').filter((p) => p !== '');
  if (params.length > 1 || (isUnix && params.length === 0) || (!isUnix && params.length > 0)) throw invalidUrl(filename);

  if (isUnix) {
    const eq = params[0].indexOf('=');
    const name = eq < 0 ? params[0] : params[0].slice(0, eq);
    if (authority !== '' || name !== 'socket') throw invalidUrl(filename);
    out['server.type'] = 'unix';
    out['server.path'] = unescape(eq < 0 ? '' : params[0].slice(eq + 1), filename);
    return out;
  }
  // host[:port], the host possibly an IPv6 literal in brackets (the brackets are dropped).
  const hp = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(authority);
  if (hp === null || hp[1] === '' || hp[1] === '[]') throw invalidUrl(filename);
  out['server.type'] = 'inet';
  out['server.host'] = unescape(hp[1].startsWith('[') ? hp[1].slice(1, -1) : hp[1], filename);
  out['server.port'] = hp[2] !== undefined && hp[2] !== '' ? hp[2] : String(NBD_DEFAULT_PORT);
  return out;
}

/** nbd:host:port[:exportname=X] and nbd:unix:PATH[:exportname=X] (QEMU's legacy syntax). */
function parseLegacy(filename: string): Record<string, string> {
  if (filename.includes('?')) throw invalidUrl(filename);
  const out: Record<string, string> = {};
  let file = filename;
  const en = file.indexOf(':exportname=');
  if (en >= 0) {
    const name = file.slice(en + ':exportname='.length);
    // An empty name after the key makes QEMU give up on the filename altogether.
    if (name === '') return out;
    out.export = name;
    file = file.slice(0, en);
  }
  if (!file.startsWith('nbd:')) {
    throw new BlockError('EINVAL', "File name string for NBD must start with 'nbd:'", { op: 'open', path: filename });
  }
  const spec = file.slice('nbd:'.length);
  if (spec === '') return out;
  if (spec.startsWith('unix:')) {
    out['server.type'] = 'unix';
    out['server.path'] = spec.slice('unix:'.length);
    return out;
  }
  // inet_parse: host:port with the port required, IPv6 in brackets.
  const hp = /^(\[[^\]]*\]|[^:[\]]*):([^,]+)$/.exec(spec);
  if (hp === null) throw new BlockError('EINVAL', `error parsing address '${spec}'`, { op: 'open', path: filename });
  out['server.type'] = 'inet';
  out['server.host'] = hp[1].startsWith('[') ? hp[1].slice(1, -1) : hp[1];
  out['server.port'] = hp[2];
  return out;
}

/** The option keys a filename stands for (nbd_parse_filename); {} for a bare 'nbd:'. */
export function nbdParseFilename(filename: string): Record<string, string> {
  if (filename.includes('://')) return parseUri(filename);
  return parseLegacy(filename);
}

/** A filename beside address or export options is refused, as QEMU refuses it. */
function checkNoAddressKeys(filename: string, keys: Iterable<string>): void {
  for (const k of keys) {
    if (['export', 'path', 'host', 'port'].includes(k) || k.startsWith('server.')) {
      throw new BlockError('EINVAL', 'host/port/path and a file name may not be specified at the same time', {
        op: 'open',
        path: filename,
      });
    }
  }
}

/** The driver's parseFilename hook: the keys a filename stands for, added to `options`. */
export function nbdParseFilenameInto(filename: string, options: FlatQDict): void {
  checkNoAddressKeys(filename, options.keys());
  for (const [k, v] of Object.entries(nbdParseFilename(filename))) options.set(k, v);
}

/**
 * reconnect-delay / open-timeout: a QEMU number option (qemu_strtou64, so "-1" is 2^64-1, the
 * type check already done) stored in a uint32_t, which keeps the low 32 bits.
 */
function seconds(options: Record<string, string>, key: string): number {
  const v = options[key]?.trim();
  if (v === undefined) return 0;
  if (!/^[+-]?(0x[0-9a-fA-F]+|[0-9]+)$/.test(v)) throw new BlockError('EINVAL', `Parameter '${key}' expects a number`, { op: 'open' });
  const neg = v.startsWith('-');
  const n = BigInt(v.replace(/^[+-]/, ''));
  return Number(BigInt.asUintN(64, neg ? -n : n) & 0xffffffffn);
}

function missing(name: string): BlockError {
  return new BlockError('EINVAL', `Parameter '${name}' is missing`, { op: 'open' });
}

/**
 * The legacy flat keys as server.* ones (nbd_process_legacy_socket_options): `path`, or
 * `host` with `port` defaulting to 10809.
 */
function legacyAddress(o: Record<string, string>): Record<string, string> {
  const { host, port, path } = o;
  if (host === undefined && port === undefined && path === undefined) return o;
  if (Object.keys(o).some((k) => k.startsWith('server.'))) {
    throw new BlockError('EINVAL', "Cannot use 'server' and path/host/port at the same time", { op: 'open' });
  }
  const out = { ...o };
  delete out.host;
  delete out.port;
  delete out.path;
  if (path !== undefined && host !== undefined) {
    throw new BlockError('EINVAL', 'path and host may not be used at the same time', { op: 'open' });
  }
  if (path !== undefined) {
    if (port !== undefined) throw new BlockError('EINVAL', 'port may not be used without host', { op: 'open' });
    return { ...out, 'server.type': 'unix', 'server.path': path };
  }
  // A port alone names no server: "NBD server address missing" follows.
  if (host === undefined) return out;
  return { ...out, 'server.type': 'inet', 'server.host': host, 'server.port': port ?? String(NBD_DEFAULT_PORT) };
}

/** The server.* keys as a SocketAddress, checked as QEMU's visitor checks them (its messages). */
function serverAddress(o: Record<string, string>): NbdServerAddress {
  const fields = new Map<string, string>();
  for (const [k, v] of Object.entries(o)) if (k.startsWith('server.')) fields.set(k.slice('server.'.length), v);
  if (fields.size === 0) throw new BlockError('EINVAL', 'NBD server address missing', { op: 'open' });
  const type = fields.get('type');
  if (type === undefined) throw missing('type');
  const allowed = SERVER_FIELDS[type] as readonly string[] | undefined;
  if (allowed === undefined) throw new BlockError('EINVAL', `Parameter 'type' does not accept value '${type}'`, { op: 'open' });
  // Members in QAPI order: the first one missing is reported, then any extra key.
  const required = type === 'inet' ? ['host', 'port'] : type === 'unix' ? ['path'] : type === 'vsock' ? ['cid', 'port'] : ['str'];
  for (const r of required) if (!fields.has(r)) throw missing(r);
  const bools: Record<string, boolean> = {};
  for (const [k, v] of fields) {
    if (k === 'type') continue;
    if (!allowed.includes(k)) throw new BlockError('EINVAL', `Parameter '${k}' is unexpected`, { op: 'open' });
    if (SERVER_BOOLS.includes(k)) bools[k] = parseOptBool(k, v);
  }
  if (type === 'vsock' || type === 'fd') {
    throw new BlockError('ENOTSUP', `NBD server addresses of type '${type}' are not supported`, { op: 'open' });
  }
  if (type === 'unix') {
    if (bools.abstract === true && bools.tight === false) {
      throw new BlockError('ENOTSUP', 'Abstract Unix sockets with tight=off are not supported', { op: 'open' });
    }
    const addr: NbdServerAddress = { type: 'unix', path: fields.get('path') as string };
    if (bools.abstract === true) addr.abstract = true;
    return addr;
  }
  if (bools.mptcp === true) throw new BlockError('ENOTSUP', 'MPTCP is not supported', { op: 'open' });
  const addr: NbdServerAddress = { type: 'inet', host: fields.get('host') as string, port: fields.get('port') as string };
  // ipv4=on alone, or ipv6=off, leaves IPv4 only (and the other way round), as inet_ai_family_from_address.
  if ((bools.ipv4 === true && bools.ipv6 !== true) || (bools.ipv6 === false && bools.ipv4 !== false)) addr.family = 4;
  else if ((bools.ipv6 === true && bools.ipv4 !== true) || (bools.ipv4 === false && bools.ipv6 !== false)) addr.family = 6;
  if (bools['keep-alive'] === true) addr.keepAlive = true;
  // An address with ipv4, ipv6 or to has no nbd:// spelling (nbd_refresh_filename).
  if (fields.has('ipv4') || fields.has('ipv6') || fields.has('to')) addr.noUri = true;
  return addr;
}

/**
 * The whole configuration of a node: `filename` (may be '' when everything comes as options)
 * merged with `options`. Unknown keys are refused.
 */
export function nbdConfig(filename: string, options: Record<string, string> = {}): NbdConfig {
  for (const k of Object.keys(options)) {
    if (!NBD_OPTION_KEYS.includes(k)) {
      throw new BlockError('EINVAL', `Block protocol 'nbd' doesn't support the option '${k}'`, { op: 'open' });
    }
  }
  if (filename !== '') checkNoAddressKeys(filename, Object.keys(options));
  const o = legacyAddress(filename === '' ? options : { ...options, ...nbdParseFilename(filename) });
  const server = serverAddress(o);
  if (server.type === 'inet' && !/^\d+$/.test(server.port)) {
    // QEMU resolves service names too; numeric ports are all we take.
    throw new BlockError('EINVAL', `address resolution failed for ${server.host}:${server.port}: Servname not supported for ai_socktype`, { op: 'open' });
  }
  const exportName = o.export ?? '';
  if (new TextEncoder().encode(exportName).length > 4096) {
    throw new BlockError('EINVAL', 'export name too long to send to server', { op: 'open' });
  }
  const cfg: NbdConfig = {
    server,
    export: exportName,
    reconnectDelay: seconds(o, 'reconnect-delay'),
    openTimeout: seconds(o, 'open-timeout'),
  };
  if (o['tls-creds'] !== undefined) cfg.tlsCreds = o['tls-creds'];
  if (o['tls-hostname'] !== undefined) cfg.tlsHostname = o['tls-hostname'];
  if (o['x-dirty-bitmap'] !== undefined) cfg.dirtyBitmap = o['x-dirty-bitmap'];
  if (cfg.tlsCreds !== undefined && server.type === 'inet' && cfg.tlsHostname === undefined) cfg.tlsHostname = server.host;
  return cfg;
}

/**
 * How QEMU shows the node (nbd_refresh_filename): nbd://h:p/exp or nbd+unix:///exp?socket=P;
 * null when the address has no such spelling (then the node is shown by its options).
 */
export function nbdCanonicalName(cfg: NbdConfig): string | null {
  const exp = cfg.export;
  if (cfg.server.type === 'inet' && cfg.server.noUri === true) return null;
  if (cfg.server.type === 'unix') {
    return exp === '' ? `nbd+unix://?socket=${cfg.server.path}` : `nbd+unix:///${exp}?socket=${cfg.server.path}`;
  }
  // The host goes in as it is, an IPv6 literal without brackets, as QEMU prints it.
  const host = cfg.server.host;
  return exp === '' ? `nbd://${host}:${cfg.server.port}` : `nbd://${host}:${cfg.server.port}/${exp}`;
}
