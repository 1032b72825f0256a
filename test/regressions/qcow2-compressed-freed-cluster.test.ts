/**
 * Found by the qcow2 sequential fuzz (seeds 20261203 and 20261204, 512-byte clusters): the
 * host cluster that compressed clusters are packed into (s.freeByteOffset, QEMU's
 * free_byte_offset) can be freed while the driver still means to pack the next compressed
 * cluster after the last one: a rewrite of the only compressed cluster in it copies the data
 * out and drops its reference. The freed cluster was then allocated for ordinary guest data,
 * and the next compressed write took a second reference to it and wrote its bytes over that
 * data. The packing point is now dropped when its cluster's refcount reaches zero.
 */
import { afterEach, expect, it } from 'vitest';
import { BlockDriverState, IOVector, bdrvCreate } from '../../src/index.js';
import { memStoreDelete } from '../../src/drivers/mem/index.js';

const STORE = 'compressed-freed-cluster.qcow2';
afterEach(() => {
  memStoreDelete(STORE);
});

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (seed + (i >> 4)) & 0x7f;
  return b;
}

it('a compressed write after its packing cluster was freed and reused leaves other data alone', async () => {
  await bdrvCreate(`mem:${STORE}`, { format: 'qcow2', options: { size: 9216, clusterSize: 512 } });
  const bs = await BlockDriverState.open(`mem:${STORE}`, { format: 'qcow2' });
  try {
    const model = new Uint8Array(9216);
    const write = async (offset: number, data: Uint8Array): Promise<void> => {
      await bs.pwrite(offset, data);
      model.set(data, offset);
    };
    await write(512, new Uint8Array([9]));
    // Cluster 0 compressed: the packing point now lies inside its host cluster.
    const c0 = pattern(512, 1);
    await bs.pwritevCompressed(0, IOVector.from(c0));
    model.set(c0, 0);
    // A rewrite of cluster 0 (and more) copies it out and frees the compressed cluster's host
    // cluster, which the same write may take for its own data.
    await write(0, pattern(1025, 2));
    const c3 = pattern(512, 3);
    await bs.pwritevCompressed(1536, IOVector.from(c3));
    model.set(c3, 1536);
    const back = new Uint8Array(9216);
    await bs.pread(0, back);
    expect(back.findIndex((b, i) => b !== model[i])).toBe(-1);
    const r = await bs.check();
    expect(r.corruptions + r.leaks + r.checkErrors).toBe(0);
  } finally {
    await bs.close();
  }
});
