/**
 * The http/https driver's runtime options, QEMU's curl driver keys: url, readahead (default
 * 256 KiB, a multiple of 512), timeout (seconds, default 5, at most 10000, 0 for none),
 * sslverify (default on), cookie or cookie-secret, username and password-secret (HTTP basic
 * authentication). proxy-username and proxy-password-secret are refused: requests here never
 * go through a proxy. Parsed and checked before any request is made.
 */
import { BlockError } from '../../block/errors.js';
import type { ObjectTable, SecretObject } from '../../block/objects.js';
import { parseOptBool, type RuntimeOptionSpec } from '../../block/options.js';
import { parseOptionSize } from '../../block/strtosz.js';

export const HTTP_READAHEAD_DEFAULT = 256 * 1024;
export const HTTP_TIMEOUT_DEFAULT = 5;
export const HTTP_TIMEOUT_MAX = 10000;
/** Largest readahead accepted: it is buffered in memory, once per request slot. */
export const HTTP_READAHEAD_MAX = 64 * 1024 * 1024;

export interface HttpOptions {
  url: string;
  readahead: number;
  /** Seconds; 0 means no deadline. */
  timeout: number;
  sslverify: boolean;
  cookie?: string;
  /** The Authorization header of username/password-secret (basic), when given. */
  authorization?: string;
  /** Only `url` (and weak options) was given: the node is shown by its URL, else by its options. */
  plainUrl: boolean;
}

/** QEMU's curl runtime_opts, with their types (checked by the generic layer first). */
export const HTTP_RUNTIME_OPTS: readonly RuntimeOptionSpec[] = [
  { name: 'url', type: 'string', help: 'URL to open' },
  { name: 'readahead', weak: true, type: 'size', help: 'Readahead size' },
  { name: 'sslverify', type: 'bool', help: 'Verify SSL certificate' },
  { name: 'timeout', weak: true, type: 'number', help: 'Curl timeout' },
  { name: 'cookie', type: 'string', help: 'Pass the cookie or list of cookies with each request' },
  { name: 'cookie-secret', type: 'string', help: 'ID of secret used as cookie passed with each request' },
  { name: 'username', type: 'string', help: 'Username for HTTP auth' },
  { name: 'password-secret', type: 'string', help: 'ID of secret used as password for HTTP auth' },
  { name: 'proxy-username', type: 'string', help: 'Username for HTTP proxy auth' },
  { name: 'proxy-password-secret', type: 'string', help: 'ID of secret used as password for HTTP proxy auth' },
];

/** The option keys this driver understands. */
export const HTTP_OPTION_KEYS: readonly string[] = HTTP_RUNTIME_OPTS.map((o) => o.name);

function invalid(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'open' });
}

/** qcrypto_secret_lookup_as_utf8: the secret's text, or QEMU's message. */
function secretText(objects: ObjectTable | undefined, id: string): string {
  const s = objects?.get<SecretObject>(id, 'secret');
  if (s === undefined) throw new BlockError('ENOENT', `No secret with id '${id}'`, { op: 'open' });
  return new TextDecoder().decode(s.data);
}

/** Base64 of UTF-8 text, without a Node Buffer (the driver runs in browsers too). */
function base64(text: string): string {
  let bin = '';
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin);
}

/**
 * Options for a node of protocol `protocol` ('http' or 'https'); `url` is the `url` option or
 * else the node's filename (QEMU's curl_parse_filename puts the name there). `objects` holds
 * the secrets the *-secret keys name.
 */
export function parseHttpOptions(protocol: string, filename: string, opts: Record<string, string> = {}, objects?: ObjectTable): HttpOptions {
  const readahead = opts.readahead === undefined ? HTTP_READAHEAD_DEFAULT : Number(parseOptionSize('readahead', opts.readahead));
  if (readahead % 512 !== 0) throw invalid(`HTTP_READAHEAD_SIZE ${readahead} is not a multiple of 512`);
  if (readahead > HTTP_READAHEAD_MAX) throw invalid(`HTTP_READAHEAD_SIZE ${readahead} is larger than ${HTTP_READAHEAD_MAX}`);

  let timeout = HTTP_TIMEOUT_DEFAULT;
  if (opts.timeout !== undefined) {
    if (!/^\s*[+-]?\d+\s*$/.test(opts.timeout)) throw invalid("Parameter 'timeout' expects a number");
    timeout = Number(opts.timeout);
    // QEMU reads it as unsigned: a negative number is a huge one.
    if (timeout < 0 || timeout > HTTP_TIMEOUT_MAX) throw invalid('timeout parameter is too large or negative');
  }

  const sslverify = opts.sslverify === undefined ? true : parseOptBool('sslverify', opts.sslverify);
  let cookie = opts.cookie;
  if (opts['cookie-secret'] !== undefined) {
    if (cookie !== undefined) throw invalid('curl driver cannot handle both cookie and cookie secret');
    cookie = secretText(objects, opts['cookie-secret']);
  }
  const url = opts.url ?? (filename === '' ? undefined : filename);
  if (url === undefined) throw invalid("curl block driver requires an 'url' option");
  if (!url.startsWith(`${protocol}://`)) {
    throw invalid(`${protocol} curl driver cannot handle the URL '${url}' (does not start with '${protocol}://')`);
  }
  const password = opts['password-secret'] === undefined ? undefined : secretText(objects, opts['password-secret']);
  if (opts['proxy-password-secret'] !== undefined) secretText(objects, opts['proxy-password-secret']);
  if (opts['proxy-username'] !== undefined || opts['proxy-password-secret'] !== undefined) {
    throw new BlockError('ENOTSUP', 'curl driver: proxy-username and proxy-password-secret are not supported (requests use no proxy)', { op: 'open' });
  }
  const plainUrl = HTTP_RUNTIME_OPTS.every((o) => o.weak === true || o.name === 'url' || opts[o.name] === undefined);
  const out: HttpOptions = { url, readahead, timeout, sslverify, plainUrl };
  if (cookie !== undefined) out.cookie = cookie;
  // Basic authentication, as curl sends CURLOPT_USERNAME/CURLOPT_PASSWORD by default.
  if (opts.username !== undefined || password !== undefined) {
    out.authorization = `Basic ${base64(`${opts.username ?? ''}:${password ?? ''}`)}`;
  }
  return out;
}
