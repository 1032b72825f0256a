// blk-io: qemu-io 7.2 rebuilt over blocklayer. `blk-io [-f fmt] [-r] [-n|-t cache] [-C] [-U]
// [-c cmd]... [file]`; without -c, commands are read from stdin after a `<prog>> ` prompt.
// Output goes through a stdio model (stdout fully buffered on pipes, stderr unbuffered) so
// that a shared pipe sees the same interleaving as with QEMU.
import { setDebugMessageSink } from '../../index.js';
import { getoptDiagnostic, getoptTable, longoptsOf, type OptionDef } from '../shared/getopt.js';
import { ToolOutput, progName, type TextSink } from '../shared/output.js';
import { COMMANDS, qemuioCommand } from './commands.js';
import { FLAG_OPTIONS, openfile } from './cmd-open.js';
import { LineReader } from './line-reader.js';
import { QEMU_IO_IMAGE_OPTS } from '../../index.js';
import { parseOptsNoisily, processObjectArg } from '../shared/image-opts.js';
import { IoSession, defaultOpenFlags, type IoHooks, type OpenFlags } from './session.js';

export { COMMANDS } from './commands.js';

/** Reported by -V (package.json's version). */
const BLOCKLAYER_VERSION = '0.1.0';
export { maskTimings } from './format.js';

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

/** What blk-io's own options set: the open flags, then the commands to run. */
type MainArgs = OpenFlags & { cmds: string[]; imageOpts: boolean };

const long = <S>(name: string, def: OptionDef<S, IoSession>): OptionDef<S, IoSession> => ({ ...def, long: name });

/** qemu-io's options, in its long option order (glibc lists ambiguous candidates so). */
const MAIN_OPTIONS: readonly OptionDef<MainArgs, IoSession>[] = [
  {
    short: 'h',
    long: 'help',
    set: (_a, _arg, s) => {
      usage(s.o);
      throw new ExitNow(0);
    },
  },
  {
    short: 'V',
    long: 'version',
    set: (_a, _arg, s) => {
      s.o.out(`${s.o.prog} version ${BLOCKLAYER_VERSION} (blocklayer; commands and output of qemu-io 7.2)\n`);
      throw new ExitNow(0);
    },
  },
  { short: 'c', long: 'cmd', arg: 1, set: (a, arg) => void a.cmds.push(arg) },
  { short: 'f', long: 'format', arg: 1, set: (a, arg) => void (a.format = arg) },
  long('read-only', FLAG_OPTIONS.readOnly),
  long('snapshot', FLAG_OPTIONS.snapshot),
  long('nocache', FLAG_OPTIONS.nocache),
  long('copy-on-read', FLAG_OPTIONS.copyOnRead),
  // Misaligned buffers only matter for O_DIRECT; our buffers are plain memory.
  { short: 'm', long: 'misalign', set: () => undefined },
  long('native-aio', FLAG_OPTIONS.nativeAio),
  long('discard', FLAG_OPTIONS.discard),
  long('cache', FLAG_OPTIONS.cache),
  long('aio', FLAG_OPTIONS.aio),
  { short: 'T', long: 'trace', arg: 1, set: (_a, arg, s) => (s.trace.add(s.o, arg) ? undefined : 1) },
  // Created now, as qemu-io does while parsing: help and errors exit.
  {
    long: 'object',
    arg: 1,
    set: (_a, arg, s) => {
      const status = processObjectArg(s.o, s.objects, arg);
      if (status !== null) throw new ExitNow(status);
    },
  },
  { long: 'image-opts', set: (a) => void (a.imageOpts = true) },
  long('force-share', FLAG_OPTIONS.forceShare),
];

const LONG_OPTIONS = longoptsOf(MAIN_OPTIONS);

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
  setDebugMessageSink((line) => o.out(`${line}\n`));
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
    setDebugMessageSink(null);
  }
}

class ExitNow extends Error {
  constructor(readonly status: number) {
    super(`exit ${status}`);
  }
}

async function run(s: IoSession, args: string[], io: BlkIoIO): Promise<number> {
  const o = s.o;
  const a: MainArgs = { ...defaultOpenFlags(), cmds: [], imageOpts: false };
  const r = getoptTable([o.prog, ...args.slice(1)], MAIN_OPTIONS, a, s);
  if (r.kind === 'error') {
    o.errRaw(`${o.prog}: ${getoptDiagnostic(r.error, r.opt, LONG_OPTIONS)}\n`);
    usage(o);
  }
  // An invalid value was reported by its option: leave with status 1, as after a usage.
  if (r.kind !== 'end') throw new ExitNow(1);
  const rest = r.g.rest();
  if (rest.length > 1) {
    usage(o);
    throw new ExitNow(1);
  }
  const { cmds, imageOpts, ...flags } = a;
  if (flags.format !== undefined && imageOpts) {
    o.error('--image-opts and -f are mutually exclusive');
    throw new ExitNow(1);
  }
  s.imageOpts = imageOpts;

  if (rest.length === 1) {
    let ok: boolean;
    if (imageOpts) {
      const qdict = parseOptsNoisily(o, rest[0], QEMU_IO_IMAGE_OPTS);
      if (qdict === null) throw new ExitNow(1);
      ok = await openfile(s, null, flags, qdict);
    } else ok = await openfile(s, rest[0], flags);
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
  if (s.blk !== null) {
    const bs = s.blk;
    s.blk = null;
    // Closing reports nothing, as in qemu-io (blk_unref has no error path).
    await bs.close().catch(() => undefined);
  }
  o.flush();
  return lastError < 0 ? 1 : 0;
}

export const commandNames = (): string[] => COMMANDS.map((c) => c.name);
