// Zero-writes started with a completion callback (the zeroThenPwritevSubmit hook): a file node
// hands the zeroing and the data to the I/O engine as one linked request and ends it once,
// later.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { IOVector } from '../../src/block/iovec.js';
import { BlockDriverState, type BlockError } from '../../src/index.js';
import { ioEngine } from '../../src/drivers/file/engine.js';
import { loadSeekAddon } from '../../src/drivers/file/seek.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const hasEngine = typeof loadSeekAddon()?.engineStart === 'function';
const CS = 65536;

describe.skipIf(!hasEngine || ioEngine()?.canLink !== true)('zero-writes started with a completion callback', () => {
  let dir = '';
  beforeEach(() => {
    dir = makeTempDir('zero-write-submit');
  });
  afterEach(() => {
    vi.restoreAllMocks();
    removeTempDir(dir);
  });

  it('a file node: zeroed, then the data, ended once from a later turn; refused where the ordinary path must run', async () => {
    const path = join(dir, 'f.raw');
    writeFileSync(path, new Uint8Array(2 * CS).fill(0x5a));
    const bs = await BlockDriverState.open(path, { format: 'raw' });
    const file = bs.file!;
    try {
      const end = await new Promise<{ err: BlockError | null; sync: boolean; started: boolean }>((resolve) => {
        let returned = false;
        const started = file.zeroThenPwritevSubmit(CS, 2 * CS, CS + 4096, IOVector.from(new Uint8Array(4096).fill(7)), (err) => resolve({ err, sync: !returned, started }));
        returned = true;
        expect(started).toBe(true);
        expect(file.requests.inFlight).toBe(1);
      });
      expect([end.err, end.sync]).toEqual([null, false]);
      expect(file.requests.inFlight).toBe(0);
      // Grown to the zeroed range's end: the length is known without asking.
      expect(file.lengthNow()).toBe(3 * CS);
      // Data outside the zeroed range, or debug events watched: not taken.
      expect(file.zeroThenPwritevSubmit(CS, CS, 0, IOVector.from(new Uint8Array(4096)), () => undefined)).toBe(false);
      file.events.on('debug', () => undefined);
      expect(file.zeroThenPwritevSubmit(0, CS, 0, IOVector.from(new Uint8Array(4096)), () => undefined)).toBe(false);
      expect(file.requests.inFlight).toBe(0);
    } finally {
      await bs.close();
    }
    const disk = readFileSync(path);
    expect(disk.length).toBe(3 * CS);
    expect(disk.subarray(0, CS).every((b) => b === 0x5a)).toBe(true);
    expect(disk.subarray(CS, 3 * CS).every((b, i) => b === (i >= 4096 && i < 8192 ? 7 : 0))).toBe(true);
  });
});
