/**
 * How the http driver talks to a server: one small function, a transport, that performs one
 * request and hands back the status, the headers and a bounded body. The driver never touches
 * a socket, so it runs wherever a transport exists:
 *
 * - `fetchTransport` (here) uses the global `fetch` of browsers and Node. It cannot switch off
 *   certificate checks (`sslverify=off`): browsers decide that, not the page.
 * - `nodeHttpTransport` (node-transport.ts, imported only by the Node entry) uses node:http and
 *   node:https: it can trust an extra CA and honour `sslverify=off`.
 *
 * The package entry installs the transport its platform wants with `setHttpTransport`.
 * Transports report failures as BlockErrors whose message is what curl would say, because the
 * tools print it after QEMU's "CURL: Error opening file: ".
 */
import { BlockError } from '../../block/errors.js';
import { IOVector } from '../../block/iovec.js';

export interface HttpRequest {
  method: 'HEAD' | 'GET';
  url: string;
  headers: Record<string, string>;
  /** Deadline for the whole exchange in milliseconds (curl's CURLOPT_TIMEOUT); 0: none. */
  timeoutMs: number;
  /** Check the server's certificate (https only). */
  sslverify: boolean;
  /** Most body bytes the caller accepts: a longer body fails the request before it is buffered. */
  maxBodyBytes: number;
}

export interface HttpResponse {
  status: number;
  /** A response header by case-insensitive name, or null. */
  header(name: string): string | null;
  /** The body (empty for HEAD), never longer than the request's maxBodyBytes. */
  body: Uint8Array;
}

export type HttpTransport = (req: HttpRequest) => Promise<HttpResponse>;

/** curl's text for a deadline that passed (CURLE_OPERATION_TIMEDOUT). */
export function timeoutError(url: string, elapsedMs: number, received: number): BlockError {
  return new BlockError('EIO', `Operation timed out after ${elapsedMs} milliseconds with ${received} bytes received`, {
    op: 'http',
    path: url,
  });
}

/** A body longer than the caller asked for: refused rather than buffered without bound. */
export function bodyTooLongError(url: string, max: number): BlockError {
  return new BlockError('EIO', `Server sent more than the ${max} bytes asked for`, { op: 'http', path: url });
}

/** Read a fetch body into memory, failing once it passes `max` bytes. */
async function readBounded(res: Response, url: string, max: number): Promise<Uint8Array> {
  if (res.body === null) return new Uint8Array(0);
  const reader: ReadableStreamDefaultReader<Uint8Array> = res.body.getReader();
  const parts: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > max) {
      await reader.cancel();
      throw bodyTooLongError(url, max);
    }
    parts.push(value);
  }
  if (parts.length === 1) return parts[0];
  return new IOVector(parts).toBuffer();
}

/** The transport over the global `fetch` (browsers, Node 20). */
export const fetchTransport: HttpTransport = async (req) => {
  if (!req.sslverify) {
    throw new BlockError('ENOTSUP', 'sslverify=off is not possible with fetch (use the Node transport)', {
      op: 'http',
      path: req.url,
    });
  }
  const started = Date.now();
  // AbortSignal.timeout does not keep a Node process alive, as an unref()ed timer.
  const signal = req.timeoutMs > 0 ? AbortSignal.timeout(req.timeoutMs) : undefined;
  let received = 0;
  try {
    const res = await fetch(req.url, { method: req.method, headers: req.headers, signal, redirect: 'follow' });
    const body = req.method === 'HEAD' ? new Uint8Array(0) : await readBounded(res, req.url, req.maxBodyBytes);
    received = body.length;
    return { status: res.status, header: (name) => res.headers.get(name), body };
  } catch (e) {
    if (e instanceof BlockError) throw e;
    if (signal?.aborted === true) throw timeoutError(req.url, Date.now() - started, received);
    // fetch hides the reason behind 'fetch failed'; Node puts the system error in `cause`.
    const cause = (e as { cause?: { message?: unknown } }).cause;
    const why = typeof cause?.message === 'string' ? cause.message : e instanceof Error ? e.message : String(e);
    throw new BlockError('EIO', `Couldn't connect to server: ${why}`, { op: 'http', path: req.url, cause: e });
  }
};

let current: HttpTransport = fetchTransport;

/** The transport http nodes opened from now on use (the package entry sets its platform's). */
export function setHttpTransport(transport: HttpTransport): void {
  current = transport;
}

export function getHttpTransport(): HttpTransport {
  return current;
}
