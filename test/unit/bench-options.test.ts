// blk-img bench: option parsing, messages, output lines, offsets, and what a run does to the
// image. No timing is asserted anywhere: only the shape of the "Run completed" line.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { IOVector } from '../../src/block/iovec.js';
import { memStoreDelete, memStoreRead } from '../../src/drivers/mem/index.js';
import { BlockDriverState } from '../../src/index.js';
import { BenchRun, benchHeader, completionLine, imgBench, requestOffsets } from '../../src/tools/img/bench.js';
import { defaultBenchOptions, parseBenchArgs, parseCInteger, type BenchOptions } from '../../src/tools/img/bench-options.js';
import { ToolExit, ToolOutput } from '../../src/tools/shared/output.js';

interface Captured {
  status: number;
  stdout: string;
  stderr: string;
  /** Both streams in the order they were written. */
  combined: string;
}

async function bench(...args: string[]): Promise<Captured> {
  let stdout = '';
  let stderr = '';
  let combined = '';
  const status = await imgBench(
    args,
    {
      stdout: (s) => {
        stdout += s;
        combined += s;
      },
      stderr: (s) => {
        stderr += s;
        combined += s;
      },
    },
    'blk-img',
  );
  return { status, stdout, stderr, combined };
}

function parse(...args: string[]): { opts?: BenchOptions; status?: number; stderr: string; stdout: string } {
  let stderr = '';
  let stdout = '';
  const o = new ToolOutput({ stdout: { write: (s: string) => (stdout += s) }, stderr: { write: (s: string) => (stderr += s) } }, 'blk-img');
  try {
    const opts = parseBenchArgs(o, args);
    o.flush();
    return { opts, stderr, stdout };
  } catch (e) {
    o.flush();
    if (e instanceof ToolExit) return { status: e.status, stderr, stdout };
    throw e;
  }
}

const RUN_LINE = /^Run completed in \d+\.\d{3} seconds\.\n$/;
const KIB = 1024;
const stores: string[] = [];

async function memImage(name: string, format: 'raw' | 'qed', size: number): Promise<string> {
  const filename = `mem:${name}`;
  await bdrvCreate(filename, { format, options: { size } });
  stores.push(name);
  return filename;
}

afterEach(() => {
  for (const s of stores.splice(0)) memStoreDelete(s);
  vi.restoreAllMocks();
});

