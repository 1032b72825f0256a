// The tools' host on Node: real files, the process's current directory, process.hrtime.
// Importing this module installs it (both tools' main modules do).
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { resolve } from 'node:path';
import { setToolHost, type ToolHost } from './host.js';

/** Read in a loop: a pipe or a device (/dev/zero) returns short reads. */
function readFileHead(path: string, max: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const buf = new Uint8Array(max);
    let got = 0;
    while (got < max) {
      const n = readSync(fd, buf, got, max - got, null);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

export const nodeToolHost: ToolHost = {
  readFileHead,
  readFile: (path) => readFileSync(path),
  resolvePath: (path) => resolve(path),
  nowNs: () => process.hrtime.bigint(),
  pid: process.pid,
};

setToolHost(nodeToolHost);
