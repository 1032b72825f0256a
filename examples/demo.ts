/**
 * The first thing a new user runs: a QED image over a raw backing file, in a temp dir.
 * Writes through the overlay, reads back, and shows what the image looks like afterwards.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockBackend, bdrvCreate } from '../src/index.js';
import { main as blkImg } from '../src/tools/img/main.js';

const KiB = 1024;
const MiB = 1024 * KiB;

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'blocklayer-demo-'));
  try {
    const basePath = join(dir, 'base.raw');
    const overlayPath = join(dir, 'overlay.qed');

    // 1. A raw base image with a recognisable pattern in its first megabyte.
    await bdrvCreate(basePath, { format: 'raw', options: { size: 4 * MiB } });
    const base = await BlockBackend.open(basePath, { format: 'raw' });
    await base.pwrite(0, new Uint8Array(1 * MiB).fill(0xba));
    await base.close();
    console.log(`created ${basePath}: 4 MiB raw, first 1 MiB filled with 0xba`);

    // 2. A QED overlay on top of it: reads fall through to the base until written.
    await bdrvCreate(overlayPath, {
      format: 'qed',
      options: { size: 8 * MiB, clusterSize: 64 * KiB, backingFile: 'base.raw', backingFmt: 'raw' },
    });
    const blk = await BlockBackend.open(overlayPath);
    const top = blk.root!; // the qed node: what the image records about itself
    console.log(`created ${overlayPath}: 8 MiB qed, backing file ${top.backingFile} (${top.backingFormat})`);

    // 3. A write that lands in the middle of a cluster: the rest of the cluster is copied
    //    from the base (copy-on-write), so the base's pattern survives around our bytes.
    await blk.pwrite(100 * KiB, new Uint8Array(8 * KiB).fill(0x42));
    console.log('wrote 8 KiB of 0x42 at offset 100 KiB');

    const back = new Uint8Array(16 * KiB);
    await blk.pread(96 * KiB, back);
    console.log(
      `read 16 KiB at 96 KiB: ${describe(back.subarray(0, 4 * KiB))} | ${describe(back.subarray(4 * KiB, 12 * KiB))} | ${describe(back.subarray(12 * KiB))}`,
    );
    const beyond = new Uint8Array(4);
    await blk.pread(2 * MiB, beyond);
    console.log(`read at 2 MiB (past the base's data): ${describe(beyond)}`);

    // 4. Where the data lives now: blockStatusAbove walks the chain (depth 0 = the overlay).
    console.log('\nblock status through the chain:');
    const length = await blk.getLength();
    for (let offset = 0; offset < length; ) {
      const st = await blk.blockStatusAbove(offset, length - offset);
      const where = st.data ? (st.depth === 0 ? 'overlay.qed' : 'base.raw') : 'zeros';
      console.log(`  ${offset.toString().padStart(8)} +${st.pnum.toString().padStart(8)}  depth ${st.depth}  ${where}`);
      offset += st.pnum;
    }
    await blk.close();

    // 5. The same image through blk-img, which prints what qemu-img prints.
    for (const args of [['info', overlayPath], ['map', overlayPath], ['check', overlayPath]]) {
      console.log(`\n$ blk-img ${args.join(' ')}`);
      const code = await blkImg(['node', 'blk-img', ...args]);
      if (code !== 0) throw new Error(`blk-img ${args[0]} exited with ${code}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function describe(buf: Uint8Array): string {
  const first = buf[0];
  const uniform = buf.every((b) => b === first);
  return uniform ? `${buf.length} bytes of 0x${first.toString(16).padStart(2, '0')}` : `${buf.length} mixed bytes`;
}

await main();
