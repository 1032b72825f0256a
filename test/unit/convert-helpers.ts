// blk-img convert of a fragmented raw file with the file driver's native addon swapped for a
// spy: the tests of what convert asks the host (its block status, its buffers) share this.
import { closeSync, openSync, writeSync } from 'node:fs';
import { setIoEngineForTest } from '../../src/drivers/file/engine.js';
import { setSeekAddonForTest, type SeekAddon } from '../../src/drivers/file/seek.js';
import { main } from '../../src/tools/img/main.js';

const MiB = 1024 * 1024;

/** An 8 MiB raw file with data in every other MiB: four runs of data, each followed by a hole. */
export function writeAlternatingRaw(path: string): void {
  const fd = openSync(path, 'w');
  for (let i = 0; i < 8; i += 2) writeSync(fd, new Uint8Array(MiB).fill(0x5a + i), 0, MiB, i * MiB);
  closeSync(fd);
}

/** `blk-img convert -f raw -O raw src out` with `spy` as the addon; its exit status. */
export async function convertThroughAddon(spy: SeekAddon, src: string, out: string): Promise<number> {
  const prev = setSeekAddonForTest(spy);
  // The engine is chosen from the addon on first use: let the spy's be chosen.
  setIoEngineForTest(undefined);
  try {
    return await main(['node', 'blk-img', 'convert', '-f', 'raw', '-O', 'raw', src, out], {
      stdout: { write: () => undefined },
      stderr: { write: () => undefined },
    });
  } finally {
    setSeekAddonForTest(prev);
    setIoEngineForTest(undefined);
  }
}
