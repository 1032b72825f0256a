// Sizes on the command line: qemu_strtosz (suffixes, fractions, 0x hex) and qemu-img's cvtnum
// with its two-line messages.
import { BlockError, qemuStrtosz } from '../../index.js';
import { ToolExit, type ToolOutput } from './output.js';

export { parseOptionSize, qemuStrtosz, type StrtoszResult } from '../../index.js';

export const INT64_MAX = (1n << 63n) - 1n;

/**
 * qemu-img's cvtnum_full: a size in [min, max] or the two-line "You may use k, M, G..." /
 * "Must be between" errors. Throws ToolExit(1) after printing.
 */
export function cvtnumFull(o: ToolOutput, name: string, value: string, min: bigint, max: bigint): number {
  const r = qemuStrtosz(value);
  if (!r.ok && r.error !== 'ERANGE') {
    o.error(`Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for`);
    o.error('kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
    throw new ToolExit(1);
  }
  if (!r.ok || r.value > max || r.value < min) {
    o.error(`Invalid ${name} specified. Must be between ${min} and ${max}.`);
    throw new ToolExit(1);
  }
  return toSafeNumber(r.value, name);
}

export function cvtnum(o: ToolOutput, name: string, value: string): number {
  return cvtnumFull(o, name, value, 0n, INT64_MAX);
}

/** Sizes beyond 2^53 cannot be represented as JS numbers: refuse them clearly. */
export function toSafeNumber(v: bigint, what = 'value'): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new BlockError('EFBIG', `${what} ${v} is larger than this implementation supports (${Number.MAX_SAFE_INTEGER})`);
  }
  return Number(v);
}
