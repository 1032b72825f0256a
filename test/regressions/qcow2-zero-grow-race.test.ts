/**
 * Found by the qcow2 concurrency fuzz (seed 20261202): a write-zeroes up to the end of an
 * image whose size is not cluster aligned, concurrent with a truncate that grows the image
 * inside that last cluster. The zero request decided "this piece ends the image" before it
 * took s.lock; by then the image had grown, the piece ended inside the cluster, and the
 * subcluster path wrote an extended-L2 zero bit (bit 32) into an ordinary L2 entry: an
 * entry pointing at host offset 0x100000000, which check reports as a corruption.
 */
import { afterEach, expect, it } from 'vitest';
import { BlockDriverState, bdrvCreate } from '../../src/index.js';
import { memStoreDelete } from '../../src/drivers/mem/index.js';

const names: string[] = [];
afterEach(() => {
  for (const n of names.splice(0)) memStoreDelete(n);
});

for (const order of ['zero first', 'grow first'] as const) {
  it(`a write-zeroes to the image end and a grow inside its cluster, ${order}: check stays clean`, async () => {
    const store = `zero-grow-race-${order.replace(' ', '-')}.qcow2`;
    names.push(store);
    await bdrvCreate(`mem:${store}`, { format: 'qcow2', options: { size: 512, clusterSize: 1024 } });
    const bs = await BlockDriverState.open(`mem:${store}`, { format: 'qcow2' });
    try {
      await bs.pwrite(0, new Uint8Array(512).fill(5));
      const zero = (): Promise<void> => bs.writeZeroes(0, 512);
      const grow = (): Promise<void> => bs.truncate(1024);
      await Promise.all(order === 'zero first' ? [zero(), grow()] : [grow(), zero()]);
      const back = new Uint8Array(1024);
      await bs.pread(0, back);
      expect(back.findIndex((b) => b !== 0)).toBe(-1);
      const r = await bs.check();
      expect(r.corruptions + r.leaks + r.checkErrors).toBe(0);
    } finally {
      await bs.close();
    }
  });
}
