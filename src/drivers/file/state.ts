/**
 * The per-open state of the `file` protocol driver and the bookkeeping every concern shares:
 * the cached length and the count of requests in flight on the descriptor.
 */
import type { HostFile } from './handle.js';
import type { CoQueue } from '../../block/coroutine.js';
import { driverState } from '../../block/driver.js';
import type { BlockDriverState } from '../../block/node.js';
import type { SeekAddon } from './seek.js';

export interface FileState {
  fh: HostFile;
  /**
   * `fh.fd`, kept here for the hot path and set to -1 once closed (close waits for `pending`
   * first), so that a request after close fails on a closed descriptor rather than reusing one.
   */
  fd: number;
  path: string;
  /**
   * File length, cached: the generic layer asks for it on every request and an fstat per
   * request would be a thread-pool round trip on the hot path. Kept up to date by our writes
   * and truncates; like QEMU, a change made behind our back by another process is not seen.
   */
  length: number;
  /** Reads and writes in flight on the raw fd: close waits for them before the fd goes away. */
  pending: number;
  /** Woken when `pending` drops to 0 (close waits for it). */
  drained: CoQueue;
  /*
   * What the host file system answered ENOTSUP to, so it is not asked again (QEMU's
   * has_write_zeroes / has_discard / has_fallocate): FALLOC_FL_ZERO_RANGE, PUNCH_HOLE, mode 0.
   */
  hasWriteZeroes: boolean;
  hasDiscard: boolean;
  hasFallocate: boolean;
  /** The addon's page-cache read, while this host supports RWF_NOWAIT reads; else null. */
  readNowait: SeekAddon['preadNowait'] | null;
  /** The addon's sendfile of a reply, while this host supports it; else null. */
  sendFile: NonNullable<SeekAddon['sendFileNow']> | null;
}

/** 'file:/x/y' and '/x/y' name the same host file. */
export function fileStripPrefix(filename: string): string {
  return filename.startsWith('file:') ? filename.slice('file:'.length) : filename;
}

export function state(bs: BlockDriverState): FileState {
  return driverState<FileState>(bs, 'file');
}


export function beginIO(s: FileState): void {
  s.pending++;
}

export function endIO(s: FileState): void {
  if (--s.pending === 0) s.drained.restartAll();
}

export async function fileRefreshLength(s: FileState): Promise<void> {
  try {
    s.length = (await s.fh.stat()).size;
  } catch {
    // Keep the cached value: the caller is already reporting the original error.
  }
}

