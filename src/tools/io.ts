// blk-io: qemu-io 7.2 rebuilt over blocklayer. `blk-io [-f fmt] [-r] [-n|-t cache] [-C] [-U]
// [-c cmd]... [file]`; without -c, commands are read from stdin after a `<prog>> ` prompt.
// Output goes through a stdio model (stdout fully buffered on pipes, stderr unbuffered) so
// that a shared pipe sees the same interleaving as with QEMU.
import '../index.js';
import { Getopt, ToolOutput, progName, type LongOption, type TextSink } from './common.js';
import { setBlkdebugMessageSink } from '../drivers/blkdebug/index.js';
import { COMMANDS, openfile, parseAioMode, parseCacheMode, qemuioCommand, validDiscardMode } from './io-cmds.js';
import { IoSession, defaultOpenFlags, type IoHooks } from './io-session.js';
import { processObjectArg, parseOptsNoisily } from './image-opts.js';
import { ObjectTable, QEMU_IO_IMAGE_OPTS } from '../block/index.js';

export { COMMANDS } from './io-cmds.js';

/** Reported by -V (package.json's version). */
const BLOCKLAYER_VERSION = '0.1.0';
export { maskTimings } from './io-format.js';

/** Where blk-io talks to; every field defaults to the process's own. */
export interface BlkIoIO {
  stdout: TextSink;
  stderr: TextSink;
  /** stdout is a terminal (line buffered). */
  stdoutIsTTY?: boolean;
  /** Command input when no -c is given: a whole text, or chunks as they arrive. */
  stdin?: string | AsyncIterable<string | Uint8Array> | null;
  /** Replaces abort(3) (tests): main then returns 134 without closing anything. */
  abort?: () => void;
  /** Replaces raise(3) (tests). */
  raise?: (sig: number) => void;
}

/** Thrown by a test's abort hook path: unwinds main without any close or flush. */
class AbortUnwind extends Error {
  constructor() {
    super('abort');
  }
}

const LONG_OPTIONS: readonly LongOption[] = [
  { name: 'help', hasArg: 0, val: 'h' },
  { name: 'version', hasArg: 0, val: 'V' },
  { name: 'cmd', hasArg: 1, val: 'c' },
  { name: 'format', hasArg: 1, val: 'f' },
  { name: 'read-only', hasArg: 0, val: 'r' },
  { name: 'snapshot', hasArg: 0, val: 's' },
  { name: 'nocache', hasArg: 0, val: 'n' },
  { name: 'copy-on-read', hasArg: 0, val: 'C' },
  { name: 'misalign', hasArg: 0, val: 'm' },
  { name: 'native-aio', hasArg: 0, val: 'k' },
  { name: 'discard', hasArg: 1, val: 'd' },
  { name: 'cache', hasArg: 1, val: 't' },
  { name: 'aio', hasArg: 1, val: 'i' },
  { name: 'trace', hasArg: 1, val: 'T' },
  { name: 'object', hasArg: 1, val: 'object' },
  { name: 'image-opts', hasArg: 0, val: 'image-opts' },
  { name: 'force-share', hasArg: 0, val: 'U' },
];

function usage(o: ToolOutput): void {
  const n = o.prog;
  o.out(
    `Usage: ${n} [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See '${n} -c help' for information on available commands.

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
`,
  );
}

/** glibc getopt_long's diagnostics for a long option it rejected. */
function longOptionError(prog: string, opt: string): string {
  const text = opt.slice(2);
  const eq = text.indexOf('=');
  const name = eq >= 0 ? text.slice(0, eq) : text;
  const exact = LONG_OPTIONS.find((l) => l.name === name);
  const candidates = LONG_OPTIONS.filter((l) => l.name.startsWith(name));
  const found = exact ?? (candidates.length === 1 ? candidates[0] : undefined);
  if (found !== undefined) return `${prog}: option '--${found.name}' doesn't allow an argument`;
  if (candidates.length > 1) {
    return `${prog}: option '--${name}' is ambiguous; possibilities:${candidates.map((c) => ` '--${c.name}'`).join('')}`;
  }
  return `${prog}: unrecognized option '${opt}'`;
}

