// The tools' output: the program name, C stdio's buffering (so that stdout and stderr
// interleave as QEMU's do on a shared pipe), error_report/warn_report, and leaving with a status.
import { isBlockError } from '../../index.js';


/** Basename of the script path (process.argv[1]): a link named otherwise gives that name. */
export function progName(argv: readonly string[], fallback = 'blk-img'): string {
  const p = argv[1];
  if (p === undefined || p === '') return fallback;
  const parts = p.split('/').filter((s) => s !== '');
  const base = parts.length === 0 ? p : parts[parts.length - 1];
  // A launcher named blk-img.js is still "blk-img" to the user.
  return base.endsWith('.js') || base.endsWith('.ts') ? base.slice(0, -3) : base;
}

/** Anything with a write(string) method: process.stdout, a test collector... */
export interface TextSink {
  write(s: string): unknown;
}

export interface ToolIO {
  stdout: TextSink;
  stderr: TextSink;
  /** stdout is a terminal: line buffered instead of fully buffered (stdio's rule). */
  stdoutIsTTY?: boolean;
}

/** glibc's buffer size for a pipe or regular file (st_blksize). */
export const STDIO_BUFSIZ = 4096;

/**
 * Full blocks of stdout that may wait in memory before they are written: the byte stream is
 * the same either way, and map of a fragmented image prints megabytes, a write per 4 KiB.
 */
const STDOUT_HOLD = 1 << 20;

/**
 * stdout/stderr with C stdio semantics: stderr is unbuffered; stdout is fully buffered (4 KiB
 * chunks) unless it is a terminal (line buffered), and flushed explicitly or at exit. When both
 * streams share one pipe, this reproduces QEMU's ordering (errors first unless flushed).
 *
 * The full 4 KiB blocks stdio would have written are held back up to STDOUT_HOLD and written
 * together, always before anything goes to stderr: whoever reads both streams from one pipe
 * sees the bytes in stdio's order, with fewer writes.
 */
export class ToolOutput {
  private pending = '';
  constructor(
    readonly io: ToolIO,
    readonly prog: string,
  ) {}

  /** printf to stdout. */
  out(s: string): void {
    this.pending += s;
    if (this.io.stdoutIsTTY === true) {
      const nl = this.pending.lastIndexOf('\n');
      if (nl >= 0) {
        this.io.stdout.write(this.pending.slice(0, nl + 1));
        this.pending = this.pending.slice(nl + 1);
      }
      return;
    }
    if (this.pending.length >= STDOUT_HOLD) this.writeFullBlocks();
  }

  /** Write what stdio would have written by now: the buffered text's whole 4 KiB blocks. */
  private writeFullBlocks(): void {
    if (this.io.stdoutIsTTY === true || this.pending.length < STDIO_BUFSIZ) return;
    const n = this.pending.length - (this.pending.length % STDIO_BUFSIZ);
    this.io.stdout.write(this.pending.slice(0, n));
    this.pending = this.pending.slice(n);
  }

  /** fflush(stdout). */
  flush(): void {
    if (this.pending !== '') {
      this.io.stdout.write(this.pending);
      this.pending = '';
    }
  }

  /** fprintf(stderr, ...) without the program-name prefix (error_printf). */
  errRaw(s: string): void {
    this.writeFullBlocks();
    this.io.stderr.write(s);
  }

  /** error_report: "prog: message\n" on stderr. */
  error(msg: string): void {
    this.errRaw(`${this.prog}: ${msg}\n`);
  }

  /** warn_report: "prog: warning: message\n". */
  warn(msg: string): void {
    this.errRaw(`${this.prog}: warning: ${msg}\n`);
  }
}

/** Thrown to leave a tool with an exit status after the messages were printed. */
export class ToolExit extends Error {
  override readonly name = 'ToolExit';
  constructor(readonly status: number) {
    super(`exit ${status}`);
  }
}

/**
 * Run a tool's body to its exit status: a ToolExit carries its own status, any other error is
 * printed as one line with status 1; buffered stdout is flushed last, after any error line.
 */
export async function runTool(o: ToolOutput, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (e) {
    if (e instanceof ToolExit) return e.status;
    o.error(errorMessage(e));
    return 1;
  } finally {
    o.flush();
  }
}

/** error_exit(): message, the "Try ... --help" hint, exit 1. */
export function errorExit(o: ToolOutput, msg: string): never {
  o.error(msg);
  o.errRaw(`Try '${o.prog} --help' for more information\n`);
  throw new ToolExit(1);
}

/** Message of an error thrown by the block layer, as QEMU's error_get_pretty would give it. */
export function errorMessage(e: unknown): string {
  if (isBlockError(e)) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

/** An I/O failure as QEMU prints it after strerror(): the errno text of a BlockError. */
export function errnoMessage(e: unknown): string {
  return isBlockError(e) ? e.errnoMessage : errorMessage(e);
}
