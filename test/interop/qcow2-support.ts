/**
 * Shared pieces of the qcow2 interop tests: qemu-io command lines replayed on our nodes the way
 * qemu-io runs them (writethrough: a flush after each write).
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BlockDriverState } from '../../src/index.js';

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

/** The file with the date fields of its snapshot table zeroed (they come from the clock). */
export function maskDates(img: Buffer): Buffer {
  const out = Buffer.from(img);
  const nb = out.readUInt32BE(60);
  let pos = Number(out.readBigUInt64BE(64));
  for (let i = 0; i < nb; i++) {
    pos = Math.ceil(pos / 8) * 8;
    out.fill(0, pos + 16, pos + 24);
    pos += 40 + out.readUInt32BE(pos + 36) + out.readUInt16BE(pos + 12) + out.readUInt16BE(pos + 14);
  }
  return out;
}

/** Where two files differ once dates are masked (null: nowhere), and their sizes. */
export function firstDiff(a: string, b: string): { at: number; sizes: number[] } | null {
  const x = maskDates(readFileSync(a));
  const y = maskDates(readFileSync(b));
  if (x.equals(y)) return null;
  let at = 0;
  while (at < Math.min(x.length, y.length) && x[at] === y[at]) at++;
  return { at, sizes: [x.length, y.length] };
}

/** Two fresh directories under root for case n: QEMU's copy (q) and ours (b). */
export function caseDirs(root: string, n: number | string): [string, string] {
  const dq = join(root, `q${n}`);
  const db = join(root, `b${n}`);
  mkdirSync(dq);
  mkdirSync(db);
  return [dq, db];
}