describe('bench option parsing', () => {
  it('has qemu-img bench defaults', () => {
    const { opts } = parse('img');
    expect(opts).toMatchObject({ filename: 'img', count: 75000, depth: 64, bufSize: 4096, step: 0, offset: 0, write: false });
    expect(benchHeader(opts!)).toBe(
      'Sending 75000 read requests, 4096 bytes each, 64 in parallel (starting at offset 0, step size 4096)\n',
    );
  });

  it('reads counts as C integers (hex, octal) and sizes with suffixes', () => {
    expect(parse('-c', '0x10', 'f').opts?.count).toBe(16);
    expect(parse('-c', '010', 'f').opts?.count).toBe(8);
    expect(parse('-d', '0x4', 'f').opts?.depth).toBe(4);
    expect(parse('-s', '1.5k', 'f').opts?.bufSize).toBe(1536);
    expect(parse('-s', '0x100', 'f').opts?.bufSize).toBe(256);
    expect(parse('-o', '1k', 'f').opts?.offset).toBe(1024);
    expect(parse('-S', '64k', 'f').opts?.step).toBe(65536);
    expect(parse('--pattern=0x41', 'f').opts?.pattern).toBe(0x41);
    expect(parse('--patt=5', 'f').opts?.pattern).toBe(5); // getopt_long abbreviation
    expect(parse('-wc3', 'f').opts).toMatchObject({ write: true, count: 3 });
    expect(parse('f', '-c', '4').opts).toMatchObject({ filename: 'f', count: 4 }); // permuted
    expect(parse('-c', '3', '-c', '4', 'f').opts?.count).toBe(4); // the last one wins
  });

  it('parseCInteger follows strtoul base 0', () => {
    expect(parseCInteger('42')).toBe(42);
    expect(parseCInteger('0')).toBe(0);
    expect(parseCInteger('0x1f')).toBe(31);
    expect(parseCInteger('017')).toBe(15);
    expect(parseCInteger('1e3')).toBeNull();
    expect(parseCInteger('10k')).toBeNull();
    expect(parseCInteger('')).toBeNull();
    expect(parseCInteger('08')).toBeNull();
    expect(parseCInteger('-1')).toBeGreaterThan(2 ** 31); // wraps: always out of range
    expect(parseCInteger('-0')).toBe(0);
  });

  it('prints the header with the step defaulting to the buffer size, and the flush line', () => {
    expect(benchHeader(parse('-S', '0', '-s', '1000', 'f').opts!)).toContain('1000 bytes each, 64 in parallel (starting at offset 0, step size 1000)');
    const { opts } = parse('-w', '-c', '3', '-d', '4', '--flush-interval', '4', '-o', '512', 'f');
    expect(benchHeader(opts!)).toBe(
      'Sending 3 write requests, 4096 bytes each, 4 in parallel (starting at offset 512, step size 4096)\n' +
        'Sending flush every 4 requests\n',
    );
    expect(opts?.drainOnFlush).toBe(true);
    expect(parse('-w', '--flush-interval=64', '--no-drain', 'f').opts?.drainOnFlush).toBe(false);
    // An interval of 0 means none, and prints no flush line.
    expect(benchHeader(parse('-w', '--flush-interval=0', 'f').opts!)).not.toContain('flush');
  });

  it('accepts the cache, aio and share options', () => {
    for (const t of ['none', 'writeback', 'writethrough', 'directsync', 'unsafe']) expect(parse('-t', t, 'f').opts?.cache).toBe(t);
    for (const i of ['threads', 'native', 'io_uring']) expect(parse('-i', i, 'f').opts?.aio).toBe(i);
    expect(parse('-n', 'f').opts?.aio).toBe('native');
    expect(parse('-U', 'f').opts?.forceShare).toBe(true);
    expect(parse('--force-share', 'f').opts?.forceShare).toBe(true);
    expect(parse('-q', 'f').opts?.quiet).toBe(true);
    expect(parse('-f', 'qed', 'f').opts?.format).toBe('qed');
  });

  const SIZE_HINT =
    'blk-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n';
  const errors: Array<[string[], string]> = [
    [['-c', '-1', 'f'], 'blk-img: Invalid request count specified\n'],
    [['-c', 'abc', 'f'], 'blk-img: Invalid request count specified\n'],
    [['-c', '2147483648', 'f'], 'blk-img: Invalid request count specified\n'],
    [['-d', 'abc', 'f'], 'blk-img: Invalid queue depth specified\n'],
    [['-d', '-1', 'f'], 'blk-img: Invalid queue depth specified\n'],
    [['-d', '0', 'f'], 'blk-img: Invalid queue depth specified\n'],
    [['--pattern=256', 'f'], 'blk-img: Invalid pattern byte specified\n'],
    [['--pattern=abc', 'f'], 'blk-img: Invalid pattern byte specified\n'],
    [['--flush-interval=abc', '-w', 'f'], 'blk-img: Invalid flush interval specified\n'],
    [['-t', 'bogus', 'f'], 'blk-img: Invalid cache mode\n'],
    [['-i', 'bogus', 'f'], 'blk-img: Invalid aio option: bogus\n'],
    [['-o', 'abc', 'f'], `blk-img: Invalid offset specified. You may use k, M, G, T, P or E suffixes for\n${SIZE_HINT}`],
    [['-o', '-1', 'f'], `blk-img: Invalid offset specified. You may use k, M, G, T, P or E suffixes for\n${SIZE_HINT}`],
    [['-o', '9E', 'f'], 'blk-img: Invalid offset specified. Must be between 0 and 9223372036854775807.\n'],
    [['-s', 'abc', 'f'], `blk-img: Invalid buffer size specified. You may use k, M, G, T, P or E suffixes for\n${SIZE_HINT}`],
    [['-s', '2G', 'f'], 'blk-img: Invalid buffer size specified. Must be between 0 and 2147483647.\n'],
    [['-S', '3G', 'f'], 'blk-img: Invalid step_size specified. Must be between 0 and 2147483647.\n'],
    [['-S', 'x', 'f'], `blk-img: Invalid step_size specified. You may use k, M, G, T, P or E suffixes for\n${SIZE_HINT}`],
    [['-c', '3', '-d', '4', '--flush-interval=4', 'f'], 'blk-img: --flush-interval is only available in write tests\n'],
    [['-w', '-d', '4', '--flush-interval=2', 'f'], "blk-img: Flush interval can't be smaller than depth\n"],
    [['-z', 'f'], "blk-img: unrecognized option '-z'\nTry 'blk-img --help' for more information\n"],
    [['f', '-c'], "blk-img: missing argument for option '-c'\nTry 'blk-img --help' for more information\n"],
    [['-c', '3'], "blk-img: Expecting one image file name\nTry 'blk-img --help' for more information\n"],
    [['a', 'b'], "blk-img: Expecting one image file name\nTry 'blk-img --help' for more information\n"],
  ];
  for (const [args, message] of errors) {
    it(`refuses ${args.join(' ')}`, () => {
      const r = parse(...args);
      expect(r.status).toBe(1);
      expect(r.stderr).toBe(message);
      expect(r.stdout).toBe('');
    });
  }

  it('refuses a flush interval before looking at the file', () => {
    // qemu-img checks the options before opening: no "Could not open" for a missing file.
    const r = parse('-w', '-d', '8', '--flush-interval=4', '/nonexistent/x');
    expect(r.stderr).toBe("blk-img: Flush interval can't be smaller than depth\n");
  });

  it('-h prints the usage and exits 0', async () => {
    const r = await bench('-h');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^usage: blk-img bench \[-c count\] \[-d depth\]/);
  });
});

