import { afterEach, describe, expect, it } from 'vitest';
import { BlockDriverState } from '../../src/index.js';
import { memStoreDelete, memStoreWrite } from '../../src/drivers/mem/index.js';

describe('format probing over short files', () => {
  afterEach(() => {
    memStoreDelete('probe-short');
  });

  it('a file shorter than the probe buffer is probed as if zero-padded (QEMU reads 2 KiB)', async () => {
    // 40 bytes: the QED magic, then nothing QED could open. QEMU probes it as qed and then
    // fails the open; probing only the bytes present would have opened it as raw.
    const bytes = new Uint8Array(40);
    bytes.set([0x51, 0x45, 0x44, 0x00]);
    memStoreWrite('probe-short', bytes);
    await expect(BlockDriverState.open('mem:probe-short')).rejects.toMatchObject({
      name: 'BlockError',
      message: expect.stringMatching(/QED/) as unknown,
    });
  });

  it('an empty file probes as raw', async () => {
    memStoreWrite('probe-short', new Uint8Array(0));
    const bs = await BlockDriverState.open('mem:probe-short');
    expect(bs.driver.formatName).toBe('raw');
    await bs.close();
  });
});
