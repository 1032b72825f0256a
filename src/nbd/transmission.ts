/**
 * The transmission phase of one client: read a request, validate it in qemu-nbd 7.2's order,
 * run it against the export's backend, reply. Up to MAX_REQUESTS run at once; their replies
 * go out in completion order (each chunk written whole, see NbdConnection.send).
 *
 * Memory is bounded by the client's in-flight allowance: no request header is read while
 * MAX_REQUESTS are running, and no WRITE payload is read nor READ started while
 * BYTE_BUDGET bytes of payload and read buffers are held (the socket is paused meanwhile,
 * so the kernel pushes back on the client). A READ's bytes stay held until its reply has
 * left our socket buffer: a client that never reads its replies cannot make us hold more.
 *
 * A READ the export can answer without waiting (a raw image on a host file, its bytes in the
 * page cache) is answered right here, in the turn that decoded it (read-now.ts); it counts
 * in flight only while its reply is queued on the socket. Everything else, and every error,
 * takes the generic path through the backend (handle).
 *
 * Validation order (qemu's nbd_co_receive_request): DISC first (no reply); length > 32 MiB
 * for READ/WRITE/CACHE; the WRITE payload is read (keeps the stream in step); read-only;
 * bounds, in 64-bit; allowed flags; then per command. Every validation failure is EINVAL
 * with qemu's message and the connection stays, except a bad magic and an oversized WRITE
 * (its payload was not read), which are answered and then closed.
 */
import { isBlockError } from '../block/errors.js';
import type { NbdConnection } from './connection.js';
import type { Negotiated } from './handshake.js';
import type { NbdExport } from './export.js';
import * as p from './protocol.js';
import { readNow } from './read-now.js';
import { ConnectionClosed } from './reader.js';
import { collectExtents, sparseRead } from './status.js';

/** Requests in flight per client (qemu's MAX_NBD_REQUESTS). */
export const MAX_REQUESTS = 16;
/** WRITE payload and READ buffer bytes held per client before the socket stops being read. */
export const BYTE_BUDGET = 64 * 1024 * 1024;

/** What a request does to the stream when it fails validation. */
type Verdict = { ok: true } | { ok: false; message: string; fatal?: string };

export interface SessionHooks {
  /** True once the server is stopping: new requests get ESHUTDOWN. */
  stopping(): boolean;
}

export class NbdSession {
  private readonly exp: NbdExport;
  private readonly sr: boolean;
  private inFlight = 0;
  private heldBytes = 0;
  private waiters: (() => void)[] = [];
  private size = 0;
  private backendLength = 0;
  private ending = false;

  constructor(
    private readonly conn: NbdConnection,
    private readonly negotiated: Negotiated,
    private readonly hooks: SessionHooks,
  ) {
    this.exp = negotiated.export;
    this.sr = negotiated.structuredReply;
  }

  /**
   * Serve until the client disconnects. Resolves with qemu's reason for a forced disconnect
   * ("Disconnect client, due to: <reason>"), or null for an orderly end (DISC, EOF between
   * requests, server stop). Never rejects.
   */
  async run(): Promise<string | null> {
    let reason: string | null;
    try {
      this.size = await this.exp.size();
      this.backendLength = await this.exp.backend.getLength();
      reason = await this.loop();
    } catch (e) {
      reason = e instanceof Error ? e.message : String(e);
    }
    // In-flight requests finish and reply before the socket closes (DISC, stop, errors).
    while (this.inFlight > 0) await this.changed();
    if (reason === null) this.conn.end();
    else this.conn.destroy();
    return reason;
  }

  /** Server stop: finish what runs, answer ESHUTDOWN to anything new, then close. */
  stop(): void {
    this.ending = true;
    if (this.inFlight === 0) this.conn.end();
  }

