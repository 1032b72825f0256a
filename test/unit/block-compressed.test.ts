// Compressed writes through the generic layer (io/compressed.ts) and the qcow2 hook that
// splits a request into clusters and pads the file at end of stream.
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { memStoreGet } from '../../src/drivers/mem/index.js';
import { BlockDriverState, IOVector } from '../../src/index.js';
import { memName } from './block-helpers.js';

async function qcow2Image(size: number): Promise<string> {
  const name = memName('qcow2');
  await bdrvCreate(name, { format: 'qcow2', options: { size } });
  return name;
}

describe('compressed writes', () => {
  it('split a multi-cluster request, read back, and pad the file on the empty request', async () => {
    const name = await qcow2Image(1 << 20);
    const bs = await BlockDriverState.open(name, { format: 'qcow2' });
    try {
      expect(bs.supportsCompressedWrites).toBe(true);
      const data = new Uint8Array(3 * 65536);
      for (let i = 0; i < data.length; i++) data[i] = (i >> 9) & 0xff;
      await bs.pwritevCompressed(65536, IOVector.from(data));
      const back = new Uint8Array(data.length);
      await bs.pread(65536, back);
      expect(back).toEqual(data);
      expect((await bs.getInfo()).clusterSize).toBe(65536);
      const st = memStoreGet(name.slice(4));
      if (!st) throw new Error('no store');
      expect(st.length % 512).not.toBe(0);
      await bs.pwritevCompressed(0, new IOVector());
      expect(st.length % 512).toBe(0);
      // The tail cluster may be short; anything else that is not whole clusters is refused
      // before a byte is written.
      await bs.pwritevCompressed((1 << 20) - 65536, IOVector.from(new Uint8Array(65536).fill(9)));
      const before = st.length;
      await expect(bs.pwritevCompressed(4 * 65536, IOVector.from(new Uint8Array(65536 + 512)))).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(bs.pwritevCompressed(512, IOVector.from(new Uint8Array(65536)))).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(bs.pwritevCompressed(1 << 20, IOVector.from(new Uint8Array(65536)))).rejects.toMatchObject({ code: 'EIO' });
      expect(st.length).toBe(before);
    } finally {
      await bs.close();
    }
  });

  it('is refused where the driver cannot compress, and on read-only nodes', async () => {
    const raw = memName('raw');
    await bdrvCreate(raw, { format: 'raw', options: { size: 1 << 20 } });
    const bs = await BlockDriverState.open(raw, { format: 'raw' });
    try {
      expect(bs.supportsCompressedWrites).toBe(false);
      await expect(bs.pwritevCompressed(0, IOVector.from(new Uint8Array(65536)))).rejects.toMatchObject({ code: 'ENOTSUP' });
    } finally {
      await bs.close();
    }
    const name = await qcow2Image(1 << 20);
    const ro = await BlockDriverState.open(name, { format: 'qcow2', readOnly: true });
    try {
      await expect(ro.pwritevCompressed(0, IOVector.from(new Uint8Array(65536)))).rejects.toMatchObject({ code: 'EACCES' });
    } finally {
      await ro.close();
    }
  });
});
