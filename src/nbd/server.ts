/**
 * NbdServer: exports BlockBackends over NBD (fixed newstyle, structured replies, metadata
 * contexts, optional TLS), the library API under `blk-nbd`.
 *
 *   const server = new NbdServer({
 *     exports: [{ name: 'disk', backend, description: 'my disk', allocationDepth: true }],
 *     maxClients: 1,            // simultaneous connections (qemu-nbd -e); 0 = unlimited
 *     tls: { options: { key, cert, ca, requestCert: true } },   // optional: FORCEDTLS
 *   });
 *   server.on('negotiated', (c) => ...);
 *   const addr = await server.listen({ host: '127.0.0.1', port: 0 });  // or { path: '/tmp/s' }
 *   ...
 *   await server.close();   // stop accepting, finish in-flight requests, flush the backends
 *
 * `listen` resolves with the bound address ({ host, port } or { path }); `close` is
 * idempotent and never rejects on client misbehaviour. The backends stay open: they belong
 * to the caller.
 *
 * Events (texts as qemu-nbd logs them on stderr, without its "qemu-nbd: " prefix):
 *   'connect'     ({ id, peer })                         a connection was accepted
 *   'negotiated'  ({ id, peer, exportName })             a client entered transmission
 *   'disconnect'  ({ id, peer, negotiated, clients })    a connection ended; `negotiated`
 *                 says whether it had reached transmission, `clients` how many remain in it
 *   'error'       ({ id, peer, message })                "option negotiation failed: ..." or
 *                 "Disconnect client, due to: ..."; the server keeps serving others
 *
 * Limits: at most `maxClients` connections are served at once; up to `maxQueued` more wait
 * (accepted, no greeting) for a slot, as qemu-nbd's listen backlog; beyond that new
 * connections are closed at once. Each handshake must finish within `handshakeTimeoutMs`.
 * close() gives negotiating clients one second to send one more option (answered
 * ERR_SHUTDOWN) before closing them.
 */
import { EventEmitter } from 'eventemitter3';
import type * as net from 'node:net';
import { BlockError } from '../block/errors.js';
import { NbdConnection } from './connection.js';
import { NbdExport, type NbdExportOptions } from './export.js';
import { negotiate, NegotiationError, type NbdTlsOptions } from './handshake.js';
import { ConnectionClosed } from './reader.js';
import { NbdSession } from './transmission.js';

/** How long close() lets negotiating clients send one more option (answered ERR_SHUTDOWN). */
const SHUTDOWN_GRACE_MS = 1000;

export interface NbdServerOptions {
  exports: NbdExportOptions[];
  /** Connections served at once (qemu-nbd -e); 0 = unlimited. Default 100. */
  maxClients?: number;
  /** Connections held waiting for a slot beyond maxClients. Default 16. */
  maxQueued?: number;
  /** Time allowed from accept to the end of negotiation. Default 10 s (qemu-nbd's cap). */
  handshakeTimeoutMs?: number;
  /** Require TLS (FORCEDTLS): every option but STARTTLS and ABORT is refused before it. */
  tls?: NbdTlsOptions;
}

export type NbdListenAddress = { host: string; port: number } | { path: string };

export interface NbdClientInfo {
  id: number;
  peer: string;
}

export interface NbdServerEvents {
  connect: (client: NbdClientInfo) => void;
  negotiated: (client: NbdClientInfo & { exportName: string }) => void;
  disconnect: (client: NbdClientInfo & { negotiated: boolean; clients: number }) => void;
  error: (client: NbdClientInfo & { message: string }) => void;
}

export class NbdServer extends EventEmitter<NbdServerEvents> {
  private readonly exportsByName = new Map<string, NbdExport>();
  private readonly maxClients: number;
  private readonly maxQueued: number;
  private readonly handshakeTimeoutMs: number;
  private readonly tls: NbdTlsOptions | null;
  private readonly servers: net.Server[] = [];
  /** Connections being served (handshake or transmission). */
  private readonly active = new Set<NbdConnection>();
  /** Accepted connections waiting for a slot, oldest first. */
  private readonly queued: NbdConnection[] = [];
  private readonly sessions = new Set<NbdSession>();
  private readonly finished = new Set<Promise<void>>();
  private nextId = 1;
  private stopping = false;
  private closing: Promise<void> | null = null;
  /** Clients now in transmission. */
  private transmitting = 0;

  constructor(options: NbdServerOptions) {
    super();
    for (const e of options.exports) this.addExport(e);
    this.maxClients = checkCount(options.maxClients ?? 100, 'maxClients');
    this.maxQueued = checkCount(options.maxQueued ?? 16, 'maxQueued');
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000;
    this.tls = options.tls ?? null;
  }

  /** Add an export; names are unique. */
  addExport(options: NbdExportOptions): void {
    if (this.exportsByName.has(options.name)) {
      throw new BlockError('EEXIST', `export '${options.name}' already exists`, { op: 'nbd_export' });
    }
    this.exportsByName.set(options.name, new NbdExport(options));
  }

  /** Clients now in transmission. */
  get clientCount(): number {
    return this.transmitting;
  }