  private async loop(): Promise<string | null> {
    for (;;) {
      while (this.inFlight >= MAX_REQUESTS) await this.changed();
      let header: Buffer;
      try {
        header = await this.conn.reader.read(p.NBD_REQUEST_SIZE);
      } catch (e) {
        if (!(e instanceof ConnectionClosed)) throw e;
        // EOF exactly between requests is an orderly end; inside one it is not.
        return this.conn.reader.pending === 0 || this.ending ? null : e.message;
      }
      const req = p.decodeRequest(header);
      if (!req.magicOk) {
        const msg = `invalid magic (got 0x${req.magic.toString(16)})`;
        await this.replyError(req, p.NBD_EINVAL, msg);
        return msg;
      }
      if (req.type === p.NBD_CMD_DISC) return null;

      const verdict = this.checkLength(req);
      const cost = verdict.ok && (req.type === p.NBD_CMD_WRITE || req.type === p.NBD_CMD_READ) ? req.length : 0;
      // Reserved before the payload is read or the read buffer allocated; the first request
      // always fits, so one of up to 32 MiB cannot wait forever.
      while (this.heldBytes > 0 && this.heldBytes + cost > BYTE_BUDGET) await this.changed();
      let data: Buffer | null = null;
      if (req.type === p.NBD_CMD_WRITE && verdict.ok) data = await this.conn.reader.read(req.length);
      const checked = verdict.ok ? this.checkRequest(req) : verdict;
      if (!checked.ok) {
        await this.replyError(req, p.NBD_EINVAL, checked.message);
        if (checked.fatal !== undefined) return checked.fatal;
        continue;
      }
      if (this.hooks.stopping() || this.ending) {
        await this.replyError(req, p.NBD_ESHUTDOWN, 'server shutting down');
        continue;
      }
      if (req.type === p.NBD_CMD_READ) {
        // A reply sent from the file needs an empty queue (read-now.ts): worth the wait.
        const queue = this.conn.direct ? this.conn.whenWritten() : null;
        if (queue !== null) await queue;
        // Served now when the export can (read-now.ts); a reply still queued on the socket
        // holds its place in flight until written.
        const sent = readNow(this.conn, this.exp, req, this.sr, this.backendLength);
        if (sent !== false) {
          if (sent !== true) this.hold(sent, cost);
          continue;
        }
      }
      this.start(req, data, cost);
    }
  }

  private checkLength(req: p.NbdRequest): Verdict {
    const big = req.type === p.NBD_CMD_READ || req.type === p.NBD_CMD_WRITE || req.type === p.NBD_CMD_CACHE;
    if (big && req.length > p.NBD_MAX_BUFFER_SIZE) {
      const message = `len (${req.length} ) is larger than max len (${p.NBD_MAX_BUFFER_SIZE})`;
      // An unread WRITE payload leaves the stream out of step: answer, then close.
      return req.type === p.NBD_CMD_WRITE
        ? { ok: false, message, fatal: 'Request handling failed in intermediate state' }
        : { ok: false, message };
    }
    return { ok: true };
  }

  private checkRequest(req: p.NbdRequest): Verdict {
    const writes = req.type === p.NBD_CMD_WRITE || req.type === p.NBD_CMD_TRIM || req.type === p.NBD_CMD_WRITE_ZEROES;
    if (writes && this.exp.readOnly) return { ok: false, message: 'Export is read-only' };
    const size = BigInt(this.size);
    if (req.offset > size || BigInt(req.length) > size - req.offset) {
      return { ok: false, message: `operation past EOF; From: ${req.offset}, Len: ${req.length}, Size: ${this.size}` };
    }
    let valid = p.NBD_CMD_FLAG_FUA;
    if (req.type === p.NBD_CMD_READ && this.sr) valid |= p.NBD_CMD_FLAG_DF;
    if (req.type === p.NBD_CMD_WRITE_ZEROES) valid |= p.NBD_CMD_FLAG_NO_HOLE | p.NBD_CMD_FLAG_FAST_ZERO;
    if (req.type === p.NBD_CMD_BLOCK_STATUS) valid |= p.NBD_CMD_FLAG_REQ_ONE;
    if ((req.flags & ~valid) !== 0) {
      return { ok: false, message: `unsupported flags for command ${p.nbdCmdName(req.type)} (got 0x${req.flags.toString(16)})` };
    }
    return { ok: true };
  }

  /** Run a validated request in the background; it counts as in flight until it replied. */
  private start(req: p.NbdRequest, data: Buffer | null, held: number): void {
    this.hold(
      this.handle(req, Number(req.offset), data).catch(() => undefined),
      held,
    );
  }

  /** Count `work` (which never rejects) in flight, holding `held` bytes, until it settles. */
  private hold(work: Promise<void>, held: number): void {
    this.inFlight++;
    this.heldBytes += held;
    void work.finally(() => {
      this.inFlight--;
      this.heldBytes -= held;
      this.wake();
      if (this.ending && this.inFlight === 0) this.conn.end();
    });
  }

