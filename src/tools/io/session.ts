// The state one blk-io run carries between commands (qemu-io's globals): the open image, the
// output streams, and the AIO completions that wait for the "main loop" to report them.
import { BlockError, ERRNO_MESSAGES, ObjectTable, isBlockError, type BlockBackend, type BlockErrorCode } from '../../index.js';
import { toolHost } from '../shared/host.js';
import type { ToolOutput } from '../shared/output.js';
import { TraceOptions } from './trace.js';

/** How the image was opened (kept for reopen). */
export interface OpenFlags {
  readOnly: boolean;
  copyOnRead: boolean;
  /** cache=none / directsync / -n: O_DIRECT in QEMU; accepted, no effect on our file driver. */
  nocache: boolean;
  /** cache=unsafe: flushes are ignored. */
  noFlush: boolean;
  /** cache=writethrough / directsync: every write behaves as FUA. */
  writethrough: boolean;
  nativeAio: boolean;
  snapshot: boolean;
  forceShare: boolean;
  format?: string;
}

export function defaultOpenFlags(): OpenFlags {
  return {
    readOnly: false,
    copyOnRead: false,
    nocache: false,
    noFlush: false,
    writethrough: true,
    nativeAio: false,
    snapshot: false,
    forceShare: false,
  };
}

export interface IoHooks {
  /** abort(3): the process dies at once, nothing closed, buffered stdout lost. */
  abort(): void;
  /** raise(sig) after both streams were flushed. */
  raise(sig: number): void;
}

export class IoSession {
  /** The open image: qemu-io's BlockBackend (blk_new_open). */
  blk: BlockBackend | null = null;
  /** Name the image was opened under and its flags (reopen needs them). */
  filename = '';
  flags: OpenFlags = defaultOpenFlags();
  quit = false;
  imageOpts = false;
  /** The --object definitions of this run. */
  readonly objects = new ObjectTable();
  /** -T patterns: matching trace points of every opened image print on stderr. */
  readonly trace = new TraceOptions();
  /**
   * The BlockBackend's write permission: taken at a read-write open and by the first write
   * command on a writable node, given up when reopen makes the image read-only. While held,
   * the node cannot be made read-only through `reopen -o read-only=on`.
   */
  blkWritePerm = false;
  /** QEMU's node-name counter: every node opened in this run takes the next number. */
  nodeCounter = 0;
  /** The open image's automatic node name ("#block" + counter + two random digits). */
  nodeName = '';
  /**
   * AIO completions wait here until the main loop runs (a command that waits for I/O,
   * aio_flush, exit), as qemu-io's callbacks only run from its event loop. Reported newest
   * first: QEMU's bottom halves and its thread pool both complete in LIFO order.
   */
  private readonly reports: (() => void)[] = [];
  private readonly inflight = new Set<Promise<void>>();

  constructor(
    readonly o: ToolOutput,
    readonly hooks: IoHooks,
  ) {}

  /** Remember an AIO request until its completion callback ran. */
  track(p: Promise<void>): void {
    const q = p.finally(() => this.inflight.delete(q));
    this.inflight.add(q);
  }

  /** Queue the report of a finished AIO request. */
  queueReport(fn: () => void): void {
    this.reports.push(fn);
  }

  /** One turn of the main loop: print what completed meanwhile. */
  poll(): void {
    while (this.reports.length > 0) {
      const fn = this.reports.pop();
      fn?.();
    }
  }

  /**
   * bdrv_drain_all: wait for every AIO request, report them, then drain the image's nodes
   * (QED's pending need-check job runs now: a dirty image whose writes are done turns clean).
   */
  async drain(): Promise<void> {
    while (this.inflight.size > 0) {
      await Promise.allSettled([...this.inflight]);
    }
    this.poll();
    await this.blk?.drain();
  }
}

/**
 * Does a write carry FUA? cache=writethrough (qemu-io's default) and directsync open the
 * BlockBackend with its write cache disabled, and QEMU then adds FUA to every write it is
 * given (data, zeroes, vectored, AIO), whatever the command asked; `write -f` asks for it in
 * any mode. The generic layer emulates it with a flush of the node after the write.
 */
export function writeFua(s: IoSession, requested = false): boolean {
  return requested || s.flags.writethrough;
}

/** strerror(-ret) for whatever a block-layer call threw. */
export function errnoText(e: unknown): string {
  if (isBlockError(e)) return e.errnoMessage;
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code in ERRNO_MESSAGES) return ERRNO_MESSAGES[code as BlockErrorCode];
  return ERRNO_MESSAGES.EIO;
}

/** The message an Error carries (error_report_err prints it). */
export function errText(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}

/** Node's fs error as perror() prints it: "name: strerror". */
function perror(o: ToolOutput, name: string, e: unknown): void {
  o.errRaw(`${name}: ${errnoText(e)}\n`);
}

/**
 * qemu_io_alloc_from_file: fill `len` bytes with the file's content, repeated; a file that
 * yields nothing is refused ("file is empty", also when len is 0, as in QEMU).
 */
export function allocFromFile(o: ToolOutput, name: string, len: number): Uint8Array | null {
  let head: Uint8Array;
  try {
    head = toolHost().readFileHead(name, len);
  } catch (e) {
    perror(o, name, e);
    return null;
  }
  const got = head.length;
  const buf = new Uint8Array(len);
  buf.set(head);
  if (got === 0) {
    o.errRaw(`${name}: file is empty\n`);
    return null;
  }
  for (let pos = got; pos < len; pos += got) buf.copyWithin(pos, 0, Math.min(got, len - pos));
  return buf;
}

/** A BlockError for a condition the tool itself detects (bounds on unsafe numbers). */
export function toolError(code: BlockErrorCode, op: string): BlockError {
  return new BlockError(code, ERRNO_MESSAGES[code], { op });
}
