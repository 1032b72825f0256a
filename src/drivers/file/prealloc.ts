/**
 * Preallocation of a grown file (QEMU's PreallocMode on the file protocol) and the first-block
 * write QEMU's file driver does after growing an empty file.
 */
import type { HostFile } from './handle.js';
import { BDRV_SECTOR_SIZE } from '../../block/driver.js';
import { BlockError, toBlockError } from '../../block/errors.js';
import { pwritevFull } from './rw.js';
import { seekAddon } from './seek.js';

/** One shared, never-written zero buffer (only ever a write source, so sharing it is safe). */
const ZERO_SEGMENT = new Uint8Array(4096);

/**
 * After growing an empty file, write zeros over its first block (4 KiB, or one sector when the
 * file is smaller), as QEMU's file driver does on create and on resize from 0: a later
 * O_DIRECT open probes the alignment by reading there, and qemu-img map shows that block as
 * data, so ours must too. The bytes were zeros already; failures change nothing and are ignored.
 */
export async function allocateFirstBlock(fd: number, size: number): Promise<void> {
  const n = Math.min(size, size < 4096 ? BDRV_SECTOR_SIZE : 4096);
  if (n <= 0) return;
  try {
    await pwritevFull(fd, [ZERO_SEGMENT.subarray(0, n)], n, 0);
  } catch {
    // Only an optimisation: the file already reads as zeros there.
  }
}

/** QEMU's PreallocMode names; `metadata` is a known mode that the file protocol refuses. */
const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'] as const;
export type PreallocMode = (typeof PREALLOC_MODES)[number];

/** Bounded zero-write chunks for preallocation=full (QEMU writes 64 KiB at a time). */
const PREALLOC_CHUNK = 65536;

/** Write zeros over [from, to) in bounded chunks (preallocation=full, or falloc's fallback). */
async function writeZeroRange(fd: number, from: number, to: number): Promise<void> {
  const buf = new Uint8Array(Math.min(PREALLOC_CHUNK, Math.max(0, to - from)));
  for (let pos = from; pos < to; ) {
    const n = Math.min(buf.length, to - pos);
    await pwritevFull(fd, [buf.subarray(0, n)], n, pos);
    pos += n;
  }
}

/**
 * Grow (or set) a file's length from `current` to `size` with a preallocation mode, as
 * file-posix's handle_aiocb_truncate does:
 * - off: ftruncate, then the first block is written when the file was empty (allocateFirstBlock);
 * - falloc: allocate the new range (it reads as zeros but takes space). Like posix_fallocate,
 *   a host that cannot fallocate gets the range written with zeros instead. The first block is
 *   written after it when the file was empty;
 * - full: ftruncate to the final size first (lets the file system lay the file out at once),
 *   then zeros written over the new range and the file synced, so the space is really there;
 * - metadata: refused (the file protocol has no metadata to preallocate).
 * Failures are worded as QEMU's, the errno kept as the cause.
 */
export async function filePreallocate(fh: HostFile, current: number, size: number, mode: PreallocMode, op: string, path: string): Promise<void> {
  const fail = (msg: string, e: unknown): BlockError => {
    const err = toBlockError(e, { op, offset: size, path });
    return new BlockError(err.code, `${msg}: ${err.errnoMessage}`, { op, offset: size, path, cause: e });
  };
  switch (mode) {
    case 'off':
      await fh.truncate(size);
      if (current === 0 && size > 0) await allocateFirstBlock(fh.fd, size);
      return;
    case 'falloc': {
      if (size === current) return;
      const fn = seekAddon()?.allocateRange;
      let fallback = fn === undefined;
      if (fn !== undefined) {
        try {
          await fn(fh.fd, current, size - current);
        } catch (e) {
          const code = (e as { code?: unknown } | null)?.code;
          if (code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw fail('Could not preallocate new data', e);
          fallback = true;
        }
      }
      try {
        // posix_fallocate's own fallback: the range written with zeros.
        if (fallback) await writeZeroRange(fh.fd, current, size);
      } catch (e) {
        throw fail('Could not preallocate new data', e);
      }
      if (current === 0) await allocateFirstBlock(fh.fd, size);
      return;
    }
    case 'full':
      try {
        await fh.truncate(size);
      } catch (e) {
        throw fail('Could not resize file', e);
      }
      try {
        await writeZeroRange(fh.fd, current, size);
      } catch (e) {
        throw fail('Could not write zeros for preallocation', e);
      }
      try {
        await fh.sync();
      } catch (e) {
        throw fail('Could not flush file to disk', e);
      }
      return;
    default:
      throw new BlockError('ENOTSUP', `Unsupported preallocation mode: ${mode}`, { op, path });
  }
}

/** The preallocation option's value checked (QEMU's qapi_enum_parse), 'off' when absent. */
export function parsePreallocMode(value: string | number | boolean | undefined, path?: string): PreallocMode {
  if (value === undefined) return 'off';
  const v = String(value);
  if (!(PREALLOC_MODES as readonly string[]).includes(v)) {
    throw new BlockError('EINVAL', `invalid parameter value: ${v}`, { op: 'create', path });
  }
  return v as PreallocMode;
}