  /** Listen on TCP (`port` 0 = any free port), a Unix socket or an inherited listening `fd`; resolves with the address. */
  async listen(address: { host?: string; port?: number; path?: string; fd?: number; backlog?: number }): Promise<NbdListenAddress> {
    // Loaded by the first listen: the tools bundle the server, and most of their runs serve
    // nothing. Before the check below, which must see the state the listen starts in.
    const { createServer } = await import('node:net');
    if (this.closing) throw new BlockError('ECANCELED', 'NBD server is closed', { op: 'nbd_listen' });
    const server = createServer({ pauseOnConnect: true }, (s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const backlog = address.backlog ?? 511;
      // fd: a listening socket handed over by socket activation (LISTEN_FDS).
      if (address.fd !== undefined) server.listen({ fd: address.fd }, resolve);
      else if (address.path !== undefined) server.listen({ path: address.path, backlog }, resolve);
      else server.listen({ host: address.host ?? '0.0.0.0', port: address.port ?? 10809, backlog }, resolve);
    });
    // A failure of the listening socket later must not crash the process.
    server.on('error', () => undefined);
    this.servers.push(server);
    const a = server.address();
    if (a === null || typeof a === 'string') return { path: a ?? address.path ?? '' };
    return { host: a.address, port: a.port };
  }

  /**
   * Stop: no new connections; clients still negotiating get ERR_SHUTDOWN for their next
   * option (or are closed); clients in transmission finish their in-flight requests (new
   * ones get ESHUTDOWN) and are closed; then every export's backend is flushed.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.stopping = true;
    // net.Server.close calls back only once every accepted connection is gone: start it now,
    // wait for it after the clients were wound down.
    const listenersClosed = Promise.all(this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    for (const c of this.queued.splice(0)) c.destroy();
    for (const s of this.sessions) s.stop();
    // Negotiating clients idle between options get no reply at all: close them after a
    // grace so one that is mid-option still receives its ERR_SHUTDOWN.
    const grace = setTimeout(() => {
      for (const c of this.active) if (!this.isInSession(c)) c.destroy();
    }, SHUTDOWN_GRACE_MS);
    grace.unref();
    await Promise.all([...this.finished]);
    clearTimeout(grace);
    await listenersClosed;
    for (const exp of this.exportsByName.values()) {
      if (!exp.readOnly) await exp.backend.flush().catch(() => undefined);
    }
  }

  private readonly inSession = new WeakSet<NbdConnection>();

  private isInSession(c: NbdConnection): boolean {
    return this.inSession.has(c);
  }

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const conn = new NbdConnection(this.nextId++, socket);
    if (this.maxClients !== 0 && this.active.size >= this.maxClients) {
      // No slot: hold the connection without a greeting, as the listen backlog would.
      if (this.queued.length >= this.maxQueued) {
        conn.destroy();
        return;
      }
      this.queued.push(conn);
      void conn.whenClosed().then(() => {
        const i = this.queued.indexOf(conn);
        if (i >= 0) this.queued.splice(i, 1);
      });
      return;
    }
    this.serve(conn);
  }

  private serve(conn: NbdConnection): void {
    this.active.add(conn);
    const done = this.runClient(conn).finally(() => {
      this.active.delete(conn);
      this.finished.delete(done);
      this.admitQueued();
    });
    this.finished.add(done);
  }

  private admitQueued(): void {
    while (!this.stopping && this.queued.length > 0 && (this.maxClients === 0 || this.active.size < this.maxClients)) {
      const next = this.queued.shift();
      if (next !== undefined && !next.isClosed) this.serve(next);
    }
  }

  /** One client from accept to close. Never rejects. */
  private async runClient(conn: NbdConnection): Promise<void> {
    const info = { id: conn.id, peer: conn.peer };
    this.emit('connect', info);
    conn.socket.resume();
    const timer = setTimeout(() => {
      this.emit('error', { ...info, message: 'option negotiation failed: Negotiation timed out' });
      conn.destroy();
    }, this.handshakeTimeoutMs);
    timer.unref();
    let negotiated = null;
    let failed = false;
    try {
      negotiated = await negotiate(conn, {
        findExport: (name) => this.exportsByName.get(name),
        exports: () => this.exportsByName.values(),
        tls: this.tls,
        stopping: () => this.stopping,
      });
    } catch (e) {
      failed = true;
      if (!conn.isClosed || e instanceof NegotiationError) {
        const reason = e instanceof ConnectionClosed ? `Failed to read opts magic: ${e.message}` : errorText(e);
        this.emit('error', { ...info, message: `option negotiation failed: ${reason}` });
      }
    } finally {
      clearTimeout(timer);
    }
    if (negotiated === null) {
      // After ABORT the ACK must reach the client: end, not destroy.
      if (failed) conn.destroy();
      else conn.end();
      await conn.whenClosed();
      this.emit('disconnect', { ...info, negotiated: false, clients: this.transmitting });
      return;
    }
    const exp = negotiated.export;
    exp.clients++;
    this.transmitting++;
    this.emit('negotiated', { ...info, exportName: exp.name });
    const session = new NbdSession(conn, negotiated, { stopping: () => this.stopping });
    this.sessions.add(session);
    this.inSession.add(conn);
    if (this.stopping) session.stop();
    const reason = await session.run();
    this.sessions.delete(session);
    exp.clients--;
    this.transmitting--;
    if (reason !== null) this.emit('error', { ...info, message: `Disconnect client, due to: ${reason}` });
    await conn.whenClosed();
    this.emit('disconnect', { ...info, negotiated: true, clients: this.transmitting });
  }
}

function checkCount(n: number, what: string): number {
  if (!Number.isSafeInteger(n) || n < 0) throw new BlockError('EINVAL', `Invalid ${what} ${n}`, { op: 'nbd_server' });
  return n;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
