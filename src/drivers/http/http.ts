/**
 * The `http` and `https` protocol drivers, as QEMU's curl driver: read-only images served over
 * HTTP with byte ranges. No node: imports; requests go through an HttpTransport (transport.ts).
 *
 * Open asks for the headers only (HEAD): the size comes from Content-Length and the server must
 * announce `Accept-Ranges: bytes`, or the image cannot be read piecewise.
 *
 * Reads and readahead (curl.c's states and buffers): a read that misses the cache fetches its
 * range plus `readahead` bytes more (clamped to the size) with one ranged GET, and keeps the
 * buffer. Later reads inside a buffer, finished or still in flight, are served from it. At most
 * HTTP_NUM_STATES requests are in flight (more wait in FIFO order) and at most as many buffers
 * are kept (the oldest finished one goes first), so memory stays bounded by
 * HTTP_NUM_STATES * (request + readahead).
 *
 * Every answer is checked against what was asked: status 206, a Content-Range naming exactly
 * the range and the size seen at open (a file replaced by one of another size is an error, not
 * a silent mix of two files), and a body of exactly that length.
 */
import { BDRV_SECTOR_SIZE, type BlockDriver, driverState, type OpenOptions } from '../../block/driver.js';
import { CoQueue } from '../../block/coroutine.js';
import { BlockError, type BlockErrorCode } from '../../block/errors.js';
import { roundUp } from '../../block/io/requests.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import { HTTP_RUNTIME_OPTS, type HttpOptions, parseHttpOptions } from './options.js';
import { getHttpTransport, type HttpRequest, type HttpResponse, type HttpTransport } from './transport.js';

/** Requests in flight and buffers kept per node (QEMU's CURL_NUM_STATES). */
export const HTTP_NUM_STATES = 8;

interface RangeBuffer {
  start: number;
  end: number;
  data: Promise<Uint8Array>;
  settled: boolean;
}

interface HttpState {
  opts: HttpOptions;
  transport: HttpTransport;
  len: number;
  buffers: RangeBuffer[];
  inFlight: number;
  freeSlot: CoQueue;
}

function state(bs: BlockDriverState): HttpState {
  return driverState<HttpState>(bs, 'http');
}

function request(s: HttpState, method: HttpRequest['method'], headers: Record<string, string>, maxBodyBytes: number): Promise<HttpResponse> {
  // identity: a compressed body would not match the byte ranges asked for.
  const all: Record<string, string> = { 'Accept-Encoding': 'identity', ...headers };
  if (s.opts.cookie !== undefined) all.Cookie = s.opts.cookie;
  if (s.opts.authorization !== undefined) all.Authorization = s.opts.authorization;
  return s.transport({ method, url: s.opts.url, headers: all, timeoutMs: s.opts.timeout * 1000, sslverify: s.opts.sslverify, maxBodyBytes });
}

/** curl's CURLOPT_FAILONERROR text for an HTTP error status. */
function statusError(status: number, url: string, op: string): BlockError {
  const code: BlockErrorCode = status === 404 || status === 410 ? 'ENOENT' : status === 401 || status === 403 ? 'EACCES' : 'EIO';
  return new BlockError(code, `The requested URL returned error: ${status}`, { op, path: url });
}

function openError(e: unknown, url: string): BlockError {
  const err = e instanceof BlockError ? e : new BlockError('EIO', String(e), { cause: e });
  return new BlockError(err.code, `CURL: Error opening file: ${err.message}`, { op: 'open', path: url, cause: err });
}

async function httpOpen(bs: BlockDriverState, options: OpenOptions, transport?: HttpTransport): Promise<void> {
  const protocol = bs.driver.protocolName ?? 'http';
  if (options.readOnly !== true) {
    throw new BlockError('EACCES', 'curl driver does not support writes', { op: 'open', path: bs.filename });
  }
  const opts = parseHttpOptions(protocol, bs.filename, options.driverOptions, options.objects);
  // Opened from options, the node is named by its URL when nothing else was said (as QEMU).
  if (opts.plainUrl) bs.exactFilename = opts.url;
  const s: HttpState = { opts, transport: transport ?? getHttpTransport(), len: 0, buffers: [], inFlight: 0, freeSlot: new CoQueue() };
  let res: HttpResponse;
  try {
    res = await request(s, 'HEAD', {}, 0);
  } catch (e) {
    throw openError(e, opts.url);
  }
  if (res.status >= 400) throw openError(statusError(res.status, opts.url, 'open'), opts.url);
  const length = res.header('content-length');
  if (length === null || !/^\d+$/.test(length.trim()) || !Number.isSafeInteger(Number(length))) {
    throw openError(new BlockError('EIO', "Server didn't report file size."), opts.url);
  }
  // Only a server that says so serves byte ranges; without them every read is the whole file.
  if (!/^\s*bytes\s*$/i.test(res.header('accept-ranges') ?? '')) {
    throw openError(new BlockError('ENOTSUP', "Server does not support 'range' (byte ranges)."), opts.url);
  }
  s.len = Number(length);
  bs.opaque = s;
}

