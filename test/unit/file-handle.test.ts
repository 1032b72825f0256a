// The host file's open, fstat and close run on the calling thread (as QEMU's file-posix makes
// them), not through libuv's pool: done by the time the call returns, errors as node:fs's.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openHostFile } from '../../src/drivers/file/handle.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

/** Whether `p` settles within the current microtask queue, before any event-loop turn. */
async function settlesNow(p: Promise<unknown>): Promise<boolean> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < 3; i++) await Promise.resolve();
  return settled;
}

describe('host file handle', () => {
  let dir = '';
  beforeEach(() => {
    dir = makeTempDir('blk-file-handle');
  });
  afterEach(() => removeTempDir(dir));

  it('opens, stats and closes without a loop turn', async () => {
    const path = join(dir, 'f.raw');
    writeFileSync(path, new Uint8Array(4096));
    // A pool round trip would settle only in a later turn of the loop.
    const opening = openHostFile(path, 'r');
    expect(await settlesNow(opening)).toBe(true);
    const fh = await opening;
    const stat = fh.stat();
    expect(await settlesNow(stat)).toBe(true);
    expect((await stat).size).toBe(4096);
    const closing = fh.close();
    expect(await settlesNow(closing)).toBe(true);
    await closing;
  });

  it('rejects as node:fs does for a file that is not there', async () => {
    const path = join(dir, 'missing.raw');
    await expect(openHostFile(path, 'r')).rejects.toMatchObject({ code: 'ENOENT', syscall: 'open', path });
  });
});
