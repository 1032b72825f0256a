// blk-io's cache modes reach the protocol: in qemu-io's default (writethrough) every write of
// blk-io carries FUA, which a protocol without native FUA sees as a write followed by a flush
// (the generic layer's emulation); writeback writes are not flushed until asked; unsafe never
// reaches the protocol's flush. A small recording protocol shows what arrives.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultRegistry } from '../../src/index.js';
import type { BlockDriver } from '../../src/block/driver.js';
import type { BlockDriverState } from '../../src/block/node.js';
import { main } from '../../src/tools/io/main.js';

const SIZE = 1 << 20;
const stores = new Map<string, Uint8Array>();
let log: string[] = [];

function data(bs: BlockDriverState): Uint8Array {
  const d = stores.get(bs.filename);
  if (d === undefined) throw new Error(`no store for ${bs.filename}`);
  return d;
}

/** A protocol that records every write (with its FUA bit) and flush it is given. */
function recorder(name: string, supportsFua: boolean): BlockDriver {
  return {
    formatName: name,
    protocolName: name,
    isProtocol: true,
    supportsFua,
    requestAlignment: 1,
    open(bs) {
      if (!stores.has(bs.filename)) stores.set(bs.filename, new Uint8Array(SIZE));
      return Promise.resolve();
    },
    coPreadv(bs, offset, bytes, qiov) {
      qiov.copyFrom(data(bs).subarray(offset, offset + bytes));
      return Promise.resolve();
    },
    coPwritev(bs, offset, bytes, qiov, flags) {
      qiov.copyTo(data(bs).subarray(offset, offset + bytes));
      log.push(flags.fua === true ? `write+fua ${offset}` : `write ${offset}`);
      return Promise.resolve();
    },
    coFlush() {
      log.push('flush');
      return Promise.resolve();
    },
    getLength(bs) {
      return data(bs).length;
    },
  };
}

let n = 0;
/**
 * One blk-io run over raw on the protocol (or the protocol itself as the format). It ends with
 * `abort`, so the log holds what the commands did and not the flushes of close.
 */
async function session(proto: string, opts: string[], ...cmds: string[]): Promise<{ log: string[]; out: string }> {
  log = [];
  let out = '';
  const sink = { write: (t: string) => (out += t) };
  const name = `${proto}:img-${n++}`;
  const fmt = opts.includes('-f') ? [] : ['-f', 'raw'];
  const status = await main(['node', 'blk-io', ...opts, ...fmt, ...[...cmds, 'abort'].flatMap((c) => ['-c', c]), name], {
    stdout: sink,
    stderr: sink,
    abort: () => undefined,
  });
  expect(status).toBe(134);
  expect(out).not.toContain('failed');
  return { log, out };
}

const WRITES = ['write -P 1 0 4k', 'write -z 4k 4k', 'writev -P 2 8k 512 512', 'aio_write -P 3 12k 4k', 'aio_flush'];

describe('blk-io cache modes at the protocol', () => {
  beforeAll(() => {
    defaultRegistry.register(recorder('recflush', false));
    defaultRegistry.register(recorder('recfua', true));
  });
  afterAll(() => {
    stores.clear();
  });

  it('default (writethrough): each write reaches the protocol, then its flush, before the next', async () => {
    const r = await session('recflush', [], ...WRITES, 'read -P 3 12k 4k');
    expect(r.log).toEqual(['write 0', 'flush', 'write 4096', 'flush', 'write 8192', 'flush', 'write 12288', 'flush']);
  });

  it('-t directsync behaves as writethrough; -t writeback and -n flush only when asked', async () => {
    expect((await session('recflush', ['-t', 'directsync'], 'write 0 4k', 'write 4k 4k')).log).toEqual(['write 0', 'flush', 'write 4096', 'flush']);
    expect((await session('recflush', ['-t', 'writeback'], ...WRITES)).log).toEqual(['write 0', 'write 4096', 'write 8192', 'write 12288']);
    expect((await session('recflush', ['-n'], 'write 0 4k', 'write 4k 4k', 'flush', 'write 8k 4k')).log).toEqual(['write 0', 'write 4096', 'flush', 'write 8192']);
    expect((await session('recflush', ['-t', 'none'], 'write 0 4k', 'write 4k 4k', 'flush')).log).toEqual(['write 0', 'write 4096', 'flush']);
  });

  it('-t unsafe: flushes never reach the protocol', async () => {
    const r = await session('recflush', ['-t', 'unsafe'], ...WRITES, 'flush', 'write -f 0 4k', 'close');
    expect(r.log).toEqual(['write 0', 'write 4096', 'write 8192', 'write 12288', 'write 0']);
  });

  it('write -f asks for FUA in writeback mode too (zero writes included)', async () => {
    const r = await session('recflush', ['-t', 'writeback'], 'write -f 0 4k', 'write 4k 4k', 'write -z -f 8k 4k', 'aio_write -f 12k 4k', 'aio_flush');
    expect(r.log).toEqual(['write 0', 'flush', 'write 4096', 'write 8192', 'flush', 'write 12288', 'flush']);
  });

  it('a driver with native FUA gets the flag instead of a flush', async () => {
    const r = await session('recfua', ['-f', 'recfua'], 'write 0 4k', 'writev 4k 512', 'write -z 8k 512');
    // Zero writes have no native FUA anywhere (QEMU's supported_zero_flags): one flush after.
    expect(r.log).toEqual(['write+fua 0', 'write+fua 4096', 'write 8192', 'flush']);
    // Over raw (which has no FUA of its own in QEMU 7.2) the raw node emulates it.
    expect((await session('recfua', [], 'write 0 4k')).log).toEqual(['write 0', 'flush']);
  });

  it('reopen -c switches the write cache in place, after a flush', async () => {
    const r = await session('recflush', [], 'write 0 4k', 'reopen -c writeback', 'write 4k 4k', 'write 8k 4k', 'reopen -c writethrough', 'write 12k 4k');
    // The reopen's flush does not reach the protocol: nothing was written since the FUA
    // write's flush (QEMU's flushed_gen check).
    expect(r.log).toEqual(['write 0', 'flush', 'write 4096', 'write 8192', 'flush', 'write 12288', 'flush']);
  });
});
