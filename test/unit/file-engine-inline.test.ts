// The I/O engine's inline writes (native/engine.c, `held`): a small write issued with nothing
// else in flight is written by the loop's thread itself, and reported like any other request,
// from a later turn; anything that joins it in the same turn sends it to its back end.
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FALLOC_FL_ZERO_RANGE, type EngineChoice, type IoEngine, inlineWritesChoice, setIoEngineForTest } from '../../src/drivers/file/engine.js';
import { loadSeekAddon } from '../../src/drivers/file/seek.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const addon = loadSeekAddon();
const hasEngine = typeof addon?.engineStart === 'function';
if (!hasEngine && process.env.CI === 'true') {
  throw new Error('the native addon (build/Release/blocklayer_seek.node) was not built with its I/O engine: run `npm ci`');
}

const inlineWrites = (): number => addon?.engineStats?.().inlineWrites ?? -1;

afterAll(() => {
  setIoEngineForTest(undefined);
});

it('BLOCKLAYER_INLINE_WRITES=0 turns inline writes off; anything else leaves them on', () => {
  expect(inlineWritesChoice('0')).toBe(false);
  expect(inlineWritesChoice(undefined)).toBe(true);
  expect(inlineWritesChoice('1')).toBe(true);
});

describe.each(['auto', 'io_uring', 'threads'] as EngineChoice[])('inline writes: %s', (kind) => {
  let dir = '';
  let fd = -1;
  let e: IoEngine;
  const size = 64 * 1024;
  beforeEach((ctx) => {
    if (!hasEngine) ctx.skip();
    const started = setIoEngineForTest(kind, true);
    // io_uring refused (seccomp, old kernel): forcing it gives no engine.
    if (started === null) ctx.skip();
    e = started!;
    dir = makeTempDir('file-engine-inline');
    writeFileSync(join(dir, 'f'), new Uint8Array(4 * size).fill(0x11));
    fd = openSync(join(dir, 'f'), 'r+');
  });
  afterEach(() => {
    if (fd >= 0) closeSync(fd);
    fd = -1;
    if (dir !== '') removeTempDir(dir);
    dir = '';
  });
  const file = () => readFileSync(join(dir, 'f'));

  it('a lone write is written inline and reported from a later turn', async () => {
    let reported = -1;
    const p = new Promise<number>((resolve) =>
      e.pwritevThen(fd, new Uint8Array(size).fill(0x22), size, (res) => {
        reported = res;
        resolve(res);
      }),
    );
    // Not inside the call that issued it, nor in the same turn's microtasks.
    await Promise.resolve();
    expect(reported).toBe(-1);
    expect(await p).toBe(size);
    expect(inlineWrites()).toBe(1);
    expect(file().subarray(size, 2 * size).every((x) => x === 0x22)).toBe(true);
  });

  it('one write after another, each alone: every one inline, in place', async () => {
    for (let i = 0; i < 20; i++) expect(await e.pwritev(fd, new Uint8Array(4096).fill(i), i * 4096)).toBe(4096);
    expect(inlineWrites()).toBe(20);
    const f = file();
    for (let i = 0; i < 20; i++) expect(f[i * 4096 + 100]).toBe(i);
  });

  it('writes issued together go to the back end, the first included', async () => {
    const done = await Promise.all([0, 1, 2].map((i) => e.pwritev(fd, new Uint8Array(size).fill(0x30 + i), i * size)));
    expect(done).toEqual([size, size, size]);
    expect(inlineWrites()).toBe(0);
    const f = file();
    for (let i = 0; i < 3; i++) expect(f[i * size + 7]).toBe(0x30 + i);
  });

  it('a lone zero-write is inline: the range zeroed, then the data', async () => {
    expect(await e.zeroThenPwritev(fd, FALLOC_FL_ZERO_RANGE, size, size, new Uint8Array(512).fill(0x44), size + 4096)).toBe(512);
    expect(inlineWrites()).toBe(1);
    const f = file();
    expect(f.subarray(size, size + 4096).every((x) => x === 0)).toBe(true);
    expect(f.subarray(size + 4096, size + 4608).every((x) => x === 0x44)).toBe(true);
    expect(f.subarray(size + 4608, 2 * size).every((x) => x === 0)).toBe(true);
    expect(f[size - 1]).toBe(0x11);
  });

  it('large writes, reads, datasyncs and fallocates are never inline', async () => {
    expect(await e.pwritev(fd, new Uint8Array(256 * 1024 + 1).fill(5), 0)).toBe(256 * 1024 + 1);
    expect(await e.preadv(fd, new Uint8Array(4096), 0)).toBe(4096);
    await e.fdatasync(fd);
    await e.fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, 4096);
    expect(inlineWrites()).toBe(0);
  });

  it('an inline write fails as node:fs fails: a read-only descriptor', async () => {
    const ro = openSync(join(dir, 'f'), 'r');
    try {
      await expect(e.pwritev(ro, new Uint8Array(512), 0)).rejects.toMatchObject({ code: 'EBADF', syscall: 'write' });
      expect(inlineWrites()).toBe(1);
    } finally {
      closeSync(ro);
    }
  });

  it('stopping with a held write writes it and reports it', async () => {
    const p = e.pwritev(fd, new Uint8Array(512).fill(0x55), 0);
    e.stop();
    expect(await p).toBe(512);
    expect(file()[511]).toBe(0x55);
  });
});

it.skipIf(!hasEngine)('with inline writes off, a lone write goes to the back end', async () => {
  const e = setIoEngineForTest('auto', false);
  if (e === null) throw new Error('no engine');
  const dir = makeTempDir('file-engine-inline');
  writeFileSync(join(dir, 'f'), new Uint8Array(4096));
  const fd = openSync(join(dir, 'f'), 'r+');
  try {
    expect(await e.pwritev(fd, new Uint8Array(4096).fill(9), 0)).toBe(4096);
    expect(inlineWrites()).toBe(0);
    expect(readFileSync(join(dir, 'f'))[0]).toBe(9);
  } finally {
    closeSync(fd);
    removeTempDir(dir);
  }
});
