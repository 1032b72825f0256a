/**
 * Where an `nbd` node connects and what it asks for, from a filename (`nbd://host:port/exp`,
 * `nbd+unix:///exp?socket=PATH`, legacy `nbd:host:port:exportname=exp`, `nbd:unix:PATH`) and/or
 * the driver's option keys (QEMU's BlockdevOptionsNbd: server.*, legacy host/port/path, export,
 * tls-creds, tls-hostname, x-dirty-bitmap, reconnect-delay, open-timeout). Pure: no I/O.
 */
import { BlockError } from '../../block/errors.js';

/** IANA port of NBD. */
export const NBD_DEFAULT_PORT = 10809;

export type NbdServerAddress = { type: 'inet'; host: string; port: string } | { type: 'unix'; path: string };

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

/** Option keys the driver takes (anything else is refused as QEMU does). */
export const NBD_OPTION_KEYS = [
  'server.type',
  'server.host',
  'server.port',
  'server.path',
  'host',
  'port',
  'path',
  'export',
  'tls-creds',
  'tls-hostname',
  'x-dirty-bitmap',
  'reconnect-delay',
  'open-timeout',
] as const;

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
  if (hp[2] !== undefined && hp[2] !== '') out['server.port'] = hp[2];
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
export function nbdParseFilename(filename: string, options: Record<string, string> = {}): Record<string, string> {
  if (filename.includes('://')) return parseUri(filename);
  for (const k of ['export', 'path', 'host', 'port', 'server.type', 'server.host', 'server.port', 'server.path']) {
    if (k in options) {
      throw new BlockError('EINVAL', 'host/port/path and a file name may not be specified at the same time', {
        op: 'open',
        path: filename,
      });
    }
  }
  return parseLegacy(filename);
}

function seconds(options: Record<string, string>, key: string): number {
  const v = options[key];
  if (v === undefined) return 0;
  if (!/^\d+$/.test(v)) {
    throw new BlockError('EINVAL', `Parameter '${key}' expects uint32_t`, { op: 'open' });
  }
  return Number(v);
}

/** The server address from server.* or the legacy flat keys (nbd_config). */
function serverAddress(o: Record<string, string>): NbdServerAddress {
  const legacy = o.host !== undefined || o.port !== undefined || o.path !== undefined;
  const modern = Object.keys(o).some((k) => k.startsWith('server.'));
  if (legacy && modern) {
    throw new BlockError('EINVAL', 'Cannot use \'server\' and path/host/port at the same time', { op: 'open' });
  }
  if (legacy) {
    if (o.path !== undefined && o.host !== undefined) {
      throw new BlockError('EINVAL', 'path and host may not be used at the same time', { op: 'open' });
    }
    if (o.path !== undefined) {
      if (o.port !== undefined) throw new BlockError('EINVAL', 'port may not be used without host', { op: 'open' });
      return { type: 'unix', path: o.path };
    }
    if (o.host === undefined) throw new BlockError('EINVAL', 'Parameter \'host\' is missing', { op: 'open' });
    return { type: 'inet', host: o.host, port: o.port ?? String(NBD_DEFAULT_PORT) };
  }
  const type = o['server.type'];
  if (type === undefined) throw new BlockError('EINVAL', 'NBD server address missing', { op: 'open' });
  if (type === 'unix') {
    if (o['server.path'] === undefined) throw new BlockError('EINVAL', "Parameter 'server.path' is missing", { op: 'open' });
    return { type: 'unix', path: o['server.path'] };
  }
  if (type === 'inet') {
    if (o['server.host'] === undefined) throw new BlockError('EINVAL', "Parameter 'server.host' is missing", { op: 'open' });
    return { type: 'inet', host: o['server.host'], port: o['server.port'] ?? String(NBD_DEFAULT_PORT) };
  }
  throw new BlockError('EINVAL', `Parameter 'server.type' does not accept value '${type}'`, { op: 'open' });
}

/**
 * The whole configuration of a node: `filename` (may be '' or 'nbd:' when everything comes as
 * options) merged with `options`. Unknown keys are refused.
 */
export function nbdConfig(filename: string, options: Record<string, string> = {}): NbdConfig {
  for (const k of Object.keys(options)) {
    if (!(NBD_OPTION_KEYS as readonly string[]).includes(k)) {
      throw new BlockError('EINVAL', `Block protocol 'nbd' doesn't support the option '${k}'`, { op: 'open' });
    }
  }
  const fromName = filename === '' ? {} : nbdParseFilename(filename, options);
  const o = { ...options, ...fromName };
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

/** How QEMU shows the node (nbd_refresh_filename): nbd://h:p/exp or nbd+unix:///exp?socket=P. */
export function nbdCanonicalName(cfg: NbdConfig): string {
  const exp = cfg.export;
  if (cfg.server.type === 'unix') {
    return exp === '' ? `nbd+unix://?socket=${cfg.server.path}` : `nbd+unix:///${exp}?socket=${cfg.server.path}`;
  }
  // The host goes in as it is, an IPv6 literal without brackets, as QEMU prints it.
  const host = cfg.server.host;
  return exp === '' ? `nbd://${host}:${cfg.server.port}` : `nbd://${host}:${cfg.server.port}/${exp}`;
}
