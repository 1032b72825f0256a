// The http driver against a small real HTTP server in this process that misbehaves in ways
// nginx will not: Accept-Ranges announced but ranges ignored, wrong Content-Range, bodies
// longer than asked, a body cut short. Also what readahead saves: requests counted.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockBackend, BlockError } from '../../src/index.js';
import { HTTP_NUM_STATES } from '../../src/drivers/http/index.js';

const SIZE = 1 << 20;
const file = new Uint8Array(SIZE);
for (let i = 0; i < SIZE; i++) file[i] = (i * 7 + (i >> 9)) & 0xff;

type Mode = 'good' | 'ignore-range' | 'wrong-range' | 'too-long' | 'short' | 'no-length';
let mode: Mode = 'good';
let gets = 0;
let inFlight = 0;
let maxInFlight = 0;
/** GETs held back until released (to see how many run at once). */
let hold: (() => void)[] | null = null;

function serve(req: IncomingMessage, res: ServerResponse): void {
  const headers: Record<string, string | number> = { 'Accept-Ranges': 'bytes', 'Content-Length': SIZE };
  if (mode === 'no-length') delete headers['Content-Length'];
  if (req.method === 'HEAD') {
    res.writeHead(200, headers);
    res.end();
    return;
  }
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  gets++;
  inFlight++;
  maxInFlight = Math.max(maxInFlight, inFlight);
  const answer = (): void => {
    inFlight--;
    if (m === null || mode === 'ignore-range') {
      res.writeHead(200, { 'Content-Length': SIZE });
      res.end(file);
      return;
    }
    const start = Number(m[1]);
    const end = Number(m[2]);
    const body = file.subarray(start, end + 1);
    if (mode === 'wrong-range') {
      res.writeHead(206, { 'Content-Range': `bytes ${start + 1}-${end + 1}/${SIZE}`, 'Content-Length': body.length });
      res.end(file.subarray(start + 1, end + 2));
    } else if (mode === 'too-long') {
      res.writeHead(206, { 'Content-Range': `bytes ${start}-${end}/${SIZE}` });
      res.end(file.subarray(start, end + 1000));
    } else if (mode === 'short') {
      res.writeHead(206, { 'Content-Range': `bytes ${start}-${end}/${SIZE}` });
      res.end(body.subarray(0, body.length - 1));
    } else {
      res.writeHead(206, { 'Content-Range': `bytes ${start}-${end}/${SIZE}`, 'Content-Length': body.length });
      res.end(body);
    }
  };
  if (hold) hold.push(answer);
  else answer();
}

describe('http driver against a misbehaving server', () => {
  let server: Server;
  let url = '';

  beforeAll(async () => {
    server = createServer(serve);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const addr = server.address();
    if (addr === null || typeof addr === 'string') throw new Error('no port');
    url = `http://127.0.0.1:${addr.port}/disk.raw`;
  });

  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  async function open(driverOptions: Record<string, string> = {}): Promise<BlockBackend> {
    mode = 'good';
    return BlockBackend.open(url, { format: 'raw', readOnly: true, driverOptions });
  }

  async function readError(blk: BlockBackend, offset: number, len: number): Promise<BlockError> {
    const e: unknown = await blk.pread(offset, new Uint8Array(len)).then(
      () => null,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(BlockError);
    return e as BlockError;
  }

  it('readahead serves the next reads from the first request', async () => {
    const blk = await open({ readahead: '64k' });
    gets = 0;
    const buf = new Uint8Array(4096);
    for (let off = 0; off < 64 * 1024; off += 4096) {
      await blk.pread(off, buf);
      expect(buf).toEqual(file.subarray(off, off + 4096));
    }
    // 4 KiB asked + 64 KiB readahead: one request covers the first 68 KiB.
    expect(gets).toBe(1);
    await blk.pread(68 * 1024, buf);
    expect(gets).toBe(2);
    await blk.close();

    const none = await open({ readahead: '0' });
    gets = 0;
    for (let off = 0; off < 16 * 1024; off += 4096) await none.pread(off, buf);
    expect(gets).toBe(4);
    await none.close();
  });

  it(`runs at most ${HTTP_NUM_STATES} requests at once`, async () => {
    const blk = await open({ readahead: '0' });
    hold = [];
    maxInFlight = 0;
    const reads = Array.from({ length: 3 * HTTP_NUM_STATES }, (_, i) => blk.pread(i * 8192, new Uint8Array(4096)));
    try {
      while (hold.length < HTTP_NUM_STATES) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 50));
      expect(hold.length).toBe(HTTP_NUM_STATES);
    } finally {
      // Release as they come until all reads are done.
      const pump = setInterval(() => hold?.splice(0).forEach((f) => f()), 5);
      await Promise.all(reads);
      clearInterval(pump);
      hold = null;
    }
    expect(maxInFlight).toBe(HTTP_NUM_STATES);
    await blk.close();
  });

  it('a server that ignores Range on GET fails the read, not memory', async () => {
    const blk = await open({ readahead: '0' });
    mode = 'ignore-range';
    const e = await readError(blk, 0, 512);
    expect(e.code).toBe('EIO');
    await blk.close();
  });

  it('a wrong Content-Range, a longer or a shorter body fail the read', async () => {
    const blk = await open({ readahead: '0' });
    mode = 'wrong-range';
    expect((await readError(blk, 4096, 512)).message).toBe('Server sent bytes 4097-4608 (512 bytes) for bytes 4096-4607');
    mode = 'too-long';
    expect((await readError(blk, 8192, 512)).message).toBe('Server sent more than the 512 bytes asked for');
    mode = 'short';
    expect((await readError(blk, 16384, 512)).message).toBe('Server sent bytes 16384-16895 (511 bytes) for bytes 16384-16895');
    // A failed request leaves nothing behind: the same range reads fine once the server does.
    mode = 'good';
    const buf = new Uint8Array(512);
    await blk.pread(4096, buf);
    expect(buf).toEqual(file.subarray(4096, 4608));
    await blk.close();
  });

  it('a server that does not report the size cannot be opened', async () => {
    mode = 'no-length';
    const e: unknown = await BlockBackend.open(url, { format: 'raw', readOnly: true }).then(
      () => null,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(BlockError);
    expect((e as BlockError).message).toBe("CURL: Error opening file: Server didn't report file size.");
  });
});