  private async handle(req: p.NbdRequest, offset: number, data: Buffer | null): Promise<void> {
    const b = this.exp.backend;
    const fua = (req.flags & p.NBD_CMD_FLAG_FUA) !== 0;
    switch (req.type) {
      case p.NBD_CMD_READ:
        return this.read(req, offset, fua);
      case p.NBD_CMD_WRITE:
        return this.generic(req, 'writing to file failed', () => b.pwrite(offset, data ?? new Uint8Array(0), { fua }));
      case p.NBD_CMD_WRITE_ZEROES:
        return this.generic(req, 'writing to file failed', () =>
          b.writeZeroes(offset, req.length, {
            fua,
            mayUnmap: (req.flags & p.NBD_CMD_FLAG_NO_HOLE) === 0,
            noFallback: (req.flags & p.NBD_CMD_FLAG_FAST_ZERO) !== 0,
          }),
        );
      case p.NBD_CMD_FLUSH:
        // Offset and length are ignored, as qemu does.
        return this.generic(req, 'flush failed', () => b.flush());
      case p.NBD_CMD_TRIM:
        return this.generic(req, 'discard failed', async () => {
          await b.discard(offset, req.length);
          // FUA on a trim: the discard is durable before the reply.
          if (fua) await b.flush();
        });
      case p.NBD_CMD_CACHE:
        return this.generic(req, 'caching data failed', () => this.prefetch(offset, req.length));
      case p.NBD_CMD_BLOCK_STATUS:
        return this.blockStatus(req, offset);
      default:
        return this.replyError(req, p.NBD_EINVAL, `invalid request type (${req.type}) received`);
    }
  }

  /** Commands whose success is a bare reply (simple, as qemu sends even with SR). */
  private async generic(req: p.NbdRequest, failure: string, op: () => Promise<void>): Promise<void> {
    try {
      await op();
    } catch (e) {
      return this.replyError(req, this.errno(e), failure);
    }
    await this.conn.send(p.encodeSimpleReply(req.cookie, 0));
  }

  private async read(req: p.NbdRequest, offset: number, fua: boolean): Promise<void> {
    if (fua) {
      // FUA on a read: flush first, so the data read is what is durable.
      try {
        await this.exp.backend.flush();
      } catch (e) {
        return this.replyError(req, this.errno(e), 'flush failed');
      }
    }
    if (this.sr && (req.flags & p.NBD_CMD_FLAG_DF) === 0 && req.length > 0) {
      return sparseRead(this.conn, this.exp.backend, req.cookie, offset, req.length, this.backendLength, (e) => this.errno(e));
    }
    // Header and data in one frame: the data is read in place behind the header.
    const frame = this.conn.frames.get(req.length);
    const head = p.encodeReadReplyHeaderInto(frame, req.cookie, this.sr, offset, req.length, true);
    try {
      await this.readClipped(offset, frame.subarray(head, head + req.length));
    } catch (e) {
      this.conn.frames.put(frame);
      return this.replyError(req, this.errno(e), 'reading from file failed');
    }
    return this.conn.sendFrame(frame, head + req.length);
  }

  /** Read what the backend holds; the sector tail past its length reads as zeros. */
  private async readClipped(offset: number, buf: Uint8Array): Promise<void> {
    const n = Math.max(0, Math.min(buf.length, this.backendLength - offset));
    if (n > 0) await this.exp.backend.pread(offset, buf.subarray(0, n));
    // Pooled buffers hold old bytes.
    buf.fill(0, n);
  }

  /** CACHE: read the range through, 1 MiB at a time (nothing is kept). */
  private async prefetch(offset: number, bytes: number): Promise<void> {
    const piece = Buffer.allocUnsafe(Math.min(bytes, 1024 * 1024));
    for (let pos = 0; pos < bytes; pos += piece.length) {
      await this.readClipped(offset + pos, piece.subarray(0, Math.min(piece.length, bytes - pos)));
    }
  }

  private async blockStatus(req: p.NbdRequest, offset: number): Promise<void> {
    if (req.length === 0) return this.replyError(req, p.NBD_EINVAL, 'need non-zero length');
    const contexts = this.negotiated.contexts;
    if (contexts.length === 0) return this.replyError(req, p.NBD_EINVAL, 'CMD_BLOCK_STATUS not negotiated');
    const one = (req.flags & p.NBD_CMD_FLAG_REQ_ONE) !== 0;
    for (let i = 0; i < contexts.length; i++) {
      const last = i === contexts.length - 1;
      let extents: p.BlockStatusExtent[];
      try {
        extents = await collectExtents(this.exp.backend, contexts[i], offset, req.length, this.backendLength, one);
      } catch (e) {
        return this.replyError(req, this.errno(e), "can't get block status");
      }
      const c = p.encodeBlockStatusChunk(req.cookie, contexts[i].id, extents, last);
      await this.conn.send(c.header, ...c.payload);
    }
  }

  /** A failure: an ERROR chunk with qemu's message under SR, else a simple reply. */
  private async replyError(req: { cookie: bigint }, errno: number, message: string): Promise<void> {
    if (!this.sr) return this.conn.send(p.encodeSimpleReply(req.cookie, errno));
    const c = p.encodeErrorChunk(req.cookie, errno, message);
    return this.conn.send(c.header, ...c.payload);
  }

  private errno(e: unknown): number {
    return isBlockError(e) ? p.nbdErrnoFromError(e, this.hooks.stopping()) : p.NBD_EIO;
  }

  /** Resolves at the next change of inFlight / heldBytes. */
  private changed(): Promise<void> {
    return new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}
