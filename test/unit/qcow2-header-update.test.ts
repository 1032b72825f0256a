// A full header rewrite cut by the power at every point, with every write torn per sector:
// the image must still open, with the old header or the new one (header-update.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { bdrvAmendOptions } from '../../src/block/amend.js';
import { bdrvCreate } from '../../src/block/create.js';
import { powerlossStoreDelete, powerlossStoreGet } from '../../src/drivers/powerloss/index.js';
import { qcow2State } from '../../src/drivers/qcow2/index.js';
import { BlockDriverState } from '../../src/index.js';
import { mulberry32 } from '../property/model.js';

const FILE = 'powerloss:qh';

afterEach(() => {
  powerlossStoreDelete('qh');
});

interface Seen {
  version: number;
  backing: string | null;
  format: string | null;
}

async function openQuiet(readOnly: boolean): Promise<BlockDriverState> {
  return BlockDriverState.open(FILE, { format: 'qcow2', noBacking: true, readOnly });
}

async function headerOf(bs: BlockDriverState): Promise<Seen> {
  const s = qcow2State(bs);
  return { version: s.header.version, backing: s.backingFile, format: s.backingFormat };
}

/** An image with a backing name, made durable; returns what its header says. */
async function setUp(compat: string, backing: string, format: string): Promise<Seen> {
  await bdrvCreate(FILE, { format: 'qcow2', options: { size: 1 << 20, compat } });
  const bs = await openQuiet(false);
  await bs.changeBackingFile(backing, format);
  const seen = await headerOf(bs);
  await bs.close();
  powerlossStoreGet('qh')!.flush();
  return seen;
}

/**
 * Run `update` with the power failing after `k` requests, for every k until it completes, and
 * for each cut several torn outcomes: every image opens and reads as `before` or `after`.
 */
async function cutEverywhere(compat: string, update: (bs: BlockDriverState) => Promise<void>, want: (s: Seen) => boolean): Promise<number> {
  let cuts = 0;
  for (let k = 0; ; k++) {
    for (let seed = 1; seed <= 12; seed++) {
      const before = await setUp(compat, 'old-backing.qcow2', 'qcow2');
      const store = powerlossStoreGet('qh')!;
      const bs = await openQuiet(false);
      store.failAfter(k);
      let done = true;
      try {
        await update(bs);
      } catch {
        done = false;
      }
      if (done && !store.dead) {
        await bs.close();
        return cuts;
      }
      store.failAfter(0);
      await bs.close().catch(() => undefined);
      store.crash(mulberry32(seed * 7919 + k));
      cuts++;
      const again = await openQuiet(true);
      const seen = await headerOf(again);
      await again.close();
      expect(JSON.stringify(seen) === JSON.stringify(before) || want(seen), `cut after ${k}, seed ${seed}: ${JSON.stringify(seen)}`).toBe(true);
      powerlossStoreDelete('qh');
    }
  }
}

describe('qcow2 header rewrite under power loss', () => {
  it('an upgrade of a v2 image whose header fits in one sector', async () => {
    const cuts = await cutEverywhere('0.10', (bs) => bdrvAmendOptions(bs, { compat: '1.1' }), (s) => s.version === 3 && s.backing === 'old-backing.qcow2' && s.format === 'qcow2');
    expect(cuts).toBeGreaterThan(0);
  });

  it('a downgrade to a header that fits in one sector', async () => {
    const cuts = await cutEverywhere('1.1', (bs) => bdrvAmendOptions(bs, { compat: '0.10' }), (s) => s.version === 2 && s.backing === 'old-backing.qcow2' && s.format === 'qcow2');
    expect(cuts).toBeGreaterThan(0);
  });

  it('a new backing file on a v3 image, both headers past sector 0', async () => {
    const name = 'a-new-backing-file-with-a-longer-name.raw';
    const cuts = await cutEverywhere('1.1', (bs) => bs.changeBackingFile(name, 'raw'), (s) => s.version === 3 && s.backing === name && s.format === 'raw');
    expect(cuts).toBeGreaterThan(0);
  });
});
