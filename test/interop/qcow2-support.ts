/**
 * Shared pieces of the qcow2 interop tests: qemu-io command lines replayed on our nodes the way
 * qemu-io runs them (writethrough: a flush after each write), and what the real qemu-img says
 * of two compressed images that need not be byte-identical.
 */
import { expect } from 'vitest';
import type { BlockDriverState } from '../../src/index.js';
import { runQemuImg } from './qemu.js';

export function num(s: string): number {
  const m = /^(\d+)([kKMG]?)$/.exec(s);
  if (!m) throw new Error(`bad number ${s}`);
  return Number(m[1]) * ({ '': 1, k: 1024, K: 1024, M: 1 << 20, G: 1 << 30 } as Record<string, number>)[m[2]];
}

/** Run a qemu-io command on our node the way qemu-io does (writethrough: flush after writes). */
export async function ourCommand(bs: BlockDriverState, cmd: string): Promise<void> {
  const w = cmd.split(/\s+/);
  const args = w.filter((x, i) => i > 0 && !x.startsWith('-') && w[i - 1] !== '-P');
  const off = num(args[0]);
  const len = num(args[1]);
  if (w[0] === 'write' && w.includes('-z')) await bs.writeZeroes(off, len, { mayUnmap: w.includes('-u') });
  else if (w[0] === 'write') await bs.pwrite(off, new Uint8Array(len).fill(Number(w[w.indexOf('-P') + 1])));
  else if (w[0] === 'discard') await bs.discard(off, len);
  else throw new Error(`unsupported ${cmd}`);
  await bs.flush();
}


/** The counters of `qemu-img check --output=json` that do not depend on where bytes went. */
const CHECK_COUNTS = ['check-errors', 'corruptions', 'leaks', 'total-clusters', 'allocated-clusters', 'fragmented-clusters', 'compressed-clusters'];

function qemuCheckCounts(file: string): { status: number | null; counts: Record<string, unknown>; text: string } {
  const j = runQemuImg(['check', '--output=json', file]);
  const all = JSON.parse(j.stdout) as Record<string, unknown>;
  const text = runQemuImg(['check', file]).stdout;
  return { status: j.status, counts: Object.fromEntries(CHECK_COUNTS.map((k) => [k, all[k]])), text };
}

/**
 * Our image against QEMU's after the same compressed writes, where the compressed bytes may
 * differ (zstd): qemu-img reads the same guest data from both, finds ours clean, counts the
 * same allocated, fragmented and compressed clusters, and maps both alike (host offsets aside).
 */
export function expectSameCompressedImage(ours: string, theirs: string): void {
  const cmp = runQemuImg(['compare', ours, theirs]);
  expect(cmp.stdout + cmp.stderr).toBe('Images are identical.\n');
  const o = qemuCheckCounts(ours);
  const t = qemuCheckCounts(theirs);
  expect(o.status).toBe(0);
  expect(o.text).toContain('No errors were found on the image.');
  expect(o.counts).toEqual(t.counts);
  // The text line names the same percentages (allocated, fragmented, compressed).
  const line = (text: string): string | undefined => text.split('\n').find((l) => l.includes('compressed clusters'));
  expect(line(o.text)).toBe(line(t.text));
  expect(guestMap(ours)).toEqual(guestMap(theirs));
}

/**
 * `qemu-img map --output=json` without host offsets, neighbours of equal status merged: where
 * the uncompressed clusters went (after compressed bytes of another length) changes how
 * qemu-img splits its entries, not what the guest sees.
 */
function guestMap(file: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const { offset: _, ...e } of JSON.parse(runQemuImg(['map', '--output=json', file]).stdout) as Record<string, number | boolean>[]) {
    const last = out.at(-1);
    const same = last !== undefined && ['depth', 'present', 'zero', 'data'].every((k) => last[k] === e[k]);
    if (same) last.length = Number(last.length) + Number(e.length);
    else out.push(e);
  }
  return out;
}
