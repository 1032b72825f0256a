/**
 * Interop matrix, direction "QEMU -> ours": images qemu-img creates and qemu-io writes, across
 * geometries and backing files, read here byte for byte like `qemu-img convert -O raw` reads
 * them, mapped like `qemu-img map`, checked like `qemu-img check`. Then dirty images left by
 * a qemu-io that aborted mid-session: our read-write open repairs them as QEMU does, our
 * read-only open leaves them alone.
 */
import { closeSync, copyFileSync, openSync, readFileSync, readSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDriverState, bdrvCreate } from '../../src/index.js';
import { firstDiff, u64 } from '../unit/qed-helpers.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';
import {
  applyOurs,
  matrixBackingLength,
  matrixBackings,
  matrixGeometries,
  matrixL2Span,
  matrixOps,
  ourCheck,
  ourMap,
  qemuCheck,
  qemuIoBatch,
  qemuIoCmd,
  qemuMap,
  sha,
  type MatrixBacking,
  type MatrixGeometry,
  type Op,
} from './qed-support.js';

const qemu = requireQemu();
const K = 1024;
const M = 1024 * K;

/** Bytes [start, end) of a (sparse) file, zero-padded past its end. */
function fileRange(path: string, start: number, end: number): Uint8Array {
  const out = new Uint8Array(end - start);
  const fd = openSync(path, 'r');
  try {
    let done = 0;
    while (done < out.length) {
      const n = readSync(fd, out, done, out.length - done, start + done);
      if (n === 0) break;
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

describe.skipIf(!qemu)('QED interop: images QEMU 7.2 creates and writes, read by us', () => {
  let dir = '';
  let n = 0;
  beforeAll(() => {
    dir = makeTempDir('qed-theirs');
  });
  afterAll(() => removeTempDir(dir));

  function qemuImg(args: string[]): void {
    const r = runQemuImg(args, { cwd: dir });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  }

  function qemuReadAllRaw(img: string): Buffer {
    qemuImg(['convert', '-O', 'raw', img, `${img}.raw`]);
    return readFileSync(join(dir, `${img}.raw`));
  }

  /** A backing file written by QEMU tools; returns its name and format. */
  function makeBacking(kind: MatrixBacking, size: number): { name: string; fmt: string } | null {
    if (kind === 'none') return null;
    const name = `base-${++n}.${kind === 'qed' ? 'qed' : 'raw'}`;
    const len = matrixBackingLength(kind, size);
    if (kind === 'qed') {
      qemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=2', name, String(len)]);
      qemuIoBatch(name, ['write -q -P 0x71 0 256k', `write -q -P 0x72 ${4 * M - 4 * K} 12k`, 'write -q -z 64k 64k'], ['-f', 'qed'], dir);
    } else {
      qemuImg(['create', '-q', '-f', 'raw', name, String(len)]);
      const cmds: string[] = [];
      for (let off = 0; off < len; off += 256 * K) cmds.push(`write -q -P ${((off / 4096) * 37 + 5) & 0xff} ${off} ${Math.min(256 * K, len - off)}`);
      qemuIoBatch(name, cmds, ['-f', 'raw'], dir);
    }
    return { name, fmt: kind === 'qed' ? 'qed' : 'raw' };
  }

  async function scenario(g: MatrixGeometry, kind: MatrixBacking): Promise<void> {
    const backing = makeBacking(kind, g.size);
    const img = `theirs-${++n}.qed`;
    const path = join(dir, img);
    qemuImg([
      'create',
      '-q',
      '-f',
      'qed',
      '-o',
      `cluster_size=${g.cs},table_size=${g.ts}`,
      ...(backing ? ['-b', backing.name, '-F', backing.fmt] : []),
      img,
      String(g.size),
    ]);
    const ops: Op[] = matrixOps(g.cs, matrixL2Span(g), g.size);
    qemuIoBatch(img, ops.map(qemuIoCmd), ['-f', 'qed'], dir);
    const before = sha(path);

    // What QEMU reads: the whole disk converted to a (sparse) raw file.
    const raw = join(dir, `${img}.raw`);
    qemuImg(['convert', '-f', 'qed', '-O', 'raw', img, `${img}.raw`]);
    expect(statSync(raw).size).toBe(g.size);

    const bs = await BlockDriverState.open(path, { readOnly: true });
    // Small disks are compared whole; big sparse ones around every operation and at both ends
    // (the map comparison below covers the untouched space).
    const windows: [number, number][] =
      g.size <= 64 * M
        ? [[0, g.size]]
        : [[0, 4 * M], [g.size - 4 * M, g.size], ...ops.map((op): [number, number] => [Math.max(0, op.off - g.cs), Math.min(g.size, op.off + op.len + g.cs)])];
    for (const [a, b] of windows) {
      const mine = new Uint8Array(b - a);
      await bs.pread(a, mine);
      expect({ window: a, diff: firstDiff(mine, fileRange(raw, a, b)) }).toEqual({ window: a, diff: -1 });
    }
    expect(await ourMap(bs)).toEqual(qemuMap(img, dir));
    await bs.close();

    // Our check agrees with qemu-img check field by field.
    const q = qemuCheck(path);
    expect(q.fields).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
    expect(await ourCheck(path)).toEqual(q.fields);
    // Read-only opens and checks never wrote a byte.
    expect(sha(path)).toBe(before);
  }

  for (const g of matrixGeometries) {
    for (const b of matrixBackings) {
      it(`${g.name}, backing: ${b}`, async () => {
        await scenario(g, b);
      });
    }
  }
  it('4K/ts=2, backing: raw-long (longer than the image)', async () => {
    await scenario(matrixGeometries[0], 'raw-long');
  });

  // -------------------------------------------------------------------------------------------
  // Dirty images left by an aborted qemu-io.

  const CS = 4096;

  /** qemu-io runs `cmds` and then abort()s: no close path, so NEED_CHECK stays set (no backing). */
  function writeThenAbort(img: string, cmds: string[]): void {
    const args = ['-f', 'qed'];
    for (const c of cmds) args.push('-c', c);
    const r = runQemuIo([...args, '-c', 'abort', img], { cwd: dir });
    // Killed by SIGABRT: the shell would say 134; spawnSync reports no exit status.
    expect(r.status === null || r.status === 134).toBe(true);
  }

  function features(path: string): number {
    return u64(readFileSync(path), 16);
  }

  /**
   * Compare our repair with QEMU's on copies of one dirty file: `qemu-img check -r all`, our
   * read-write open + close, and (when `qemuOpen`) QEMU's own read-write open + close.
   */
  async function repairParity(path: string, opts: { qemuOpen: boolean; stillDirty: boolean }): Promise<void> {
    const viaCheck = `${path}.chk`;
    const viaOurs = `${path}.ours`;
    const viaRo = `${path}.ro`;
    const viaQemuOpen = `${path}.qopen`;
    for (const p of [viaCheck, viaOurs, viaRo, viaQemuOpen]) copyFileSync(path, p);
    const dirtyCheck = qemuCheck(path);
    expect(await ourCheck(path)).toEqual(dirtyCheck.fields);

    runQemuImg(['check', '-q', '-f', 'qed', '-r', 'all', viaCheck]);
    const bs = await BlockDriverState.open(viaOurs);
    await bs.close();
    const mine = readFileSync(viaOurs);
    const theirs = readFileSync(viaCheck);
    expect((features(viaOurs) & 2) !== 0).toBe(opts.stillDirty);
    if (opts.stillDirty) {
      // QEMU 7.2's close clears NEED_CHECK even though corruption remains (qed-format.md §11 quirk b); we
      // keep it (qed-format.md §17.5). Everything else is the same bytes.
      expect(features(viaCheck) & 2).toBe(0);
      theirs[16] |= 2;
    }
    expect(firstDiff(mine, theirs)).toBe(-1);
    // The repaired files check the same.
    expect(await ourCheck(viaOurs)).toEqual(qemuCheck(viaCheck).fields);

    if (opts.qemuOpen) {
      qemuIoBatch(viaQemuOpen, ['read -q 0 512'], ['-f', 'qed'], dir);
      expect(firstDiff(readFileSync(viaOurs), readFileSync(viaQemuOpen))).toBe(-1);
    }

    // A read-only open (and reads through it) leaves the dirty file untouched.
    const before = sha(viaRo);
    const ro = await BlockDriverState.open(viaRo, { readOnly: true });
    const buf = new Uint8Array(64 * K);
    await ro.pread(0, buf);
    expect((await ro.getInfo()).isDirty).toBe(true);
    await ro.close();
    expect(sha(viaRo)).toBe(before);
  }

  it('dirty after abort (no backing): our read-write open repairs it as qemu-img check -r all and QEMU open do', async () => {
    const img = join(dir, 'dirty1.qed');
    qemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=2', 'dirty1.qed', '16M']);
    writeThenAbort(img, ['write -q -P 1 0 12k', `write -q -P 2 ${5 * M} 4k`, 'write -q -z 64k 64k']);
    expect(features(img) & 2).toBe(2);
    await repairParity(img, { qemuOpen: true, stillDirty: false });
  });

  it('dirty after abort with lost clusters (entries past EOF): repaired the same way', async () => {
    const img = join(dir, 'dirty2.qed');
    qemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=2', 'dirty2.qed', '16M']);
    qemuIoBatch('dirty2.qed', ['write -q -P 1 0 8k', `write -q -P 3 ${5 * M} 4k`], ['-f', 'qed'], dir);
    // Second session: three more data clusters appended to existing L2 tables, then a crash
    // that (we pretend) lost the last two clusters of the file: their L2 entries point past EOF.
    writeThenAbort(img, ['write -q -P 4 16k 8k', `write -q -P 5 ${5 * M + 8 * K} 4k`]);
    const len = readFileSync(img).length;
    truncateSync(img, len - 2 * CS);
    const q = qemuCheck(img);
    expect(q.fields.corruptions).toBe(2);
    await repairParity(img, { qemuOpen: true, stillDirty: false });
  });

  it('dirty after abort with a lost L2 table (L1 entry past EOF): repaired the same way', async () => {
    const img = join(dir, 'dirty3.qed');
    qemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=2', 'dirty3.qed', '16M']);
    writeThenAbort(img, ['write -q -P 1 0 8k', `write -q -P 2 ${9 * M} 4k`]);
    const len = readFileSync(img).length;
    truncateSync(img, len - 2 * CS); // the second L2 table is gone
    await repairParity(img, { qemuOpen: true, stillDirty: false });
  });

  it('dirty with a double reference (unrepairable): our open keeps NEED_CHECK (QEMU 7.2 clears it), the rest matches check -r all', async () => {
    const img = join(dir, 'dirty4.qed');
    qemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=2', 'dirty4.qed', '16M']);
    writeThenAbort(img, ['write -q -P 1 0 8k']);
    const bytes = readFileSync(img);
    const l2 = u64(bytes, CS);
    bytes.writeBigUInt64LE(BigInt(u64(bytes, l2)), l2 + 16); // entry 2 = entry 0
    writeFileSync(img, bytes);
    await repairParity(img, { qemuOpen: false, stillDirty: true });
  });

  it('after abort with a backing file the header stays clean and our open changes nothing', async () => {
    const base = makeBacking('raw', 16 * M)!;
    const img = join(dir, 'dirty5.qed');
    qemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=2', '-b', base.name, '-F', 'raw', 'dirty5.qed', '16M']);
    writeThenAbort(img, ['write -q -P 1 1k 8k', `write -q -P 2 ${5 * M} 4k`]);
    expect(features(img) & 2).toBe(0);
    const before = sha(img);
    const bs = await BlockDriverState.open(img);
    const got = new Uint8Array(8 * K);
    await bs.pread(1024, got);
    expect(got.every((b) => b === 1)).toBe(true);
    await bs.close();
    expect(sha(img)).toBe(before);
    expect(await ourCheck(img)).toEqual(qemuCheck(img).fields);
  });

  // -------------------------------------------------------------------------------------------
  // A two-cluster header region (valid per the spec, never created by QEMU) holding a backing
  // name longer than one cluster: both sides read, write, check and rebase it alike.

  it('header_size=2 with a 4040-byte backing name: QEMU and we write, read, check and rebase it alike', async () => {
    const base = makeBacking('raw', 16 * M)!;
    const pad = (len: number, name: string): string => `${'./'.repeat(Math.floor((len - name.length) / 2))}${(len - name.length) % 2 ? '/' : ''}${name}`;
    const longName = pad(4040, base.name);
    expect(longName.length).toBe(4040);
    const fresh = Buffer.alloc(4 * CS);
    fresh.write('QED\0', 0, 'latin1');
    fresh.writeUInt32LE(CS, 4);
    fresh.writeUInt32LE(2, 8);
    fresh.writeUInt32LE(2, 12); // header_size
    fresh.writeBigUInt64LE(0x05n, 16); // BACKING_FILE | NO_PROBE
    fresh.writeBigUInt64LE(BigInt(2 * CS), 40); // L1 after the header region
    fresh.writeBigUInt64LE(BigInt(16 * M), 48);
    fresh.writeUInt32LE(64, 56);
    fresh.writeUInt32LE(longName.length, 60);
    fresh.write(longName, 64, 'latin1');
    const theirs = join(dir, 'hs2-q.qed');
    const ours = join(dir, 'hs2-o.qed');
    writeFileSync(theirs, fresh);
    writeFileSync(ours, fresh);
    const ops = matrixOps(CS, 4 * M, 16 * M);
    qemuIoBatch('hs2-q.qed', ops.map(qemuIoCmd), ['-f', 'qed'], dir);
    const bs = await BlockDriverState.open(ours);
    expect(bs.backingFile).toBe(longName);
    for (const op of ops) await applyOurs(bs, op);
    expect(await ourMap(bs)).toEqual(qemuMap('hs2-q.qed', dir));
    await bs.close();
    // qed-format.md §17.4 (a partial write into a zero cluster) differs only with backing data under it.
    const mine = readFileSync(ours);
    expect(mine.length).toBe(readFileSync(theirs).length);
    expect(qemuCheck(ours).fields).toEqual(await ourCheck(theirs));
    expect(qemuCheck(ours).fields).toMatchObject({ corruptions: 0, leaks: 0 });
    // Full-disk contents: QEMU reads ours as we read theirs, except the qed-format.md §17.4 cluster.
    const rawQ = join(dir, 'hs2-q.raw');
    const rawO = join(dir, 'hs2-o.raw');
    expect(runQemuImg(['convert', '-O', 'raw', theirs, rawQ]).status).toBe(0);
    expect(runQemuImg(['convert', '-O', 'raw', ours, rawO]).status).toBe(0);
    const a = readFileSync(rawQ);
    const b = readFileSync(rawO);
    const zeroWrite = 9 * CS; // cluster zeroed, then partly rewritten
    expect(firstDiff(a.subarray(0, zeroWrite), b.subarray(0, zeroWrite))).toBe(-1);
    expect(firstDiff(a.subarray(zeroWrite + CS), b.subarray(zeroWrite + CS))).toBe(-1);
    const back = new Uint8Array(16 * M);
    const rd = await BlockDriverState.open(theirs, { readOnly: true });
    await rd.pread(0, back);
    await rd.close();
    expect(firstDiff(back, a)).toBe(-1);
    // Rebase -u to another long name: same header bytes.
    const other = pad(4000, base.name);
    expect(runQemuImg(['rebase', '-u', '-f', 'qed', '-b', other, '-F', 'raw', theirs]).status).toBe(0);
    const rb = await BlockDriverState.open(ours, { noBacking: true });
    await rb.changeBackingFile(other, 'raw');
    await rb.close();
    expect(firstDiff(readFileSync(ours).subarray(0, 2 * CS), readFileSync(theirs).subarray(0, 2 * CS))).toBe(-1);
  });

  it('a file larger than (cs-1)*cs: QEMU 7.2 reports a phantom leak (qed-format.md §12), we do not; all else agrees', async () => {
    const img = 'phantom.qed';
    const path = join(dir, img);
    qemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=16', img, '40M']);
    // 4 MiB per write: QEMU mis-sizes single allocations of >= cs-1 clusters (qed-format.md §12).
    const cmds: string[] = [];
    for (let off = 0; off < 17 * M; off += 4 * M) cmds.push(`write -q -P ${1 + off / M} ${off} 4M`);
    qemuIoBatch(img, cmds, ['-f', 'qed'], dir);
    expect(statSync(path).size).toBeGreaterThan((CS - 1) * CS);
    const q = qemuCheck(path);
    const mine = await ourCheck(path);
    expect(q.fields.leaks).toBeGreaterThan(0);
    expect(q.status).toBe(3);
    expect(mine.leaks).toBe(0);
    expect({ ...mine, leaks: q.fields.leaks }).toEqual(q.fields);
  });

  it('a 0-byte image grown and written: QEMU-made read here, ours read by QEMU, same bytes', async () => {
    qemuImg(['create', '-q', '-f', 'qed', 'z-q.qed', '0']);
    await bdrvCreate(join(dir, 'z-o.qed'), { format: 'qed', options: { size: 0 } });
    expect(firstDiff(readFileSync(join(dir, 'z-o.qed')), readFileSync(join(dir, 'z-q.qed')))).toBe(-1);
    // An empty disk maps to one empty entry in qemu-img 7.2, to nothing here.
    expect(qemuMap('z-q.qed', dir)).toEqual([{ start: 0, length: 0, depth: 0, present: false, zero: false, data: false }]);
    expect(await ourCheck(join(dir, 'z-q.qed'))).toEqual(qemuCheck(join(dir, 'z-q.qed')).fields);
    qemuIoBatch('z-q.qed', ['truncate 1M', 'write -q -P 3 0 4k', 'write -q -z 64k 64k', 'write -q -P 4 1020k 4k'], ['-f', 'qed'], dir);
    const bs = await BlockDriverState.open(join(dir, 'z-o.qed'));
    await bs.truncate(M);
    for (const op of [
      { kind: 'write', off: 0, len: 4 * K, pat: 3 },
      { kind: 'zero', off: 64 * K, len: 64 * K },
      { kind: 'write', off: 1020 * K, len: 4 * K, pat: 4 },
    ] as Op[]) await applyOurs(bs, op);
    await bs.close();
    expect(firstDiff(readFileSync(join(dir, 'z-o.qed')), readFileSync(join(dir, 'z-q.qed')))).toBe(-1);
    const rd = await BlockDriverState.open(join(dir, 'z-q.qed'), { readOnly: true });
    expect(await ourMap(rd)).toEqual(qemuMap('z-q.qed', dir));
    await rd.close();
  });

  it('a three-level chain (QED over QED over raw, each shorter than the one above): same bytes, same map', async () => {
    qemuImg(['create', '-q', '-f', 'raw', 'c3-base.raw', '4M']);
    qemuIoBatch('c3-base.raw', ['write -q -P 0x31 0 4M'], ['-f', 'raw'], dir);
    qemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=2', '-b', 'c3-base.raw', '-F', 'raw', 'c3-mid.qed', '8M']);
    qemuIoBatch('c3-mid.qed', ['write -q -P 0x32 1M 64k', 'write -q -z 2M 64k', `write -q -P 0x33 ${6 * M} 8k`], ['-f', 'qed'], dir);
    qemuImg(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=2', '-b', 'c3-mid.qed', '-F', 'qed', 'c3-top.qed', '16M']);
    qemuIoBatch('c3-top.qed', ['write -q -P 0x34 1M 4k', `write -q -P 0x35 ${6 * M + 4 * K} 8k`, `write -q -P 0x36 ${12 * M} 4k`], ['-f', 'qed'], dir);
    const raw = qemuReadAllRaw('c3-top.qed');
    const bs = await BlockDriverState.open(join(dir, 'c3-top.qed'), { readOnly: true });
    const mine = new Uint8Array(16 * M);
    await bs.pread(0, mine);
    expect(firstDiff(mine, raw)).toBe(-1);
    expect(await ourMap(bs)).toEqual(qemuMap('c3-top.qed', dir));
    await bs.close();
  });
});
