/**
 * Interop matrix, corrupted images: every invalid header field must fail our open as it fails
 * QEMU 7.2's (`qemu-io -r -c quit`, `qemu-img info`), with QEMU's message; invalid, misplaced
 * or doubly used L1/L2 entries must be counted by our check exactly as `qemu-img check
 * --output=json` counts them, read the same (or fail the same), and be repaired to the same
 * bytes as `qemu-img check -r all`. A read-only open never writes, whatever the file holds.
 */
import { copyFileSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDriverState, BlockError } from '../../src/index.js';
import { firstDiff, setU64, u64 } from '../unit/qed-helpers.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';
import { applyOurs, ourCheck, qemuCheck, qemuIoBatch, qemuIoCmd, qemuOpenError, sha, type Op } from './qed-support.js';

const qemu = requireQemu();
const CS = 4096;
const M = 1 << 20;

function setU32(b: Uint8Array, off: number, v: number): void {
  new DataView(b.buffer, b.byteOffset).setUint32(off, v >>> 0, true);
}

/** Outcome of opening a file: null when it opened, else the error message. */
async function ourOpen(path: string, readOnly: boolean): Promise<string | null> {
  try {
    const bs = await BlockDriverState.open(path, { format: 'qed', readOnly, noBacking: true });
    await bs.close();
    return null;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

/** QEMU's outcome: null when both qemu-io -r and qemu-img info open it, else the message (both must agree). */
function qemuOpen(path: string): string | null {
  const io = runQemuIo(['-f', 'qed', '-r', '-c', 'quit', path]);
  const info = runQemuImg(['info', '-f', 'qed', path]);
  const ioMsg = io.status === 0 && io.stderr === '' ? null : qemuOpenError(io.stderr);
  const infoMsg = info.status === 0 ? null : qemuOpenError(info.stderr);
  expect(infoMsg).toBe(ioMsg);
  return ioMsg;
}

describe.skipIf(!qemu)('QED interop: corrupted images vs QEMU 7.2', () => {
  let dir = '';
  let pristine: Buffer = Buffer.alloc(0);
  let pristine64k: Buffer = Buffer.alloc(0);
  let n = 0;
  beforeAll(() => {
    dir = makeTempDir('qed-corrupt');
    // [header][L1: 2 clusters][data 0..2][L2 #0][data 5M][L2 #1][data 9M][data 1..]: 4K/ts=2.
    expect(runQemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=2', 'base.qed', '16M'], { cwd: dir }).status).toBe(0);
    qemuIoBatch('base.qed', ['write -q -P 1 0 12k', `write -q -P 2 ${5 * M} 4k`, `write -q -P 3 ${9 * M} 4k`, 'write -q -z 64k 16k', `write -q -P 4 ${5 * M + 8192} 4k`], ['-f', 'qed'], dir);
    pristine = readFileSync(join(dir, 'base.qed'));
    expect(runQemuImg(['create', '-q', '-f', 'qed', 'base64k.qed', '16M'], { cwd: dir }).status).toBe(0);
    pristine64k = readFileSync(join(dir, 'base64k.qed'));
  });
  afterAll(() => removeTempDir(dir));

  // -------------------------------------------------------------------------------------------
  // Header fields: the open fails (or succeeds) as QEMU's does, with QEMU's words.

  const F = 16; // features
  const headerCases: [string, (b: Buffer) => void, { big64k?: boolean; sparseLength?: number }?][] = [
    ['bad magic', (b) => b.write('QEX', 0, 'latin1')],
    ['unknown feature bit 0x08', (b) => setU64(b, F, 0x08)],
    ['unknown feature bits 0x30 with known ones', (b) => setU64(b, F, 0x33)],
    ['cluster size 0', (b) => setU32(b, 4, 0)],
    ['cluster size 2048 (too small)', (b) => setU32(b, 4, 2048)],
    ['cluster size 5000 (not a power of two)', (b) => setU32(b, 4, 5000)],
    ['cluster size 128M (too big)', (b) => setU32(b, 4, 128 * M)],
    ['table size 0', (b) => setU32(b, 8, 0)],
    ['table size 3', (b) => setU32(b, 8, 3)],
    ['table size 32', (b) => setU32(b, 8, 32)],
    ['image size not a multiple of 512', (b) => setU64(b, 48, 1000)],
    ['image size above the maximum (4K/ts=2: 4 GiB)', (b) => setU64(b, 48, 4 * 1024 * M + 512)],
    ['image size 2^63', (b) => setU64(b, 48, 1n << 63n)],
    ['l1 offset 0 (inside the header)', (b) => setU64(b, 40, 0)],
    ['l1 offset unaligned', (b) => setU64(b, 40, CS + 512)],
    ['l1 offset past EOF', (b) => setU64(b, 40, 1 << 30)],
    ['l1 table running past EOF', (b) => setU64(b, 40, b.length - CS)],
    ['l1 offset 2^63', (b) => setU64(b, 40, 1n << 63n)],
    ['header size 2 (L1 inside the header)', (b) => setU32(b, 12, 2)],
    ['header size 0', (b) => setU32(b, 12, 0)],
    [
      'header size too large (4 GiB header, L1 after it)',
      (b) => {
        setU32(b, 12, 0x100000);
        setU64(b, 40, 2 ** 32);
      },
      { sparseLength: 2 ** 32 + 3 * CS },
    ],
    [
      'backing name beyond the header cluster',
      (b) => {
        setU64(b, F, 1);
        setU32(b, 56, 4090);
        setU32(b, 60, 10);
      },
    ],
    [
      'backing name offset 0xffffffff',
      (b) => {
        setU64(b, F, 1);
        setU32(b, 56, 0xffffffff);
        setU32(b, 60, 2);
      },
    ],
    [
      'backing name of 5000 bytes (fits a 64K header, not QEMU\'s PATH_MAX)',
      (b) => {
        setU64(b, F, 1);
        setU32(b, 56, 64);
        setU32(b, 60, 5000);
      },
      { big64k: true },
    ],
    [
      'backing flag with an empty name (opens: no backing file)',
      (b) => {
        setU64(b, F, 1);
        setU32(b, 56, 64);
        setU32(b, 60, 0);
      },
    ],
    ['unknown compat feature (opens)', (b) => setU64(b, 24, 0x10)],
    ['unknown autoclear feature (opens)', (b) => setU64(b, 32, 0x10)],
  ];

  for (const [what, corrupt, opt] of headerCases) {
    it(`header: ${what}`, async () => {
      const path = join(dir, `h-${++n}.qed`);
      const bytes = Buffer.from(opt?.big64k ? pristine64k : pristine);
      corrupt(bytes);
      writeFileSync(path, bytes);
      if (opt?.sparseLength !== undefined) truncateSync(path, opt.sparseLength);
      const before = sha(path);
      const theirs = qemuOpen(path);
      expect(sha(path)).toBe(before);
      const ro = await ourOpen(path, true);
      expect(sha(path)).toBe(before); // read-only: never written
      if (theirs === null) {
        expect(ro).toBeNull();
      } else {
        expect(ro).not.toBeNull();
        expect(ro).toContain(theirs);
        // A failing read-write open writes nothing either.
        expect(await ourOpen(path, false)).toContain(theirs);
        expect(sha(path)).toBe(before);
      }
    });
  }

  it('header: a read-write open clears unknown autoclear bits exactly as QEMU does', async () => {
    const a = join(dir, 'ac-q.qed');
    const b = join(dir, 'ac-o.qed');
    const bytes = Buffer.from(pristine);
    setU64(bytes, 32, 0x30);
    writeFileSync(a, bytes);
    writeFileSync(b, bytes);
    qemuIoBatch(a, ['read -q 0 512'], ['-f', 'qed'], dir);
    const bs = await BlockDriverState.open(b, { format: 'qed' });
    await bs.close();
    expect(u64(readFileSync(a), 32)).toBe(0);
    expect(firstDiff(readFileSync(b), readFileSync(a))).toBe(-1);
  });

  // -------------------------------------------------------------------------------------------
  // Table entries: check, reads and repair as QEMU.

  const L1 = CS;
  const l2a = (b: Uint8Array): number => u64(b, L1); // maps 0..4M
  const l2b = (b: Uint8Array): number => u64(b, L1 + 8); // maps 4M..8M
  const entryCases: [string, (b: Buffer) => void][] = [
    ['L1 entry inside the header (512)', (b) => setU64(b, L1 + 8, 512)],
    ['L1 entry 1 (no zero marker in L1)', (b) => setU64(b, L1 + 16, 1)],
    ['L1 entry unaligned', (b) => setU64(b, L1 + 8, l2b(b) + 512)],
    ['L1 entry past EOF', (b) => setU64(b, L1 + 8, 1 << 30)],
    ['L1 entry whose table runs past EOF', (b) => setU64(b, L1 + 24, b.length - CS)],
    ['L1 entry pointing at the L1 table', (b) => setU64(b, L1 + 24, L1)],
    ['two L1 entries pointing at one L2 table', (b) => setU64(b, L1 + 24, l2a(b))],
    ['L1 entry pointing at a data cluster', (b) => setU64(b, L1 + 24, u64(b, l2a(b)))],
    ['L2 entry inside the header (512)', (b) => setU64(b, l2a(b) + 8, 512)],
    ['L2 entry unaligned', (b) => setU64(b, l2a(b) + 8, u64(b, l2a(b)) + 100)],
    ['L2 entry past EOF', (b) => setU64(b, l2a(b), 1 << 30)],
    ['L2 entry at EOF exactly', (b) => setU64(b, l2a(b) + 40, b.length)],
    ['two L2 entries pointing at one cluster', (b) => setU64(b, l2a(b) + 8, u64(b, l2a(b)))],
    ['L2 entries in two tables pointing at one cluster', (b) => setU64(b, l2b(b) + 8 * 300, u64(b, l2a(b)))],
    ['L2 entry pointing into the L1 table', (b) => setU64(b, l2a(b) + 16, L1 + CS)],
    ['L2 entry pointing at an L2 table', (b) => setU64(b, l2a(b) + 40, l2b(b))],
    ['a leaked cluster', (b) => setU64(b, l2a(b) + 16, 0)],
    [
      'several at once (past EOF, unaligned, double reference)',
      (b) => {
        setU64(b, l2a(b) + 8, 1 << 30);
        setU64(b, l2b(b) + 8 * 256, 12345);
        setU64(b, l2b(b) + 8 * 257, u64(b, l2a(b)));
        setU64(b, L1 + 32, 1 << 40);
      },
    ],
  ];

  const writeOps: Op[] = [
    { kind: 'write', off: 0, len: 16 * 1024, pat: 9 }, // in place and allocating in table #0
    { kind: 'write', off: 5 * M, len: 8 * 1024, pat: 10 }, // table #1
    { kind: 'write', off: 12 * M, len: 4096, pat: 11 }, // a new table for L1[3]
    { kind: 'zero', off: 64 * 1024, len: 16 * 1024 }, // zero clusters over existing ones
    { kind: 'write', off: 9 * M + 512, len: 512, pat: 12 }, // L1[2]
    { kind: 'write', off: 4 * M + 300 * 4096, len: 4096, pat: 13 },
  ];
  const strerror: Record<string, string> = { EINVAL: 'Invalid argument', EIO: 'Input/output error' };

  for (const [what, corrupt] of entryCases) {
    it(`tables: ${what}`, async () => {
      const name = `e-${++n}`;
      const path = join(dir, `${name}.qed`);
      const bytes = Buffer.from(pristine);
      corrupt(bytes);
      writeFileSync(path, bytes);
      for (const copy of ['q', 'o', 'ro', 'dirty-q', 'dirty-o']) copyFileSync(path, join(dir, `${name}.${copy}.qed`));
      const before = sha(path);

      // Check, field by field (files are tiny: no phantom leaks).
      const q = qemuCheck(path);
      expect(q.fields.corruptions + q.fields.leaks).toBeGreaterThan(0);
      expect(await ourCheck(path)).toEqual(q.fields);
      expect(sha(path)).toBe(before);

      // Reads: QEMU's whole-disk conversion succeeds exactly when our whole-disk read does,
      // and then gives the same bytes.
      const rawOut = join(dir, `${name}.raw`);
      const conv = runQemuImg(['convert', '-f', 'qed', '-O', 'raw', path, rawOut]);
      const ro = await BlockDriverState.open(join(dir, `${name}.ro.qed`), { format: 'qed', readOnly: true });
      const mine = new Uint8Array(16 * M);
      let readError: string | null = null;
      try {
        await ro.pread(0, mine);
      } catch (e) {
        readError = e instanceof Error ? e.message : String(e);
      }
      await ro.close();
      expect(sha(join(dir, `${name}.ro.qed`))).toBe(before);
      expect({ qemuFailed: conv.status !== 0, weFailed: readError !== null }).toEqual({
        qemuFailed: conv.status !== 0,
        weFailed: conv.status !== 0,
      });
      if (conv.status === 0) expect(firstDiff(mine, readFileSync(rawOut))).toBe(-1);

      // Repair: qemu-img check -r all and ours give the same result and the same bytes.
      const qr = qemuCheck(join(dir, `${name}.q.qed`), ['-r', 'all']);
      const bs = await BlockDriverState.open(join(dir, `${name}.o.qed`), { format: 'qed', check: true, noBacking: true });
      const fixed = await bs.check({ errors: true, leaks: true });
      await bs.close();
      expect({ corruptions: fixed.corruptions, leaks: fixed.leaks, corruptionsFixed: fixed.corruptionsFixed, checkErrors: fixed.checkErrors }).toEqual({
        corruptions: qr.fields.corruptions,
        leaks: qr.fields.leaks,
        corruptionsFixed: qr.fields.corruptionsFixed,
        checkErrors: qr.fields.checkErrors,
      });
      expect(firstDiff(readFileSync(join(dir, `${name}.o.qed`)), readFileSync(join(dir, `${name}.q.qed`)))).toBe(-1);

      // The same corruption in a dirty image: our read-write open repairs it as check -r all
      // does (QEMU 7.2 then clears NEED_CHECK even when corruption remains; we keep it, qed-format.md §17.5).
      for (const copy of ['dirty-q', 'dirty-o']) {
        const p = join(dir, `${name}.${copy}.qed`);
        const b = readFileSync(p);
        b[F] |= 2;
        writeFileSync(p, b);
      }
      runQemuImg(['check', '-q', '-f', 'qed', '-r', 'all', join(dir, `${name}.dirty-q.qed`)]);
      const dirty = await BlockDriverState.open(join(dir, `${name}.dirty-o.qed`), { format: 'qed', noBacking: true });
      await dirty.close();
      const theirs = readFileSync(join(dir, `${name}.dirty-q.qed`));
      const ours = readFileSync(join(dir, `${name}.dirty-o.qed`));
      if (qr.fields.corruptions > 0) {
        expect(ours[F] & 2).toBe(2);
        expect(theirs[F] & 2).toBe(0);
        theirs[F] |= 2;
      }
      expect(firstDiff(ours, theirs)).toBe(-1);

      // Writes into the corrupted image (clean header, so no repair at open): every write
      // succeeds or fails as QEMU's does, with the same errno, and the files end up identical.
      const wq = join(dir, `${name}.wq.qed`);
      const wo = join(dir, `${name}.wo.qed`);
      copyFileSync(path, wq);
      copyFileSync(path, wo);
      const qemuOutcomes = writeOps.map((op) => {
        const r = runQemuIo(['-f', 'qed', '-c', qemuIoCmd(op), wq]);
        const m = /(?:write|aio_write) failed: (.*)/.exec(r.stdout + r.stderr);
        return m ? m[1].trim() : 'ok';
      });
      // One open per write, as one qemu-io per write: a write through an aliased table can
      // change what another table reads as, and caches would only hide it on one side.
      const ourOutcomes: string[] = [];
      for (const op of writeOps) {
        const w = await BlockDriverState.open(wo, { format: 'qed', noBacking: true });
        try {
          await applyOurs(w, op);
          ourOutcomes.push('ok');
        } catch (e) {
          ourOutcomes.push(e instanceof BlockError ? (strerror[e.code] ?? e.code) : String(e));
        } finally {
          await w.close();
        }
      }
      expect(ourOutcomes).toEqual(qemuOutcomes);
      expect(firstDiff(readFileSync(wo), readFileSync(wq))).toBe(-1);
    });
  }
});