describe('bench output lines', () => {
  it('formats the completion time like %3.3f', () => {
    expect(completionLine(2)).toBe('Run completed in 2.000 seconds.\n');
    expect(completionLine(0.25)).toBe('Run completed in 0.250 seconds.\n');
    expect(completionLine(0)).toBe('Run completed in 0.000 seconds.\n');
    expect(completionLine(12.3456)).toBe('Run completed in 12.346 seconds.\n');
  });
});

describe('bench request offsets', () => {
  it('advances by the step and wraps modulo the image size (qemu-img 7.2)', () => {
    expect([...requestOffsets(0, 4096, 16384, 6)]).toEqual([0, 4096, 8192, 12288, 0, 4096]);
    // The wrap is modulo the size, not back to the start offset.
    expect([...requestOffsets(3 * KIB, 2 * KIB, 8 * KIB, 5)]).toEqual([3 * KIB, 5 * KIB, 7 * KIB, 1 * KIB, 3 * KIB]);
    expect([...requestOffsets(100, 7, 0, 3)]).toEqual([100, 0, 0]);
  });
});

describe('bench runs', () => {
  it('writes the pattern at every step, wrapping at the end of the image', async () => {
    const f = await memImage('bench-wrap', 'raw', 1024 * KIB);
    // 12 requests from 512 KiB with a 64 KiB step: 512K..960K, then 0..192K after the wrap.
    const r = await bench('-w', '-f', 'raw', '-c', '12', '-d', '3', '-s', '4k', '-S', '64k', '-o', '512k', '--pattern=0xab', f);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    const lines = r.stdout.split(/(?<=\n)/);
    expect(lines[0]).toBe('Sending 12 write requests, 4096 bytes each, 3 in parallel (starting at offset 524288, step size 65536)\n');
    expect(lines[1]).toMatch(RUN_LINE);
    expect(lines).toHaveLength(2);
    const bytes = memStoreRead('bench-wrap');
    const expected = new Uint8Array(1024 * KIB);
    for (const off of [...requestOffsets(512 * KIB, 64 * KIB, 1024 * KIB, 12)]) expected.fill(0xab, off, off + 4 * KIB);
    expect(Buffer.compare(Buffer.from(bytes), Buffer.from(expected))).toBe(0);
    // Spot checks of the layout the model above claims.
    expect(bytes[0]).toBe(0xab);
    expect(bytes[256 * KIB]).toBe(0);
    expect(bytes[512 * KIB + 4 * KIB]).toBe(0);
  });

  it('runs reads and writes on a QED image through the whole stack', async () => {
    const f = await memImage('bench-qed', 'qed', 64 * 1024 * KIB);
    const w = await bench('-w', '-c', '64', '-d', '16', '-s', '64k', '--pattern=7', f);
    expect(w.status).toBe(0);
    expect(w.stdout.split('\n')[1] + '\n').toMatch(RUN_LINE);
    const rd = await bench('-c', '64', '-d', '16', '-s', '64k', f);
    expect(rd.status).toBe(0);
    expect(rd.stdout).toMatch(/^Sending 64 read requests, 65536 bytes each, 16 in parallel \(starting at offset 0, step size 65536\)\n/);
    const bs = await BlockDriverState.open(f, { readOnly: true });
    try {
      const buf = new Uint8Array(4 * 1024 * KIB + 1);
      await bs.pread(0, buf);
      expect(buf.subarray(0, 4 * 1024 * KIB).every((b) => b === 7)).toBe(true);
      expect(buf[4 * 1024 * KIB]).toBe(0);
      expect((await bs.check()).corruptions).toBe(0);
    } finally {
      await bs.close();
    }
  });

  it('handles byte-granular requests (unaligned offset and size)', async () => {
    const f = await memImage('bench-unaligned', 'raw', 64 * KIB);
    const r = await bench('-w', '-f', 'raw', '-c', '5', '-d', '2', '-s', '1000', '-o', '100', '--pattern=0x11', f);
    expect(r.status).toBe(0);
    const bytes = memStoreRead('bench-unaligned');
    expect(bytes[99]).toBe(0);
    expect(bytes.subarray(100, 5100).every((b) => b === 0x11)).toBe(true);
    expect(bytes[5100]).toBe(0);
  });

  it('reports a request past the end as QEMU does: error first, exit 1', async () => {
    const f = await memImage('bench-eio', 'raw', 1024 * KIB);
    const r = await bench('-f', 'raw', '-c', '3', '-o', '2M', f);
    expect(r.status).toBe(1);
    // stdout is block buffered like C stdio on a pipe, so the error line comes out first.
    expect(r.combined).toBe(
      'blk-img: Failed request: Input/output error\n' +
        'Sending 3 read requests, 4096 bytes each, 64 in parallel (starting at offset 2097152, step size 4096)\n',
    );
  });

  it('reports open errors like qemu-img', async () => {
    const r = await bench('-c', '1', 'mem:bench-does-not-exist');
    expect(r.status).toBe(1);
    expect(r.stderr).toBe("blk-img: Could not open 'mem:bench-does-not-exist': Could not open 'mem:bench-does-not-exist': No such file or directory\n");
    const f = await memImage('bench-fmt', 'raw', 64 * KIB);
    const b = await bench('-c', '1', '-f', 'bogus', f);
    expect(b.stderr).toBe(`blk-img: Could not open '${f}': Unknown driver 'bogus'\n`);
    const n = await bench('-c', '1', '-n', f);
    expect(n.stderr).toBe(
      `blk-img: Could not open '${f}': aio=native was specified, but it requires cache.direct=on, which was not specified.\n`,
    );
    expect((await bench('-c', '1', '-n', '-t', 'none', '-f', 'raw', f)).status).toBe(0);
  });

  it('a read test opens the image read-only', async () => {
    const f = await memImage('bench-ro', 'raw', 64 * KIB);
    const spy = vi.spyOn(BlockDriverState, 'open');
    await bench('-c', '1', '-f', 'raw', f);
    await bench('-c', '1', '-f', 'raw', '-w', '-t', 'unsafe', f);
    expect(spy.mock.calls[0][1]).toMatchObject({ readOnly: true, format: 'raw' });
    expect(spy.mock.calls[1][1]).toMatchObject({ readOnly: false, noFlush: true });
  });
});

