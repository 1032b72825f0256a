import { afterEach, describe, expect, it } from 'vitest';
import { BlockDriverState, BlockError } from '../../src/index.js';
import { PowerLossStore, powerlossStoreCreate, powerlossStoreDelete } from '../../src/drivers/powerloss/index.js';

afterEach(() => {
  powerlossStoreDelete('pl');
});

/** Deterministic "random": cycles through the given choices. */
function scripted(choices: number[]): (n: number) => number {
  let i = 0;
  return (n) => choices[i++ % choices.length] % n;
}

function bytesOf(store: PowerLossStore, offset: number, len: number): number[] {
  const out = new Uint8Array(len);
  store.current.read(offset, [out], len);
  return [...out];
}

describe('PowerLossStore', () => {
  it('keeps flushed writes and drops unflushed ones when told to', () => {
    const s = new PowerLossStore(new Uint8Array(2048));
    s.write(0, [new Uint8Array(512).fill(1)], 512);
    s.flush();
    s.write(0, [new Uint8Array(512).fill(2)], 512);
    s.write(512, [new Uint8Array(512).fill(3)], 512);
    expect(bytesOf(s, 0, 1)).toEqual([2]);
    const rep = s.crash(scripted([0])); // drop everything pending
    expect(rep).toMatchObject({ pending: 2, dropped: 2, kept: 0 });
    expect(bytesOf(s, 0, 1)).toEqual([1]);
    expect(bytesOf(s, 512, 1)).toEqual([0]);
  });

  it('tears a write per 512-byte sector', () => {
    const s = new PowerLossStore(new Uint8Array(2048));
    s.write(256, [new Uint8Array(1024).fill(9)], 1024); // touches sectors 0, 1, 2
    // choice 2 = torn; then per sector: keep (1), drop (0), keep (1)
    s.crash(scripted([2, 1, 0, 1]));
    expect(bytesOf(s, 255, 2)).toEqual([0, 9]);
    expect(bytesOf(s, 511, 2)).toEqual([9, 0]);
    expect(bytesOf(s, 1023, 2)).toEqual([0, 9]);
    expect(bytesOf(s, 1279, 2)).toEqual([9, 0]);
  });

  it('a FUA write always survives, even after an older volatile write to the same bytes', () => {
    const s = new PowerLossStore(new Uint8Array(1024));
    s.write(0, [new Uint8Array(512).fill(1)], 512);
    s.write(0, [new Uint8Array(512).fill(2)], 512, true);
    s.crash(scripted([1])); // keep everything non-FUA too: order must be preserved
    expect(bytesOf(s, 0, 1)).toEqual([2]);
    s.write(0, [new Uint8Array(512).fill(3)], 512, true);
    s.crash(scripted([0]));
    expect(bytesOf(s, 0, 1)).toEqual([3]);
  });

  it('truncate is volatile too', () => {
    const s = new PowerLossStore(new Uint8Array(1024));
    s.truncate(4096);
    expect(s.length).toBe(4096);
    s.crash(scripted([0]));
    expect(s.length).toBe(1024);
  });

  it('failAfter cuts the power: later requests fail with EIO until the crash', () => {
    const s = new PowerLossStore(new Uint8Array(1024));
    s.failAfter(1);
    s.write(0, [new Uint8Array(1).fill(1)], 1);
    expect(() => s.write(1, [new Uint8Array(1)], 1)).toThrow(BlockError);
    expect(() => s.flush()).toThrow(/lost power/);
    s.crash(scripted([1]));
    expect(bytesOf(s, 0, 1)).toEqual([1]);
    s.write(0, [new Uint8Array(1).fill(5)], 1);
  });
});

describe('powerloss driver', () => {
  it('serves a raw image and loses what was not flushed', async () => {
    const store = powerlossStoreCreate('pl', new Uint8Array(8192));
    const bs = await BlockDriverState.open('powerloss:pl', { format: 'raw' });
    await bs.pwrite(0, new Uint8Array(512).fill(0xaa));
    await bs.flush();
    await bs.pwrite(512, new Uint8Array(512).fill(0xbb));
    const back = new Uint8Array(1);
    await bs.pread(512, back);
    expect(back[0]).toBe(0xbb);
    store.crash(() => 0);
    // the node keeps the store; a fresh open sees what survived
    const again = await BlockDriverState.open('powerloss:pl', { format: 'raw' });
    await again.pread(0, back);
    expect(back[0]).toBe(0xaa);
    await again.pread(512, back);
    expect(back[0]).toBe(0);
    await again.close();
    await bs.close();
  });

  it('open of a missing store is ENOENT', async () => {
    await expect(BlockDriverState.open('powerloss:nope', { format: 'raw' })).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('powerloss request latency', () => {
  it('a flush issued before a write completed may overtake it; one issued after it may not', async () => {
    for (const awaitWrite of [true, false]) {
      const st = powerlossStoreCreate('pl', new Uint8Array(4096));
      const bs = await BlockDriverState.open('powerloss:pl', { format: 'raw' });
      // Offset 1024 is sector 2: its write lands after three microtask turns, the flush after one.
      const w = bs.pwrite(1024, new Uint8Array(512).fill(7));
      if (awaitWrite) await w;
      await bs.flush();
      await w;
      st.crash(() => 0); // every volatile write lost
      const b = new Uint8Array(1);
      st.current.read(1024, [b], 1);
      expect(b[0]).toBe(awaitWrite ? 7 : 0);
      await bs.close();
    }
  });
});