/** fgets() over the command input, at most 1023 bytes a line, the newline dropped. */
class LineReader {
  private buf = '';
  private eof = false;
  private readonly it: AsyncIterator<string | Uint8Array> | null;
  private readonly decoder = new TextDecoder();

  constructor(src: string | AsyncIterable<string | Uint8Array> | null | undefined) {
    if (typeof src === 'string') {
      this.buf = src;
      this.eof = true;
      this.it = null;
    } else if (src) {
      this.it = src[Symbol.asyncIterator]();
    } else {
      this.eof = true;
      this.it = null;
    }
  }

  /** Stop reading: an async-iterated stream is destroyed, so the process can exit. */
  async close(): Promise<void> {
    await this.it?.return?.();
  }

  async next(): Promise<string | null> {
    for (;;) {
      const nl = this.buf.indexOf('\n');
      if (nl >= 0 && nl < 1023) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        return line;
      }
      if (this.buf.length >= 1023) {
        const line = this.buf.slice(0, 1023);
        this.buf = this.buf.slice(1023);
        return line;
      }
      if (this.eof || this.it === null) {
        if (this.buf === '') return null;
        const line = this.buf;
        this.buf = '';
        return line;
      }
      const r = await this.it.next();
      if (r.done === true) this.eof = true;
      else this.buf += typeof r.value === 'string' ? r.value : this.decoder.decode(r.value, { stream: true });
    }
  }
}

function defaultIO(): BlkIoIO {
  return {
    stdout: process.stdout,
    stderr: process.stderr,
    stdoutIsTTY: process.stdout.isTTY === true,
    stdin: process.stdin,
  };
}

/**
 * Run blk-io. `argv` is process.argv-shaped (argv[1] names the program); returns the exit
 * status. An `abort` command without an abort hook kills the process with SIGABRT.
 */
export async function main(argv: string[], ioArg?: Partial<BlkIoIO>): Promise<number> {
  const io: BlkIoIO = { ...defaultIO(), ...(ioArg ?? {}) };
  if (ioArg !== undefined && ioArg.stdin === undefined) io.stdin = null;
  const prog = progName(argv, 'blk-io');
  const o = new ToolOutput(io, prog);
  const hooks: IoHooks = {
    abort: () => {
      // abort(3) does not flush stdio: what is still buffered is lost, as with qemu-io.
      if (io.abort !== undefined) {
        io.abort();
        throw new AbortUnwind();
      }
      process.kill(process.pid, 'SIGABRT');
      process.abort();
    },
    raise: (sig) => {
      if (io.raise !== undefined) io.raise(sig);
      else if (sig > 0) process.kill(process.pid, sig);
    },
  };
  const s = new IoSession(o, hooks);
  setBlkdebugMessageSink((line) => o.out(`${line}\n`));
  try {
    return await run(s, argv.slice(1), io);
  } catch (e) {
    if (e instanceof AbortUnwind) return 134;
    if (e instanceof ExitNow) {
      o.flush();
      return e.status;
    }
    throw e;
  } finally {
    setBlkdebugMessageSink(null);
  }
}

class ExitNow extends Error {
  constructor(readonly status: number) {
    super(`exit ${status}`);
  }
}

