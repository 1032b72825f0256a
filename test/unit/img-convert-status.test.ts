// blk-img convert's two passes over the source (convertDoCopy): the copy pass replays the
// block status the counting pass asked for, instead of asking the source again.
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { setIoEngineForTest } from '../../src/drivers/file/engine.js';
import { loadSeekAddon, setSeekAddonForTest, type SeekAddon } from '../../src/drivers/file/seek.js';
import { main } from '../../src/tools/img/main.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const addon = loadSeekAddon();
const MiB = 1024 * 1024;

describe.skipIf(addon === null)('convert block status', () => {
  let dir = '';
  let prev: SeekAddon | null | undefined;
  beforeEach(() => {
    dir = makeTempDir('blk-convert-status');
  });
  afterEach(() => {
    setSeekAddonForTest(prev);
    setIoEngineForTest(undefined);
    removeTempDir(dir);
  });

  it('asks the source once per run, and copies what it found', async () => {
    const real = addon!;
    // Every SEEK_DATA the file driver makes: the offset it asks about.
    const asked: number[] = [];
    const spy: SeekAddon = {
      ...real,
      seekData: (fd, offset) => {
        asked.push(offset);
        return real.seekData(fd, offset);
      },
    };
    const src = join(dir, 'src.raw');
    const fd = openSync(src, 'w');
    // Data in every other MiB of 8 MiB: eight runs of data and holes.
    for (let i = 0; i < 8; i += 2) writeSync(fd, new Uint8Array(MiB).fill(0x5a + i), 0, MiB, i * MiB);
    closeSync(fd);
    prev = setSeekAddonForTest(spy);
    setIoEngineForTest(undefined);
    const out = join(dir, 'out.raw');
    const status = await main(['node', 'blk-img', 'convert', '-f', 'raw', '-O', 'raw', src, out], {
      stdout: { write: () => undefined },
      stderr: { write: () => undefined },
    });
    expect(status).toBe(0);
    expect(asked.length).toBeGreaterThanOrEqual(7);
    expect(new Set(asked).size).toBe(asked.length);
    expect(readFileSync(out).equals(readFileSync(src))).toBe(true);
  });
});
