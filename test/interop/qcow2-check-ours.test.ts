// qcow2 check where we decided to differ from qemu-img 7.2 (reserved bits are repaired, COPIED
// is never set on a cluster whose count overflowed, zero entries in v2 images and data
// references into metadata are corruptions): our findings and repairs, and the real qemu-img
// then finds the repaired file clean (or, for the overflow, still reports it).
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockDriverState, type CheckFix, type CheckResult } from '../../src/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';
import { pokeBE } from './qcow2-damage.js';

const qemu = requireQemu();

async function ourCheck(file: string, fix: CheckFix = {}): Promise<{ r: CheckResult; lines: string[] }> {
  const lines: string[] = [];
  const bs = await BlockDriverState.open(file, { format: 'qcow2', readOnly: !(fix.leaks || fix.errors), check: true });
  try {
    const r = await bs.check({ ...fix, report: (l) => lines.push(l) });
    return { r, lines };
  } finally {
    await bs.close();
  }
}

function sh(dir: string, step: string[]): void {
  const r = spawnSync('/bin/sh', ['-c', step[1]], { cwd: dir, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${step[1]}: ${r.stderr}`);
}

/** A 1 MiB image with two data clusters (L2 at 0x40000, data 0x50000 and 0x60000). */
function image(dir: string, name: string, options = ''): string {
  const f = join(dir, name);
  const o = options ? ['-o', options] : [];
  expect(runQemuImg(['create', '-q', '-f', 'qcow2', ...o, f, '1M']).status).toBe(0);
  expect(runQemuIo(['-c', 'write -P 1 0 128k', f]).status).toBe(0);
  return f;
}

describe.skipIf(!qemu)('qcow2 check: our decisions', () => {
  const dir = makeTempDir('qcow2-check-ours');
  afterAll(() => removeTempDir(dir));

  it('reserved bits of L1 and L2 entries are reported, and cleared by -r all', async () => {
    const f = image(dir, 'rsv.qcow2');
    sh(dir, pokeBE('rsv.qcow2', 0x30000, 8, 0x8100000000040000n));
    sh(dir, pokeBE('rsv.qcow2', 0x40000, 8, 0x8000000000050002n));
    const before = readFileSync(f);
    const ro = await ourCheck(f);
    expect(ro.lines).toEqual([
      'ERROR found L1 entry with reserved bits set: 8100000000040000',
      'ERROR found l2 entry with reserved bits set: 8000000000050002',
    ]);
    expect(ro.r.corruptions).toBe(2);
    // A check without repair writes nothing.
    expect(readFileSync(f).equals(before)).toBe(true);
    const rw = await ourCheck(f, { leaks: true, errors: true });
    expect(rw.r.corruptionsFixed).toBe(2);
    expect(rw.r.corruptions).toBe(0);
    const q = runQemuImg(['check', f]);
    expect(q.stderr).toBe('');
    expect(q.status).toBe(0);
  });

  it('two references at refcount_bits=1: an overflow, COPIED cleared on both, never set', async () => {
    const f = image(dir, 'ovf.qcow2', 'refcount_bits=1');
    sh(dir, pokeBE('ovf.qcow2', 0x40008, 8, 0x8000000000050000n));
    const ro = await ourCheck(f);
    expect(ro.lines).toContain('ERROR: overflow cluster offset=0x50000');
    expect(ro.lines).toContain('Leaked cluster 6 refcount=1 reference=0');
    const rw = await ourCheck(f, { leaks: true, errors: true });
    expect(rw.lines).toContain('Repairing OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=1');
    expect(rw.r.leaksFixed).toBe(1);
    // The overflow stays a corruption: the entries must not claim sole ownership.
    expect(rw.r.corruptions).toBeGreaterThan(0);
    const l2 = readFileSync(f).subarray(0x40000, 0x40010);
    expect(l2.toString('hex')).toBe('00000000000500000000000000050000');
    expect(runQemuImg(['check', f]).status).toBe(2);
  });

  it('a zero entry in a v2 image is a corruption; -r all makes it unallocated', async () => {
    const f = image(dir, 'v2.qcow2', 'compat=0.10');
    // L2[1] (guest 64k): a plain zero entry; cluster 0x60000 is leaked.
    sh(dir, pokeBE('v2.qcow2', 0x40008, 8, 1));
    const ro = await ourCheck(f);
    expect(ro.lines).toEqual(['ERROR zero cluster entry in a pre-v3 image: l2_entry=1', 'Leaked cluster 6 refcount=1 reference=0']);
    expect(ro.r.corruptions).toBe(1);
    expect(ro.r.leaks).toBe(1);
    const rw = await ourCheck(f, { leaks: true, errors: true });
    expect(rw.r.corruptionsFixed).toBe(1);
    expect(rw.r.leaksFixed).toBe(1);
    expect(readFileSync(f).subarray(0x40008, 0x40010).toString('hex')).toBe('0000000000000000');
    expect(runQemuImg(['check', f]).status).toBe(0);
  });

  it('a data reference into the L1 table is a corruption; -r all makes it a zero cluster', async () => {
    const f = image(dir, 'meta.qcow2');
    sh(dir, pokeBE('meta.qcow2', 0x40008, 8, 0x8000000000030000n));
    const ro = await ourCheck(f);
    expect(ro.lines).toEqual([
      'ERROR data cluster l2_entry=8000000000030000 overlaps with active L1 table',
      'Leaked cluster 6 refcount=1 reference=0',
    ]);
    const rw = await ourCheck(f, { leaks: true, errors: true });
    expect(rw.r.corruptions).toBe(0);
    expect(readFileSync(f).subarray(0x40008, 0x40010).toString('hex')).toBe('0000000000000001');
    expect(runQemuImg(['check', f]).status).toBe(0);
    // The guest reads zeros there, and its other data is intact.
    const cmp = runQemuIo(['-c', 'read -P 0 64k 64k', '-c', 'read -P 1 0 64k', f]);
    expect(cmp.stdout).not.toMatch(/fail|mismatch/i);
  });
});
