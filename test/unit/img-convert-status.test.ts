// blk-img convert's two passes over the source (convertDoCopy): the copy pass replays the
// block status the counting pass asked for, instead of asking the source again; a host file
// answers without a queued request, and the sources' lengths are taken once.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AioTaskPool } from '../../src/block/aio-task.js';
import { BlockBackend } from '../../src/block/backend.js';
import { BlockDriverState } from '../../src/block/node.js';
import { loadSeekAddon, type SeekAddon } from '../../src/drivers/file/seek.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';
import { convertThroughAddon, writeAlternatingRaw } from './convert-helpers.js';

const addon = loadSeekAddon();

describe.skipIf(addon === null)('convert block status', () => {
  let dir = '';
  beforeEach(() => {
    dir = makeTempDir('blk-convert-status');
  });
  afterEach(() => {
    vi.restoreAllMocks();
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
    // Data in every other MiB of 8 MiB: eight runs of data and holes.
    writeAlternatingRaw(src);
    const out = join(dir, 'out.raw');
    const status = await convertThroughAddon(spy, src, out);
    expect(status).toBe(0);
    expect(asked.length).toBeGreaterThanOrEqual(7);
    expect(new Set(asked).size).toBe(asked.length);
    expect(readFileSync(out).equals(readFileSync(src))).toBe(true);
  });

  it('asks a host file now and takes the lengths once, however many runs', async () => {
    const queued = vi.spyOn(BlockDriverState.prototype, 'blockStatus');
    const lengths = vi.spyOn(BlockBackend.prototype, 'getLength');
    const src = join(dir, 'src.raw');
    writeAlternatingRaw(src);
    const out = join(dir, 'out.raw');
    expect(await convertThroughAddon(addon!, src, out)).toBe(0);
    expect(readFileSync(out).equals(readFileSync(src))).toBe(true);
    // lseek answers synchronously: no status goes through the request path.
    expect(queued).not.toHaveBeenCalled();
    // The source's at open and after the snapshot check, the target's once: not one per run.
    expect(lengths.mock.calls.length).toBeLessThanOrEqual(3);
  });

  it('starts a task for each data run only when the target reads as zeros', async () => {
    const tasks = vi.spyOn(AioTaskPool.prototype, 'start');
    const src = join(dir, 'src.raw');
    // Four data runs, each followed by a hole: the holes write nothing to a new raw file.
    writeAlternatingRaw(src);
    const out = join(dir, 'out.raw');
    expect(await convertThroughAddon(addon!, src, out)).toBe(0);
    expect(readFileSync(out).equals(readFileSync(src))).toBe(true);
    expect(tasks).toHaveBeenCalledTimes(4);
  });
});
