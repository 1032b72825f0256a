/**
 * The open host file: its descriptor and the few calls the driver makes on it outside the data
 * path (fstat, ftruncate, fsync, fdatasync, close), on node:fs's callback API. node:fs/promises'
 * FileHandle did the same, but loading that module (and the readline and fs watcher modules it
 * pulls in) cost some 5 M instructions in every run that opens a host file.
 *
 * open, fstat and close run on this thread, as QEMU's file-posix makes them on its main loop's:
 * each is a short system call, where a round trip through libuv's pool wakes a pool thread and
 * then this one (a convert opens, stats and closes its files about a dozen times in all).
 * ftruncate (freeing blocks) and the syncs may take long: they stay on the pool.
 */
import { closeSync, fdatasync, fstatSync, fsync, ftruncate, openSync, type Stats } from 'node:fs';

/** A Node callback that settles a promise with its (error, value). */
function settle<T>(resolve: (v: T) => void, reject: (e: Error) => void): (e: Error | null | undefined, v?: T) => void {
  return (e, v) => {
    if (e !== null && e !== undefined) reject(e);
    else resolve(v as T);
  };
}

/** An open host file; errors are Node's (code, syscall, path), as FileHandle's were. */
export class HostFile {
  constructor(readonly fd: number) {}

  stat(): Promise<Stats> {
    return now(() => fstatSync(this.fd));
  }

  truncate(len: number): Promise<void> {
    return new Promise((resolve, reject) => ftruncate(this.fd, len, settle(resolve, reject)));
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => fsync(this.fd, settle(resolve, reject)));
  }

  datasync(): Promise<void> {
    return new Promise((resolve, reject) => fdatasync(this.fd, settle(resolve, reject)));
  }

  close(): Promise<void> {
    return now(() => closeSync(this.fd));
  }
}

/** A call made now, settled as the callback API would: its value, or its error as a rejection. */
function now<T>(call: () => T): Promise<T> {
  // An executor that throws rejects the promise with what it threw.
  return new Promise<T>((resolve) => resolve(call()));
}

/** open(2) with Node's flag strings ('r', 'r+', 'w'); `mode` for a file it creates. */
export function openHostFile(path: string, flags: string, mode?: number): Promise<HostFile> {
  return now(() => new HostFile(openSync(path, flags, mode)));
}