async function httpClose(bs: BlockDriverState): Promise<void> {
  // The generic layer drained the node: no read is in flight; the buffers go with the state.
  bs.opaque = null;
}

function readError(message: string, s: HttpState, offset: number, code: BlockErrorCode = 'EIO'): BlockError {
  return new BlockError(code, message, { op: 'read', path: s.opts.url, offset });
}

/** One ranged GET of [start, end), checked against what was asked and the size seen at open. */
async function fetchRange(s: HttpState, start: number, end: number): Promise<Uint8Array> {
  const res = await request(s, 'GET', { Range: `bytes=${start}-${end - 1}` }, end - start);
  if (res.status >= 400) throw statusError(res.status, s.opts.url, 'read');
  if (res.status !== 206) throw readError("Server does not support 'range' (byte ranges).", s, start, 'ENOTSUP');
  const m = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(res.header('content-range') ?? '');
  if (m === null) throw readError(`Server sent no valid Content-Range for bytes ${start}-${end - 1}`, s, start);
  if (m[3] !== '*' && Number(m[3]) !== s.len) {
    throw readError(`Server's file size changed from ${s.len} to ${m[3]} bytes since it was opened`, s, start);
  }
  if (Number(m[1]) !== start || Number(m[2]) !== end - 1 || res.body.length !== end - start) {
    throw readError(`Server sent bytes ${m[1]}-${m[2]} (${res.body.length} bytes) for bytes ${start}-${end - 1}`, s, start);
  }
  return res.body;
}

function findBuffer(s: HttpState, start: number, end: number): RangeBuffer | undefined {
  return s.buffers.find((b) => b.start <= start && end <= b.end);
}

/** A buffer holding [start, end): a kept or in-flight one, else a new request with readahead. */
async function bufferFor(s: HttpState, start: number, end: number): Promise<RangeBuffer> {
  for (;;) {
    const found = findBuffer(s, start, end);
    if (found) return found;
    if (s.inFlight < HTTP_NUM_STATES) break;
    // Look again when woken: the request that freed the slot may hold what we want.
    await s.freeSlot.wait();
  }
  const buf: RangeBuffer = { start, end: Math.min(end + s.opts.readahead, s.len), data: Promise.resolve(new Uint8Array(0)), settled: false };
  buf.data = fetchRange(s, buf.start, buf.end);
  s.inFlight++;
  s.buffers.push(buf);
  const done = (ok: boolean): void => {
    buf.settled = true;
    s.inFlight--;
    // A failed request keeps nothing; the next read of its range asks again.
    if (!ok) s.buffers.splice(s.buffers.indexOf(buf), 1);
    evictBuffers(s);
    // Wake every waiter, not one: a woken reader may find its range in a buffer and leave the
    // slot unused, and a single wake-up would then be lost. Those still without a slot queue
    // again in their order.
    s.freeSlot.restartAll();
  };
  // Both outcomes handled here; the reader awaits buf.data itself and sees the error.
  buf.data.then(
    () => done(true),
    () => done(false),
  );
  return buf;
}

/** Keep at most HTTP_NUM_STATES buffers: drop the oldest finished ones. */
function evictBuffers(s: HttpState): void {
  for (let i = 0; s.buffers.length > HTTP_NUM_STATES && i < s.buffers.length; ) {
    if (s.buffers[i].settled) s.buffers.splice(i, 1);
    else i++;
  }
}

async function httpCoPreadv(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const s = state(bs);
  // A parent may read past the end of the file: those bytes read as zeros, as in curl.c.
  const end = Math.min(offset + bytes, s.len);
  let n = 0;
  if (end > offset) {
    const buf = await bufferFor(s, offset, end);
    const data = await buf.data;
    qiov.copyFrom(data.subarray(offset - buf.start, end - buf.start));
    n = end - offset;
  }
  if (n < bytes) qiov.memset(n, 0, bytes - n);
}

/**
 * Whole sectors, as QEMU's block layer counts a curl node (bdrv_getlength rounds total_sectors
 * up): the tail of the last sector reads as zeros and, with no block status hook, as data.
 */
function httpGetLength(bs: BlockDriverState): number {
  return roundUp(state(bs).len, BDRV_SECTOR_SIZE);
}

/**
 * The http and https drivers over `transport`; without one, each open uses the transport set
 * by setHttpTransport at that time.
 */
export function makeHttpDrivers(transport?: HttpTransport): { http: BlockDriver; https: BlockDriver } {
  const make = (name: string): BlockDriver => ({
    formatName: name,
    protocolName: name,
    isProtocol: true,
    // `url` says where the image is: a node opened from options has no filename.
    needsFilename: false,
    runtimeOptions: HTTP_RUNTIME_OPTS,
    parseFilename: (filename, options) => void options.set('url', filename),
    requestAlignment: 1,
    open: (bs, options) => httpOpen(bs, options, transport),
    close: httpClose,
    coPreadv: httpCoPreadv,
    getLength: httpGetLength,
  });
  return { http: make('http'), https: make('https') };
}

const defaults = makeHttpDrivers();
export const httpDriver: BlockDriver = defaults.http;
export const httpsDriver: BlockDriver = defaults.https;
