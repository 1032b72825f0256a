/**
 * The http/https driver's runtime options, QEMU's curl driver keys: url, readahead (default
 * 256 KiB, a multiple of 512), timeout (seconds, default 5, at most 10000, 0 for none),
 * sslverify (default on), cookie. Parsed and checked before any request is made.
 */
import { BlockError } from '../../block/errors.js';

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
}

/** The option keys this driver understands (QEMU's runtime_opts that need no secret object). */
export const HTTP_OPTION_KEYS = ['url', 'readahead', 'timeout', 'sslverify', 'cookie'] as const;

function invalid(message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'open' });
}

const SIZE_SUFFIXES: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** A QEMU size option: digits with an optional k/M/G/T suffix (qemu_strtosz). */
function parseSize(name: string, value: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)\s*$/i.exec(value);
  const n = m === null ? NaN : Number(m[1]) * SIZE_SUFFIXES[m[2].toLowerCase()];
  if (!Number.isSafeInteger(n)) {
    throw invalid(`Parameter '${name}' expects a non-negative number below 2^64`);
  }
  return n;
}

function parseBool(name: string, value: string): boolean {
  if (/^(on|yes|true|y)$/i.test(value)) return true;
  if (/^(off|no|false|n)$/i.test(value)) return false;
  throw invalid(`Parameter '${name}' expects 'on' or 'off'`);
}

/**
 * Options for a node of protocol `protocol` ('http' or 'https') opened as `filename`:
 * `url` defaults to the filename (QEMU's curl_parse_filename).
 */
export function parseHttpOptions(protocol: string, filename: string, opts: Record<string, string> = {}): HttpOptions {
  const readahead = opts.readahead === undefined ? HTTP_READAHEAD_DEFAULT : parseSize('readahead', opts.readahead);
  if (readahead % 512 !== 0) throw invalid(`HTTP_READAHEAD_SIZE ${readahead} is not a multiple of 512`);
  if (readahead > HTTP_READAHEAD_MAX) throw invalid(`HTTP_READAHEAD_SIZE ${readahead} is larger than ${HTTP_READAHEAD_MAX}`);

  let timeout = HTTP_TIMEOUT_DEFAULT;
  if (opts.timeout !== undefined) {
    if (!/^\s*-?\d+\s*$/.test(opts.timeout)) throw invalid("Parameter 'timeout' expects a number");
    timeout = Number(opts.timeout);
    // QEMU reads it as unsigned: a negative number is a huge one.
    if (timeout < 0 || timeout > HTTP_TIMEOUT_MAX) throw invalid('timeout parameter is too large or negative');
  }

  const sslverify = opts.sslverify === undefined ? true : parseBool('sslverify', opts.sslverify);
  const url = opts.url ?? filename;
  if (!url.startsWith(`${protocol}://`)) {
    throw invalid(`${protocol} curl driver cannot handle the URL '${url}' (does not start with '${protocol}://')`);
  }
  return { url, readahead, timeout, sslverify, cookie: opts.cookie };
}
