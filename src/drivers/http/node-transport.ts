/**
 * The http driver's transport over node:http and node:https, installed by the Node entry. Unlike
 * fetch it can trust an extra CA (a test's throwaway one) and honour `sslverify=off`. Node-only:
 * the browser entry never imports this file.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { BlockError } from '../../block/errors.js';
import { bodyTooLongError, type HttpRequest, type HttpResponse, type HttpTransport, timeoutError } from './transport.js';

export interface NodeHttpTransportOptions {
  /** Extra certificate authorities (PEM) trusted for https, besides Node's own. */
  ca?: string | string[];
  /** Redirects followed before giving up (curl follows them too). */
  maxRedirects?: number;
}

function collect(res: IncomingMessage, req: HttpRequest, onData: (n: number) => void): Promise<Uint8Array> {
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

interface Agents {
  http: HttpAgent;
  https: HttpsAgent;
}

function once(req: HttpRequest, url: URL, opts: NodeHttpTransportOptions, agents: Agents): Promise<{ res: IncomingMessage; body: Uint8Array }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    let received = 0;
    const https = url.protocol === 'https:';
    const options = { method: req.method, headers: req.headers, rejectUnauthorized: req.sslverify, ca: opts.ca };
    const onResponse = (res: IncomingMessage): void => {
      collect(res, req, (n) => (received = n)).then((body) => {
        clearTimeout(timer);
        resolve({ res, body });
      }, fail);
    };
    const r = https ? httpsRequest(url, { ...options, agent: agents.https }, onResponse) : httpRequest(url, { ...options, agent: agents.http }, onResponse);
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
  // Kept-alive connections save a handshake per read (Node unref()s idle ones, so they never
  // keep the process alive).
  const agents: Agents = { http: new HttpAgent({ keepAlive: true }), https: new HttpsAgent({ keepAlive: true }) };
  return async (req): Promise<HttpResponse> => {
    let url = new URL(req.url);
    for (let hops = 0; ; hops++) {
      const { res, body } = await once(req, url, opts, agents);
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
