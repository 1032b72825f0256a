// The tools' stdout and stderr on Node: write(2) on descriptors 1 and 2, as C stdio does,
// rather than through process.stdout and process.stderr. Making those streams cost every run
// a few milliseconds (a pipe's loads Node's net and stream modules), and a write that returns
// only once the bytes are in the pipe keeps stdout's blocks ahead of a later message on
// stderr, in qemu-img's order.
import { fstatSync, statSync, writeSync } from 'node:fs';
import type { ByteSink, TextSink, ToolIO } from './output.js';

/** A reader that went away (`blk-img map | head -1`): qemu-img dies of SIGPIPE; Node ignores it. */
function exitOnEpipe(e: NodeJS.ErrnoException): void {
  if (e.code === 'EPIPE') process.exit(128 + 13);
  throw e;
}

/** The process's streams that a sink fell back to: output may wait in them. */
const streamsInUse = new Set<NodeJS.WriteStream>();

/** The process's stream for `fd`, with exitOnEpipe as its error handler. */
function processStream(fd: 1 | 2): NodeJS.WriteStream {
  const stream = fd === 1 ? process.stdout : process.stderr;
  if (stream.listenerCount('error') === 0) stream.on('error', exitOnEpipe);
  streamsInUse.add(stream);
  return stream;
}

/**
 * End the process with the tool's exit status once its command is done, as qemu-img's exit()
 * does: letting the loop run dry instead tears Node's environment and V8's heap down page by
 * page (some forty munmap calls), about 1.5 ms of CPU and 2.5 ms of a check's wall time. By
 * then every image is closed and no request is in flight. Output still waiting in a stream a
 * sink fell back to is left to drain first, with the status set. The streams are not asked
 * otherwise: making process.stdout on a pipe would load Node's net modules.
 */
export function exitWhenDone(code: number): void {
  process.exitCode = code;
  for (const stream of streamsInUse) if (stream.writableLength > 0) return;
  process.exit(code);
}

/**
 * Writes to `fd` until one fails for another reason than a gone reader (EAGAIN: a descriptor
 * left non-blocking by whoever shares it; EBADF...): from there on the process's stream
 * writes, as before, and waits or reports as streams do. Nothing written is lost or reordered:
 * the stream gets exactly the bytes write(2) did not take.
 */
class FdSink implements TextSink {
  private stream: NodeJS.WriteStream | null = null;
  constructor(private readonly fd: 1 | 2) {}

  write(data: string | Uint8Array): boolean {
    if (this.stream !== null) return this.stream.write(data);
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    let done = 0;
    try {
      while (done < bytes.length) done += writeSync(this.fd, bytes, done, bytes.length - done);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EPIPE') exitOnEpipe(e as NodeJS.ErrnoException);
      this.stream = processStream(this.fd);
      return this.stream.write(bytes.subarray(done));
    }
  }
}

/**
 * Whether fd 1 is a terminal (stdout is then line buffered). Only a character device can be
 * one: a pipe or a file is known from fstat, and so is /dev/null (`> /dev/null`), without
 * loading node:tty (and net with it, some 10 ms).
 */
async function stdoutIsTTY(): Promise<boolean> {
  try {
    const st = fstatSync(1);
    if (!st.isCharacterDevice()) return false;
    if (st.rdev === statSync('/dev/null').rdev) return false;
  } catch {
    return false;
  }
  const { isatty } = await import('node:tty');
  return isatty(1);
}

/** The process's stdout and stderr as a tool's output (img and nbd's main()). */
export async function processToolIO(): Promise<ToolIO> {
  const stdout = new FdSink(1);
  const stdoutBytes: ByteSink = {
    alloc: (size) => Buffer.allocUnsafe(size),
    encode: (s, buf, at) => (buf as Buffer).write(s, at, 'utf8'),
    write: (bytes) => stdout.write(bytes),
  };
  return { stdout, stderr: new FdSink(2), stdoutIsTTY: await stdoutIsTTY(), stdoutBytes };
}
