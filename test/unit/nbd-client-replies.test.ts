// The client's reply parser (src/drivers/nbd/replies.ts) on byte streams cut every which way,
// and the reads it hands a request's own memory for.
import { describe, expect, it } from 'vitest';
import { IOVector } from '../../src/block/iovec.js';
import { ReplyParser, type Pending, type ReplyHandler } from '../../src/drivers/nbd/replies.js';
import * as p from '../../src/nbd/protocol.js';

const CONTEXT = 7;

function pending(cmd: number, offset: number, length: number, into?: IOVector): Pending {
  return { cmd, offset, length, into, covered: 0, extent: null, error: null, resolve: () => undefined, reject: () => undefined };
}

/** A parser over a table of requests; `done` lists the cookies completed, in order. */
function setup(reqs: Map<bigint, Pending>, structured = true): { parser: ReplyParser; done: bigint[] } {
  const done: bigint[] = [];
  const handler: ReplyHandler = {
    take: (cookie) => {
      const r = reqs.get(cookie);
      if (r === undefined) throw new Error(`unexpected cookie ${cookie}`);
      return r;
    },
    finish: (cookie) => {
      reqs.delete(cookie);
      done.push(cookie);
    },
    largeReadsOnly: () => [...reqs.values()].every((r) => r.cmd === p.NBD_CMD_READ && r.length >= 64 * 1024) && reqs.size > 0,
  };
  return { parser: new ReplyParser(handler, structured, CONTEXT), done };
}

function pattern(n: number, seed: number): Uint8Array {
  return new Uint8Array(n).map((_, i) => (i * 13 + seed) & 0xff);
}

/** Three requests' replies back to back: data + hole (two iov pieces), block status, a write's error. */
function stream(): { bytes: Uint8Array; reqs: () => Map<bigint, Pending>; data: Uint8Array } {
  const data = pattern(3000, 1);
  const bytes = Buffer.concat([
    p.chunkBytes(p.encodeOffsetDataChunk(1n, 1000, data.subarray(0, 2000), false)),
    p.chunkBytes(p.encodeBlockStatusChunk(2n, CONTEXT, [{ length: 4096, flags: p.NBD_STATE_HOLE }], true)),
    p.chunkBytes(p.encodeOffsetHoleChunk(1n, 3000, 500, false)),
    p.chunkBytes(p.encodeOffsetDataChunk(1n, 3500, data.subarray(2500), true)),
    p.chunkBytes(p.encodeErrorChunk(3n, p.NBD_ENOSPC, 'full')),
  ]);
  const reqs = (): Map<bigint, Pending> =>
    new Map([
      [1n, pending(p.NBD_CMD_READ, 1000, 3000, new IOVector([new Uint8Array(1234), new Uint8Array(1766).fill(0xee)]))],
      [2n, pending(p.NBD_CMD_BLOCK_STATUS, 0, 4096)],
      [3n, pending(p.NBD_CMD_WRITE, 0, 512)],
    ]);
  return { bytes, reqs, data };
}

function expectOutcome(reqs: Map<bigint, Pending>, data: Uint8Array): void {
  const read = reqs.get(1n) as Pending;
  const want = Uint8Array.from(data);
  want.fill(0, 2000, 2500);
  expect(Buffer.from((read.into as IOVector).toBuffer()).equals(Buffer.from(want))).toBe(true);
  expect(read.covered).toBe(3000);
  expect(reqs.get(2n)?.extent).toEqual({ length: 4096, flags: p.NBD_STATE_HOLE });
  expect(reqs.get(3n)?.error?.errno).toBe(28);
}

