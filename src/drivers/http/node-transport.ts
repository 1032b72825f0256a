/**
 * The http driver's transport over node:http and node:https, installed by the Node entry. Unlike
 * fetch it can trust an extra CA (a test's throwaway one) and honour `sslverify=off`. Node-only:
 * the browser entry never imports this file.
 */
import type * as http from 'node:http';
import type * as https from 'node:https';
import { BlockError } from '../../block/errors.js';
import { bodyTooLongError, type HttpRequest, type HttpResponse, type HttpTransport, timeoutError } from './transport.js';

export interface NodeHttpTransportOptions {
  /** Extra certificate authorities (PEM) trusted for https, besides Node's own. */
  ca?: string | string[];
  /** Redirects followed before giving up (curl follows them too). */
  maxRedirects?: number;
}

function collect(res: http.IncomingMessage, req: HttpRequest, onData: (n: number) => void): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const parts: Uint8Array[] = [];
    let total = 0;
    res.on('data', (chunk: Uint8Array) => {
      total += chunk.length;
      onData(total);
      if (total > req.maxBodyBytes) {
        res.destroy();
        reject(bodyTooLongError(req.url, req.maxBodyBytes));
        return;
      }
      parts.push(chunk);
    });
    res.on('end', () => resolve(parts.length === 1 ? parts[0] : new Uint8Array(Buffer.concat(parts))));
    res.on('error', reject);
  });
}

/** node:http and node:https with their kept-alive agents. */
interface Stack {
  http: typeof http;
  https: typeof https;
  agents: { http: http.Agent; https: https.Agent };
}

/**
 * Loaded by the first request: the Node entry installs this transport, and loading node:http
 * and node:https (with node:tls and node:crypto) took ~10 ms of every tool's start.
 */
async function loadStack(): Promise<Stack> {
  const [h, hs] = await Promise.all([import('node:http'), import('node:https')]);
  // Kept-alive connections save a handshake per read (Node unref()s idle ones, so they never
  // keep the process alive).
  return { http: h, https: hs, agents: { http: new h.Agent({ keepAlive: true }), https: new hs.Agent({ keepAlive: true }) } };
}

function once(req: HttpRequest, url: URL, opts: NodeHttpTransportOptions, stack: Stack): Promise<{ res: http.IncomingMessage; body: Uint8Array }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    let received = 0;
    const secure = url.protocol === 'https:';
    const options = { method: req.method, headers: req.headers, rejectUnauthorized: req.sslverify, ca: opts.ca };
    const onResponse = (res: http.IncomingMessage): void => {
      collect(res, req, (n) => (received = n)).then((body) => {
        clearTimeout(timer);
        resolve({ res, body });
      }, fail);
    };
    const r = secure
      ? stack.https.request(url, { ...options, agent: stack.agents.https }, onResponse)
      : stack.http.request(url, { ...options, agent: stack.agents.http }, onResponse);
    function fail(e: unknown): void {
      clearTimeout(timer);
      r.destroy();
      if (e instanceof BlockError) reject(e);
      else {
        const why = e instanceof Error ? e.message : String(e);
        reject(new BlockError('EIO', `Couldn't connect to server: ${why}`, { op: 'http', path: req.url, cause: e }));
      }
    }
    // The deadline covers the whole exchange, as curl's CURLOPT_TIMEOUT; unref()ed so that it
    // never keeps the process alive by itself.
    const timer =
      req.timeoutMs > 0
        ? setTimeout(() => fail(timeoutError(req.url, Date.now() - started, received)), req.timeoutMs).unref()
        : undefined;
    r.on('error', fail);
    r.end();
  });
}

/** A transport over node:http/node:https. */
export function nodeHttpTransport(opts: NodeHttpTransportOptions = {}): HttpTransport {
  const maxRedirects = opts.maxRedirects ?? 10;
  let stack: Promise<Stack> | undefined;
  return async (req): Promise<HttpResponse> => {
    stack ??= loadStack();
    const s = await stack;
    let url = new URL(req.url);
    for (let hops = 0; ; hops++) {
      const { res, body } = await once(req, url, opts, s);
      const status = res.statusCode ?? 0;
      const location = res.headers.location;
      if (status >= 300 && status < 400 && location !== undefined) {
        if (hops >= maxRedirects) {
          throw new BlockError('EIO', `Maximum (${maxRedirects}) redirects followed`, { op: 'http', path: req.url });
        }
        url = new URL(location, url);
        // Only http(s) targets, as QEMU restricts curl's redirect protocols.
        if (url.protocol !== 'http:' && url.protocol !== 'https:') {
          throw new BlockError('EIO', `Protocol "${url.protocol.slice(0, -1)}" not supported or disabled`, { op: 'http', path: req.url });
        }
        continue;
      }
      const header = (name: string): string | null => {
        const v = res.headers[name.toLowerCase()];
        return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
      };
      return { status, header, body };
    }
  };
}
