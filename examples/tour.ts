// The README's "A short tour of the API", as written there except for the import path. It
// creates disk.qed in the current directory. test/unit/examples.test.ts runs it and checks that
// the README shows this very code.
import { BlockBackend, bdrvCreate, isBlockError } from '../src/index.js';

await bdrvCreate('disk.qed', { format: 'qed', options: { size: 1 << 30 } });
const blk = await BlockBackend.open('disk.qed');          // format probed: qed; read-write

await blk.pwrite(4096, new Uint8Array(512).fill(0xab));   // any offset, any length
const buf = new Uint8Array(512);
await blk.pread(4096, buf);

const st = await blk.blockStatus(0, 1 << 20);             // { allocated, data, zero, pnum, offset }
console.log(st.allocated, st.pnum);                       // true 65536: the cluster just written
const past = await blk.pwrite(1 << 30, buf).catch((e: unknown) => e);
console.log(isBlockError(past, 'EIO'));                   // true: past the end, nothing written

const bs = blk.root!;                                     // the qed node; bs.file is the file node
console.log(bs.driver.formatName, bs.file?.driver.formatName);  // qed file
console.log(await bs.check());                            // { corruptions: 0, leaks: 0, ... }
await blk.close();                                        // waits for requests, flushes, closes