describe('ReplyParser', () => {
  it('gives the same outcome however the stream is cut', () => {
    const { bytes, reqs, data } = stream();
    for (const piece of [1, 2, 3, 7, 19, 20, 28, 64, 500, bytes.length]) {
      const table = reqs();
      const kept = new Map(table);
      const { parser, done } = setup(table);
      for (let at = 0; at < bytes.length; at += piece) parser.feed(bytes.subarray(at, at + piece));
      expect(done).toEqual([2n, 1n, 3n]);
      expectOutcome(kept, data);
    }
  });

  it('hands a large payload its own memory for the next read, and staging for the rest', () => {
    const big = pattern(300 * 1024, 3);
    const into = new IOVector([new Uint8Array(100 * 1024), new Uint8Array(200 * 1024)]);
    // A write in flight too: its reply may come in the same read(2) as the READ's tail.
    const table = new Map([
      [5n, pending(p.NBD_CMD_READ, 0, big.length, into)],
      [6n, pending(p.NBD_CMD_WRITE, 0, 512)],
    ]);
    const { parser, done } = setup(table, false);
    const staging = new Uint8Array(256 * 1024);
    const wire = Buffer.concat([p.encodeSimpleReply(5n), big]);
    // The header and a little data arrive through staging.
    let sent = 16 + 1000;
    staging.set(wire.subarray(0, sent));
    expect(parser.nextBuffer(staging)).toBe(staging);
    parser.received(Buffer.from(staging.buffer, 0, staging.length), sent);
    // Then reads into the request's memory: the rest of the first piece, then the second,
    // while at least 64 KiB of data is to come; the tail goes through staging again.
    const seen: number[] = [];
    for (let buf = parser.nextBuffer(staging); buf !== staging; buf = parser.nextBuffer(staging)) {
      seen.push(buf.length);
      const n = Math.min(buf.length, 150000);
      buf.set(wire.subarray(sent, sent + n));
      sent += n;
      parser.received(buf, n);
    }
    expect(seen).toEqual([100 * 1024 - 1000, 200 * 1024]);
    expect(done).toEqual([]);
    staging.set(wire.subarray(sent));
    parser.received(Buffer.from(staging.buffer, 0, staging.length), wire.length - sent);
    expect(done).toEqual([5n]);
    expect(Buffer.from(into.toBuffer()).equals(Buffer.from(big))).toBe(true);
    expect(parser.nextBuffer(staging)).toBe(staging);
    expect(table.has(6n)).toBe(true);
  });

  it('reads a header alone between replies when only large READs are in flight', () => {
    const staging = new Uint8Array(256 * 1024);
    const data = pattern(128 * 1024, 9);
    const into = new IOVector([new Uint8Array(data.length)]);
    const table = new Map([
      [1n, pending(p.NBD_CMD_READ, 4096, data.length, into)],
      [2n, pending(p.NBD_CMD_BLOCK_STATUS, 0, 4096)],
    ]);
    const { parser, done } = setup(table);
    // A block status answer is still to come: one read may bring several replies.
    expect(parser.nextBuffer(staging)).toBe(staging);
    const status = p.chunkBytes(p.encodeBlockStatusChunk(2n, CONTEXT, [{ length: 4096, flags: 0 }], true));
    staging.set(status);
    parser.received(Buffer.from(staging.buffer, 0, staging.length), status.length);
    expect(done).toEqual([2n]);
    // Now the chunk header and offset alone, then the data in place, its tail too.
    const head = parser.nextBuffer(staging);
    expect([head.buffer, head.byteOffset, head.length]).toEqual([staging.buffer, 0, 28]);
    const wire = p.chunkBytes(p.encodeOffsetDataChunk(1n, 4096, data, true));
    head.set(wire.subarray(0, 28));
    parser.received(Buffer.from(head.buffer, head.byteOffset, head.length), 28);
    let sent = 28;
    for (const n of [100 * 1024, 28 * 1024]) {
      const direct = parser.nextBuffer(staging);
      expect([direct.buffer, direct.length]).toEqual([into.iov[0].buffer, wire.length - sent]);
      direct.set(wire.subarray(sent, sent + n));
      parser.received(direct, n);
      sent += n;
    }
    expect(done).toEqual([2n, 1n]);
    expect(Buffer.from(into.toBuffer()).equals(Buffer.from(data))).toBe(true);
  });

  it('after abandon, says whether memory was handed out and parses nothing more', () => {
    const table = new Map([[1n, pending(p.NBD_CMD_READ, 0, 1 << 20, new IOVector([new Uint8Array(1 << 20)]))]]);
    const { parser, done } = setup(table, false);
    parser.feed(p.encodeSimpleReply(1n));
    const staging = new Uint8Array(1024);
    expect(parser.nextBuffer(staging)).not.toBe(staging);
    expect(parser.abandon()).toBe(true);
    expect(parser.nextBuffer(staging)).toBe(staging);
    parser.feed(new Uint8Array(1 << 20));
    expect(done).toEqual([]);
  });

  it('throws on what breaks the protocol', () => {
    const cases: [Uint8Array, Pending, string][] = [
      [p.encodeSimpleReply(1n), pending(p.NBD_CMD_READ, 0, 512), 'Protocol error: simple reply to a read with structured replies negotiated'],
      [p.chunkBytes(p.encodeOffsetDataChunk(1n, 512, new Uint8Array(512), true)), pending(p.NBD_CMD_READ, 0, 512), 'Protocol error: data chunk outside the request'],
      [p.chunkBytes(p.encodeOffsetHoleChunk(1n, 0, 512, true)), pending(p.NBD_CMD_WRITE, 0, 512), 'Protocol error: hole chunk for a write request'],
      [p.chunkBytes(p.encodeBlockStatusChunk(1n, CONTEXT + 1, [{ length: 1, flags: 0 }], true)), pending(p.NBD_CMD_BLOCK_STATUS, 0, 512), `Protocol error: block status for unexpected context ${CONTEXT + 1}`],
      [p.encodeChunkHeader({ flags: 1, type: 0x77, cookie: 1n, length: 0 }), pending(p.NBD_CMD_READ, 0, 512), 'Protocol error: unknown chunk type 119'],
      [new Uint8Array(16).fill(0x41), pending(p.NBD_CMD_READ, 0, 512), 'invalid magic (got 0x41414141)'],
    ];
    for (const [bytes, req, message] of cases) {
      const { parser } = setup(new Map([[1n, req]]));
      expect(() => parser.feed(bytes)).toThrow(message);
    }
  });
});
