// The qcow2 metadata cache's lookups without a reference: the last-used table is answered
// without a map lookup, and must not outlive its removal.
import { describe, expect, it } from 'vitest';
import { Qcow2Cache } from '../../src/drivers/qcow2/cache.js';
import type { BlockDriverState } from '../../src/block/node.js';

function cache(): Qcow2Cache {
  const hooks = {
    file(): BlockDriverState {
      throw new Error('no file: nothing here reads or writes');
    },
    checkWrite(): void {},
  };
  return new Qcow2Cache('l2', 512, 4, hooks, 'l2_update');
}

describe('Qcow2Cache.lookup', () => {
  it('answers the last-used table, then another, then the first again', async () => {
    const c = cache();
    const a = await c.getEmpty(0x10000);
    const b = await c.getEmpty(0x20000);
    c.put(a);
    c.put(b);
    expect(c.lookup(0x20000)).toBe(b.data);
    expect(c.lookup(0x20000)).toBe(b.data);
    expect(c.lookup(0x10000)).toBe(a.data);
    expect(c.lookup(0x30000)).toBeUndefined();
    // The use moved a to the end of the LRU order.
    expect(c.offsets()).toEqual([0x20000, 0x10000]);
  });

  it('forgets the last-used table once discarded, cleared or reset', async () => {
    const c = cache();
    const a = await c.getEmpty(0x10000);
    c.put(a);
    expect(c.lookup(0x10000)).toBe(a.data);
    c.discard(0x10000);
    expect(c.lookup(0x10000)).toBeUndefined();
    c.put(await c.getEmpty(0x10000));
    expect(c.lookup(0x10000)).toBeDefined();
    c.clear();
    expect(c.lookup(0x10000)).toBeUndefined();
    c.put(await c.getEmpty(0x10000));
    c.reset();
    expect(c.lookupEntry(0x10000)).toBeUndefined();
  });
});