async function run(s: IoSession, args: string[], io: BlkIoIO): Promise<number> {
  const o = s.o;
  const flags = defaultOpenFlags();
  let format: string | undefined;
  const cmds: string[] = [];
  let imageOpts = false;
  const objects = new ObjectTable();
  const fail = (msg: string): never => {
    o.error(msg);
    throw new ExitNow(1);
  };
  const g = new Getopt([o.prog, ...args.slice(1)], ':hVc:d:f:rsnCmki:t:T:U', LONG_OPTIONS);
  for (;;) {
    const r = g.next();
    if (r.kind === 'end') break;
    if (r.kind === 'unknown' || r.kind === 'missing') {
      if (r.opt.startsWith('--')) {
        o.errRaw(
          r.kind === 'missing'
            ? `${o.prog}: option '${r.opt}' requires an argument\n`
            : `${longOptionError(o.prog, r.opt)}\n`,
        );
      } else if (r.kind === 'missing') {
        o.errRaw(`${o.prog}: option requires an argument -- '${r.opt}'\n`);
      } else {
        o.errRaw(`${o.prog}: invalid option -- '${r.opt}'\n`);
      }
      usage(o);
      throw new ExitNow(1);
    }
    const a = r.arg ?? '';
    switch (r.opt) {
      case 's':
        flags.snapshot = true;
        break;
      case 'n':
        flags.nocache = true;
        flags.writethrough = false;
        break;
      case 'C':
        flags.copyOnRead = true;
        break;
      case 'd':
        if (!validDiscardMode(a)) fail(`Invalid discard option: ${a}`);
        break;
      case 'f':
        format = a;
        break;
      case 'c':
        cmds.push(a);
        break;
      case 'r':
        flags.readOnly = true;
        break;
      case 'm':
        // Misaligned buffers only matter for O_DIRECT; our buffers are plain memory.
        break;
      case 'k':
        flags.nativeAio = true;
        break;
      case 'i': {
        const native = parseAioMode(a);
        if (native === null) fail(`Invalid aio option: ${a}`);
        flags.nativeAio = native === true;
        break;
      }
      case 't':
        if (!parseCacheMode(a, flags)) fail(`Invalid cache option: ${a}`);
        break;
      case 'T':
        if (!s.trace.add(o, a)) throw new ExitNow(1);
        break;
      case 'V':
        o.out(`${o.prog} version ${BLOCKLAYER_VERSION} (blocklayer; commands and output of qemu-io 7.2)\n`);
        throw new ExitNow(0);
      case 'h':
        usage(o);
        throw new ExitNow(0);
      case 'U':
        flags.forceShare = true;
        break;
      case 'object': {
        // Created now, as qemu-io does while parsing: help and errors exit.
        const status = processObjectArg(o, objects, a);
        if (status !== null) throw new ExitNow(status);
        break;
      }
      case 'image-opts':
        imageOpts = true;
        break;
    }
  }
  const rest = g.rest();
  if (rest.length > 1) {
    usage(o);
    throw new ExitNow(1);
  }
  if (format !== undefined && imageOpts) fail('--image-opts and -f are mutually exclusive');
  s.imageOpts = imageOpts;

  if (rest.length === 1) {
    let ok: boolean;
    if (imageOpts) {
      const qdict = parseOptsNoisily(o, rest[0], QEMU_IO_IMAGE_OPTS);
      if (qdict === null) throw new ExitNow(1);
      ok = await openfile(s, null, flags, qdict);
    } else {
      ok = await openfile(s, rest[0], { ...flags, format });
    }
    if (!ok) throw new ExitNow(1);
  }

  let lastError = 0;
  if (cmds.length > 0) {
    for (const c of cmds) {
      if (s.quit) break;
      const ret = await qemuioCommand(s, c);
      if (ret < 0) lastError = ret;
    }
  } else {
    const reader = new LineReader(io.stdin);
    try {
      while (!s.quit) {
        o.out(`${o.prog}> `);
        o.flush();
        const line = await reader.next();
        if (line === null) break;
        const ret = await qemuioCommand(s, line);
        if (ret < 0) lastError = ret;
      }
    } finally {
      await reader.close();
    }
  }

  // Outstanding requests complete (and report) before the image is closed.
  await s.drain();
  if (s.bs !== null) {
    const bs = s.bs;
    s.bs = null;
    // Closing reports nothing, as in qemu-io (blk_unref has no error path).
    await bs.close().catch(() => undefined);
  }
  o.flush();
  return lastError < 0 ? 1 : 0;
}

export const commandNames = (): string[] => COMMANDS.map((c) => c.name);
