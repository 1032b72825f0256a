// zstd compressed writes (compression_type=zstd): one frame per cluster that the pure decoder
// reads back, incompressible clusters stored as they are, and the WebAssembly encoder loaded
// on the first zstd compressed write only.
import { describe, expect, it } from 'vitest';
import { bdrvCreate } from '../../src/block/create.js';
import { memStoreGet } from '../../src/drivers/mem/index.js';
import { BlockDriverState, IOVector } from '../../src/index.js';
import { memName } from './block-helpers.js';

// Count WebAssembly instantiations from here on: the encoder is the only wasm this file loads.
let instantiations = 0;
const instantiate = WebAssembly.instantiate.bind(WebAssembly) as (...a: unknown[]) => Promise<unknown>;
(WebAssembly as { instantiate: unknown }).instantiate = (...a: unknown[]): Promise<unknown> => {
  instantiations++;
  return instantiate(...a);
};

const CS = 65536;

async function image(ctype: 'zlib' | 'zstd', clusterSize = CS): Promise<{ name: string; bs: BlockDriverState }> {
  const name = memName('qcow2');
  await bdrvCreate(name, { format: 'qcow2', options: { size: 4 << 20, compressionType: ctype, clusterSize } });
  return { name, bs: await BlockDriverState.open(name, { format: 'qcow2' }) };
}

function noise(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0, x = seed; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

describe('qcow2 zstd compressed writes', () => {
  it('load the encoder on the first zstd compressed write only', async () => {
    const z = await image('zlib');
    try {
      await z.bs.pwritevCompressed(0, IOVector.from(new Uint8Array(CS).fill(1)));
    } finally {
      await z.bs.close();
    }
    const { bs } = await image('zstd');
    try {
      await bs.pwrite(0, new Uint8Array(CS).fill(2));
      expect(instantiations).toBe(0);
      await bs.pwritevCompressed(CS, IOVector.from(new Uint8Array(CS).fill(3)));
      expect(instantiations).toBe(1);
      await bs.pwritevCompressed(2 * CS, IOVector.from(new Uint8Array(CS).fill(4)));
      expect(instantiations).toBe(1);
    } finally {
      await bs.close();
    }
  });

  it('store one frame per cluster, read back through the pure decoder', async () => {
    for (const cs of [512, 4096, CS, 2 << 20]) {
      const { name, bs } = await image('zstd', cs);
      try {
        const text = new TextEncoder().encode('zstd clusters are single frames; '.repeat(Math.ceil(cs / 33))).subarray(0, cs);
        await bs.pwritevCompressed(0, IOVector.from(text));
        // Incompressible: written as an ordinary cluster, as QEMU does.
        const rnd = noise(cs, cs);
        await bs.pwritevCompressed(cs, IOVector.from(rnd));
        const back = new Uint8Array(2 * cs);
        await bs.pread(0, back);
        expect(Buffer.from(back).equals(Buffer.concat([text, rnd]))).toBe(true);
        const chk = await bs.check({});
        expect(chk.corruptions + chk.leaks + chk.checkErrors).toBe(0);
        expect(chk.compressedClusters, `cluster size ${cs}`).toBe(1);
        // One frame in the file, whose header says it holds the whole cluster.
        const st = memStoreGet(name.slice(4));
        if (!st) throw new Error('no store');
        const file = new Uint8Array(st.length);
        st.read(0, [file], file.length);
        expect(frameContentSizes(file)).toEqual([cs]);
      } finally {
        await bs.close();
      }
    }
  });
});

/** The content size in the header of each zstd frame found in `file` (RFC 8878, 3.1.1.1). */
function frameContentSizes(file: Uint8Array): number[] {
  const sizes: number[] = [];
  for (let i = 0; i + 4 <= file.length; i++) {
    if (file[i] !== 0x28 || file[i + 1] !== 0xb5 || file[i + 2] !== 0x2f || file[i + 3] !== 0xfd) continue;
    const fhd = file[i + 4];
    const single = (fhd >> 5) & 1;
    const fcsBytes = [single, 2, 4, 8][fhd >> 6];
    let at = i + 5 + (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3];
    let size = 0;
    for (let k = 0; k < fcsBytes; k++) size += file[at++] * 2 ** (8 * k);
    sizes.push(fcsBytes === 2 ? size + 256 : size);
  }
  return sizes;
}
