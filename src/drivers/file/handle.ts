/**
 * The open host file: its descriptor and the few calls the driver makes on it outside the data
 * path (fstat, ftruncate, fsync, fdatasync, close), on node:fs's callback API. node:fs/promises'
 * FileHandle did the same, but loading that module (and the readline and fs watcher modules it
 * pulls in) cost some 5 M instructions in every run that opens a host file.
 */
import { close, fdatasync, fstat, fsync, ftruncate, open, type Stats } from 'node:fs';

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
    return new Promise((resolve, reject) => fstat(this.fd, settle(resolve, reject)));
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
    return new Promise((resolve, reject) => close(this.fd, settle(resolve, reject)));
  }
}

/** open(2) with Node's flag strings ('r', 'r+', 'w'); `mode` for a file it creates. */
export function openHostFile(path: string, flags: string, mode?: number): Promise<HostFile> {
  return new Promise((resolve, reject) => {
    open(path, flags, mode, (e, fd) => settle(resolve, reject)(e, e === null ? new HostFile(fd) : undefined));
  });
}
