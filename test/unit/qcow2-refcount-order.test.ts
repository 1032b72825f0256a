// amend refcount_bits on images with 2 MiB clusters, where one refcount block counts millions
// of clusters and the refcount table names 256 Ki blocks, nearly all absent: every width in
// turn keeps the data and a clean check, and a width too narrow for a shared cluster is
// refused naming it.
import { afterEach, expect, it } from 'vitest';
import { BlockDriverState, BlockError, bdrvAmendOptions, bdrvCreate, bdrvSnapshotCreate } from '../../src/index.js';
import { memStoreDelete } from '../../src/drivers/mem/index.js';

const NAME = 'refcount-order.qcow2';
const MiB = 1 << 20;

afterEach(() => {
  memStoreDelete(NAME);
});

it('changes the refcount width of a 2 MiB-cluster image through every width', async () => {
  await bdrvCreate(`mem:${NAME}`, { format: 'qcow2', options: { size: 64 * MiB, clusterSize: 2 * MiB } });
  const bs = await BlockDriverState.open(`mem:${NAME}`, { format: 'qcow2' });
  try {
    const a = new Uint8Array(5 * MiB).map((_, i) => (i * 7) & 0xff);
    const b = new Uint8Array(MiB).fill(0x5a);
    await bs.pwrite(0, a);
    await bs.pwrite(60 * MiB, b);
    await bdrvSnapshotCreate(bs, { id: '', name: 's', vmStateSize: 0, dateSec: 0, dateNsec: 0, vmClockNsec: 0n, icount: 0n });
    for (const bits of [64, 2, 16]) {
      await bdrvAmendOptions(bs, { refcountBits: bits });
      expect((await bs.driver.getSpecificInfo?.(bs))?.data['refcount-bits']).toBe(bits);
      const r = await bs.check();
      expect(r.corruptions + r.leaks + r.checkErrors, `after refcount_bits=${bits}`).toBe(0);
      const gotA = new Uint8Array(a.length);
      const gotB = new Uint8Array(b.length);
      await bs.pread(0, gotA);
      await bs.pread(60 * MiB, gotB);
      // Compared by hand: toEqual on megabytes of typed array takes minutes.
      expect(gotA.findIndex((x, i) => x !== a[i])).toBe(-1);
      expect(gotB.findIndex((x, i) => x !== b[i])).toBe(-1);
    }
    // The snapshot shares the data clusters: a count of 2 does not fit in one bit.
    const refused = await bdrvAmendOptions(bs, { refcountBits: 1 }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(BlockError);
    expect((refused as BlockError).message).toMatch(/^Cannot decrease refcount entry width to 1 bits: Cluster at offset 0x[0-9a-f]+ has a refcount of 2/);
    expect((await bs.driver.getSpecificInfo?.(bs))?.data['refcount-bits']).toBe(16);
  } finally {
    await bs.close();
  }
}, 60_000);
