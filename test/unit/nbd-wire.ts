// A raw NBD client over node:net for server tests: it speaks the protocol byte by byte with
// the shared codecs, so tests can also misbehave on purpose (bad magic, half requests, ...).
import * as net from 'node:net';
import * as p from '../../src/nbd/protocol.js';
import { ConnectionClosed, SocketReader } from '../../src/nbd/reader.js';

/** Listen on the unix socket `path` for one connection: its server side (the listener closes). */
export function acceptOnce(path: string): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve) => {
    const server = net.createServer((s) => {
      server.close();
      resolve(s);
    });
    server.listen(path);
  });
}

export interface OptionAnswer {
  type: number;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export type Reply = { kind: 'simple'; error: number; cookie: bigint; data: Buffer } | { kind: 'structured'; chunks: Chunk[] };

export class WireClient {
  readonly reader: SocketReader;
  private cookie = 1n;

  private constructor(readonly socket: net.Socket) {
    this.reader = new SocketReader(socket);
    socket.on('error', () => undefined);
  }

  static connect(addr: { host: string; port: number } | { path: string }): Promise<WireClient> {
    return new Promise((resolve, reject) => {
      const s = 'path' in addr ? net.connect(addr.path) : net.connect(addr.port, addr.host);
      s.once('connect', () => resolve(new WireClient(s)));
      s.once('error', reject);
    });
  }

  write(...bufs: Uint8Array[]): void {
    for (const b of bufs) this.socket.write(b);
  }

  /** Greeting read, client flags sent. */
  async start(clientFlags = p.NBD_FLAG_C_FIXED_NEWSTYLE | p.NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const g = p.decodeGreeting(await this.reader.read(p.NBD_GREETING_SIZE));
    this.write(p.encodeClientFlags(clientFlags));
    return g.flags;
  }

  option(option: number, data: Uint8Array = new Uint8Array(0)): void {
    this.write(p.encodeOption(option, data));
  }

  async optionReply(): Promise<OptionAnswer> {
    const h = p.decodeOptionReplyHeader(await this.reader.read(p.NBD_OPTION_REPLY_HEADER_SIZE));
    return { type: h.type, data: await this.reader.read(h.length) };
  }

  /** Every reply to one option, up to ACK or an error. */
  async optionReplies(): Promise<OptionAnswer[]> {
    const out: OptionAnswer[] = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type === p.NBD_REP_ACK || p.isReplyError(r.type)) return out;
    }
  }

  /** SR (optional), SET_META_CONTEXT (optional), GO: returns size and flags. */
  async go(name = '', opts: { sr?: boolean; contexts?: string[] } = {}): Promise<{ size: bigint; flags: number }> {
    if (opts.sr ?? true) {
      this.option(p.NBD_OPT_STRUCTURED_REPLY);
      await this.optionReplies();
    }
    if (opts.contexts !== undefined) {
      this.option(p.NBD_OPT_SET_META_CONTEXT, p.encodeMetaContextRequest({ exportName: name, queries: opts.contexts }));
      await this.optionReplies();
    }
    this.option(p.NBD_OPT_GO, p.encodeInfoRequest({ name, infos: [] }));
    let result: { size: bigint; flags: number } | null = null;
    for (const r of await this.optionReplies()) {
      if (p.isReplyError(r.type)) throw new Error(`GO failed: ${r.data.toString()}`);
      if (r.type !== p.NBD_REP_INFO) continue;
      const info = p.decodeInfoReply(r.data);
      if (info.type === p.NBD_INFO_EXPORT && 'size' in info) result = { size: info.size, flags: info.flags };
    }
    if (result === null) throw new Error('GO without INFO_EXPORT');
    return result;
  }

  request(type: number, offset: number | bigint, length: number, opts: { flags?: number; data?: Uint8Array; cookie?: bigint } = {}): bigint {
    const cookie = opts.cookie ?? this.cookie++;
    this.write(p.encodeRequest({ type, flags: opts.flags, cookie, offset, length }));
    if (opts.data) this.write(opts.data);
    return cookie;
  }

  /** One reply: a simple one (with `readLength` data bytes on success), or chunks to DONE. */
  async reply(readLength = 0): Promise<Reply> {
    const head = await this.reader.read(4);
    if (p.replyKind(head) === 'simple') {
      const rest = await this.reader.read(p.NBD_SIMPLE_REPLY_SIZE - 4);
      const r = p.decodeSimpleReply(Buffer.concat([head, rest]));
      const data = r.error === 0 && readLength > 0 ? await this.reader.read(readLength) : Buffer.alloc(0);
      return { kind: 'simple', error: r.error, cookie: r.cookie, data };
    }
    const chunks: Chunk[] = [];
    let h = p.decodeChunkHeader(Buffer.concat([head, await this.reader.read(p.NBD_CHUNK_HEADER_SIZE - 4)]));
    for (;;) {
      chunks.push({ flags: h.flags, type: h.type, cookie: h.cookie, payload: await this.reader.read(h.length) });
      if ((h.flags & p.NBD_REPLY_FLAG_DONE) !== 0) return { kind: 'structured', chunks };
      h = p.decodeChunkHeader(await this.reader.read(p.NBD_CHUNK_HEADER_SIZE));
    }
  }

  /** The error of a structured error reply (errno and message), or of a simple one. */
  async error(): Promise<{ errno: number; message: string }> {
    const r = await this.reply();
    if (r.kind === 'simple') return { errno: r.error, message: '' };
    const c = r.chunks[r.chunks.length - 1];
    if (!p.isChunkError(c.type)) return { errno: 0, message: '' };
    const e = p.decodeErrorChunk(c.type, c.payload);
    return { errno: e.errno, message: e.message };
  }

  /** Resolves true when the server closed the connection (reading hits EOF). */
  async closedByServer(timeoutMs = 3000): Promise<boolean> {
    const timer = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref());
    const eof = (async (): Promise<boolean> => {
      try {
        for (;;) await this.reader.read(1);
      } catch (e) {
        return e instanceof ConnectionClosed;
      }
    })();
    return Promise.race([eof, timer]);
  }

  /** Structured READ data reassembled from OFFSET_DATA / OFFSET_HOLE chunks. */
  static assemble(chunks: Chunk[], offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    for (const c of chunks) {
      if (c.type === p.NBD_REPLY_TYPE_OFFSET_DATA) {
        const d = p.decodeOffsetData(c.payload);
        Buffer.from(d.data).copy(out, Number(d.offset) - offset);
      } else if (c.type === p.NBD_REPLY_TYPE_OFFSET_HOLE) {
        const h = p.decodeOffsetHole(c.payload);
        out.fill(0, Number(h.offset) - offset, Number(h.offset) - offset + h.size);
      }
    }
    return out;
  }

  close(): void {
    this.reader.close();
    this.socket.destroy();
  }
}