describe('BenchRun engine', () => {
  async function openMem(name: string, size: number): Promise<BlockDriverState> {
    const f = await memImage(name, 'raw', size);
    return BlockDriverState.open(f, { format: 'raw' });
  }

  function options(over: Partial<BenchOptions>): BenchOptions {
    return { ...defaultBenchOptions(), filename: 'x', ...over };
  }

  /** Wrap the AIO entry points to record how many requests are in flight at each flush. */
  function instrument(bs: BlockDriverState): { inFlightAtFlush: number[]; maxInFlight: () => number; submitted: () => number } {
    let inFlight = 0;
    let max = 0;
    let submitted = 0;
    const inFlightAtFlush: number[] = [];
    for (const name of ['aioReadv', 'aioWritev'] as const) {
      const orig = bs[name].bind(bs);
      vi.spyOn(bs, name).mockImplementation((sector, qiov, nb, cb) => {
        inFlight++;
        submitted++;
        max = Math.max(max, inFlight);
        return orig(sector, qiov, nb, (err) => {
          inFlight--;
          cb(err);
        });
      });
    }
    const flush = bs.aioFlush.bind(bs);
    vi.spyOn(bs, 'aioFlush').mockImplementation((cb) => {
      inFlightAtFlush.push(inFlight);
      return flush(cb);
    });
    return { inFlightAtFlush, maxInFlight: () => max, submitted: () => submitted };
  }

  it('keeps at most `depth` requests in flight and sends exactly `count`', async () => {
    const bs = await openMem('engine-depth', 1024 * KIB);
    try {
      const probe = instrument(bs);
      const run = new BenchRun(bs, options({ count: 100, depth: 7, write: true }), 1024 * KIB);
      expect(run.slotCount).toBe(7);
      expect(await run.run()).toBeNull();
      expect(probe.submitted()).toBe(100);
      expect(probe.maxInFlight()).toBe(7);
      expect(run.slotCount).toBe(7); // every slot came back
      expect(new BenchRun(bs, options({ count: 3, depth: 64 }), 1024 * KIB).slotCount).toBe(3);
    } finally {
      await bs.close();
    }
  });

  it('drains the queue before each flush by default (qemu-img bench_cb)', async () => {
    const bs = await openMem('engine-drain', 1024 * KIB);
    try {
      const probe = instrument(bs);
      const run = new BenchRun(bs, options({ count: 10, depth: 4, write: true, flushInterval: 4 }), 1024 * KIB);
      expect(await run.run()).toBeNull();
      expect(probe.submitted()).toBe(10);
      // 10 requests, a flush whenever the number not yet sent is a multiple of 4 and the
      // queue has drained: after the 6th completion and after the last.
      expect(probe.inFlightAtFlush).toEqual([0, 0]);
    } finally {
      await bs.close();
    }
  });

  it('--no-drain flushes with requests still in flight', async () => {
    const bs = await openMem('engine-nodrain', 1024 * KIB);
    try {
      const probe = instrument(bs);
      const run = new BenchRun(bs, options({ count: 40, depth: 4, write: true, flushInterval: 4, drainOnFlush: false }), 1024 * KIB);
      expect(await run.run()).toBeNull();
      expect(probe.submitted()).toBe(40);
      expect(probe.inFlightAtFlush.length).toBeGreaterThan(0);
      expect(probe.inFlightAtFlush.some((n) => n > 0)).toBe(true);
    } finally {
      await bs.close();
    }
  });

  it('uses the AIO path for sector-aligned requests and byte requests otherwise', async () => {
    const bs = await openMem('engine-path', 1024 * KIB);
    try {
      const aio = vi.spyOn(bs, 'aioReadv');
      const co = vi.spyOn(bs, 'preadv');
      expect(await new BenchRun(bs, options({ count: 8, depth: 2 }), 1024 * KIB).run()).toBeNull();
      expect(aio).toHaveBeenCalledTimes(8);
      expect(co).toHaveBeenCalledTimes(0);
      expect(await new BenchRun(bs, options({ count: 8, depth: 2, offset: 100 }), 1024 * KIB).run()).toBeNull();
      expect(aio).toHaveBeenCalledTimes(8);
      expect(co).toHaveBeenCalledTimes(8);
    } finally {
      await bs.close();
    }
  });

  it('reuses the same buffers: a write run hands the driver only its slots', async () => {
    const bs = await openMem('engine-reuse', 1024 * KIB);
    try {
      const seen = new Set<ArrayBufferLike>();
      const orig = bs.aioWritev.bind(bs);
      vi.spyOn(bs, 'aioWritev').mockImplementation((sector, qiov: IOVector, nb, cb) => {
        seen.add(qiov.iov[0].buffer);
        return orig(sector, qiov, nb, cb);
      });
      expect(await new BenchRun(bs, options({ count: 50, depth: 5, write: true }), 1024 * KIB).run()).toBeNull();
      expect(seen.size).toBe(5);
    } finally {
      await bs.close();
    }
  });

  it('stops sending after a failed request and reports it', async () => {
    const bs = await openMem('engine-fail', 64 * KIB);
    try {
      const probe = instrument(bs);
      // The first request (62 KiB + 4 KiB) straddles the end of the 64 KiB image.
      const err = await new BenchRun(bs, options({ count: 10, depth: 1, offset: 62 * KIB }), 64 * KIB).run();
      expect(err?.code).toBe('EIO');
      expect(probe.submitted()).toBe(1);
    } finally {
      await bs.close();
    }
  });
});
