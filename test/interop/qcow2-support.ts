/**
 * Shared pieces of the qcow2 interop tests: qemu-io command lines replayed on our nodes the way
 * qemu-io runs them (writethrough: a flush after each write).
 */
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

