// What the tools need from the machine they run on, apart from images: host files given on the
// command line (a pattern file, a trace events file), the current directory for relative names,
// a monotonic clock and a process id. Node's tools install nodeToolHost (host-node.ts); a page
// that runs the tools' commands keeps the portable host below, whose machine has no files.
import { blockPath } from '../../index.js';

export interface ToolHost {
  /**
   * Up to `max` bytes from the start of a host file. Throws an Error whose `code` is an errno
   * name ('ENOENT', 'EACCES', ...), as Node's fs does, so the tools print QEMU's perror text.
   */
  readFileHead(path: string, max: number): Uint8Array;
  /** A whole host file (an object's file=, such as a secret); throws as readFileHead. */
  readFile(path: string): Uint8Array;
  /** The absolute name of a host path (relative to the current directory). */
  resolvePath(path: string): string;
  /** CLOCK_MONOTONIC in nanoseconds. */
  nowNs(): bigint;
  /** The process id, for names that must not clash between concurrent runs. */
  readonly pid: number;
}

function noSuchFile(path: string): Error {
  return Object.assign(new Error(`ENOENT: no such file or directory, open '${path}'`), { code: 'ENOENT' });
}

/** A machine without host files: the root is the current directory; time from performance.now(). */
export const portableToolHost: ToolHost = {
  readFileHead: (path) => {
    throw noSuchFile(path);
  },
  readFile: (path) => {
    throw noSuchFile(path);
  },
  resolvePath: (path) => blockPath.resolve('/', path),
  nowNs: () => BigInt(Math.round(performance.now() * 1e6)),
  pid: 1,
};

let current: ToolHost = portableToolHost;

export function toolHost(): ToolHost {
  return current;
}

export function setToolHost(host: ToolHost): void {
  current = host;
}
