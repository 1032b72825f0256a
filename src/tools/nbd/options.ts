// blk-nbd's command line: qemu-nbd 7.2's option table and its checks, in qemu-nbd's order
// (each option as getopt meets it, then list mode, socket activation, TLS and SELinux), with
// its messages and exit status. Parsing only: nothing here opens an image or a socket, except
// that --object creates its object at once, as qemu-nbd does (TLS files are read then).
import { getoptDiagnostic, getoptTable, longoptsOf, type OptionDef } from '../shared/getopt.js';
import { ToolExit, type ToolOutput } from '../shared/output.js';
import { splitOptionList } from '../img/create-options.js';
import { helpText, versionText } from './help.js';
import { ObjectTable } from '../../index.js';
import { processObjectArg } from '../shared/image-opts.js';

export interface NbdToolOptions {
  list: boolean;
  file: string | undefined;
  bind: string | undefined;
  port: string | undefined;
  socket: string | undefined;
  shared: number;
  persistent: boolean;
  verbose: boolean;
  exportName: string | undefined;
  description: string | undefined;
  offset: number;
  allocationDepth: boolean;
  bitmaps: string[];
  format: string | undefined;
  readOnly: boolean;
  snapshot: boolean;
  loadSnapshot: string | undefined;
  cache: string | undefined;
  aio: string | undefined;
  discard: 'ignore' | 'unmap';
  detectZeroes: 'off' | 'on' | 'unmap';
  imageOpts: boolean;
  tlsCreds: string | undefined;
  tlsHostname: string | undefined;
  tlsAuthz: string | undefined;
  fork: boolean;
  pidFile: string | undefined;
  selinuxLabel: string | undefined;
  device: string | undefined;
  disconnect: boolean;
  /** Listening sockets handed over by systemd-style socket activation (LISTEN_FDS). */
  socketActivation: number;
  /** The --object definitions (TLS credentials, authz-simple, secrets). */
  objects: ObjectTable;
}

/** Parsing state: the options so far and what may be given only once. */
interface ParseState {
  opts: NbdToolOptions;
  seenCache: boolean;
  seenAio: boolean;
  seenDiscard: boolean;
}

function fail(o: ToolOutput, msg: string): never {
  o.error(msg);
  throw new ToolExit(1);
}

function setCache(st: ParseState, mode: string, o: ToolOutput): void {
  if (st.seenCache) fail(o, '-n and --cache can only be specified once');
  st.seenCache = true;
  if (!CACHE_MODES.includes(mode)) fail(o, `Invalid cache mode \`${mode}'`);
  st.opts.cache = mode;
}

function setReadOnly(st: ParseState): void {
  st.opts.readOnly = true;
}

/** qemu-nbd's options, in its long-option order (glibc lists ambiguous candidates so). */
const OPTIONS: readonly OptionDef<ParseState, ToolOutput>[] = [
  { short: 'h', long: 'help', set: (_st, _a, o) => { o.out(helpText(o.prog)); throw new ToolExit(0); } },
  { short: 'V', long: 'version', set: (_st, _a, o) => { o.out(versionText(o.prog)); throw new ToolExit(0); } },
  { short: 'b', long: 'bind', arg: 1, set: (st, a) => { st.opts.bind = a; } },
  { short: 'p', long: 'port', arg: 1, set: (st, a) => { st.opts.port = a; } },
  {
    short: 'k', long: 'socket', arg: 1,
    set: (st, a, o) => {
      if (!a.startsWith('/')) fail(o, 'socket path must be absolute');
      st.opts.socket = a;
    },
  },
  {
    short: 'o', long: 'offset', arg: 1,
    set: (st, a, o) => {
      const v = parseCInteger(a);
      if (v === null || v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) fail(o, `Invalid offset '${a}'`);
      st.opts.offset = Number(v);
    },
  },
  { short: 'r', long: 'read-only', set: setReadOnly },
  { short: 'A', long: 'allocation-depth', set: (st) => { st.opts.allocationDepth = true; } },
  { short: 'B', long: 'bitmap', arg: 1, set: (st, a) => { st.opts.bitmaps.unshift(a); } },
  { short: 'c', long: 'connect', arg: 1, set: (st, a) => { st.opts.device = a; } },
  { short: 'd', long: 'disconnect', set: (st) => { st.opts.disconnect = true; } },
  { short: 'L', long: 'list', set: (st) => { st.opts.list = true; } },
  { short: 's', long: 'snapshot', set: (st) => { st.opts.snapshot = true; } },
  {
    short: 'l', long: 'load-snapshot', arg: 1,
    set: (st, a, o) => {
      // snapshot.id=ID,snapshot.name=NAME, or a bare ID_OR_NAME.
      if (a.startsWith('snapshot.')) {
        for (const [k] of splitOptionList(a)) {
          if (k !== 'snapshot.id' && k !== 'snapshot.name') {
            o.error(`Invalid parameter '${k}'`);
            fail(o, `Failed in parsing snapshot param \`${a}'`);
          }
        }
      }
      st.opts.loadSnapshot = a;
      setReadOnly(st);
    },
  },
  { short: 'n', long: 'nocache', set: (st, _a, o) => setCache(st, 'none', o) },
  { long: 'cache', arg: 1, set: (st, a, o) => setCache(st, a, o) },
  {
    long: 'aio', arg: 1,
    set: (st, a, o) => {
      if (st.seenAio) fail(o, '--aio can only be specified once');
      st.seenAio = true;
      if (!AIO_MODES.includes(a)) fail(o, `Invalid aio mode '${a}'`);
      st.opts.aio = a;
    },
  },
  {
    long: 'discard', arg: 1,
    set: (st, a, o) => {
      if (st.seenDiscard) fail(o, '--discard can only be specified once');
      st.seenDiscard = true;
      if (a === 'off' || a === 'ignore') st.opts.discard = 'ignore';
      else if (a === 'on' || a === 'unmap') st.opts.discard = 'unmap';
      else fail(o, `Invalid discard mode \`${a}'`);
    },
  },
  {
    long: 'detect-zeroes', arg: 1,
    set: (st, a, o) => {
      if (a !== 'off' && a !== 'on' && a !== 'unmap') fail(o, `Failed to parse detect_zeroes mode: invalid parameter value: ${a}`);
      st.opts.detectZeroes = a;
      if (a === 'unmap' && st.opts.discard !== 'unmap') {
        fail(o, 'setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
      }
    },
  },
  {
    short: 'e', long: 'shared', arg: 1,
    set: (st, a, o) => {
      const v = parseCInteger(a);
      if (v === null || v < 0n || v > 0x7fffffffn) fail(o, `Invalid shared device number '${a}'`);
      st.opts.shared = Number(v);
    },
  },
  { short: 'f', long: 'format', arg: 1, set: (st, a) => { st.opts.format = a; } },
  { short: 't', long: 'persistent', set: (st) => { st.opts.persistent = true; } },
  { short: 'v', long: 'verbose', set: (st) => { st.opts.verbose = true; } },
  {
    long: 'object', arg: 1,
    set: (st, a, o) => {
      // Made at once, as qemu-nbd does: TLS credential files are checked here.
      const status = processObjectArg(o, st.opts.objects, a);
      if (status !== null) throw new ToolExit(status);
    },
  },
  {
    short: 'x', long: 'export-name', arg: 1,
    set: (st, a, o) => {
      if (new TextEncoder().encode(a).length > MAX_STRING) fail(o, `export name '${a}' too long`);
      st.opts.exportName = a;
    },
  },
  {
    short: 'D', long: 'description', arg: 1,
    set: (st, a, o) => {
      if (new TextEncoder().encode(a).length > MAX_STRING) fail(o, `export description '${a}' too long`);
      st.opts.description = a;
    },
  },
  { long: 'tls-creds', arg: 1, set: (st, a) => { st.opts.tlsCreds = a; } },
  { long: 'tls-hostname', arg: 1, set: (st, a) => { st.opts.tlsHostname = a; } },
  { long: 'tls-authz', arg: 1, set: (st, a) => { st.opts.tlsAuthz = a; } },
  { long: 'image-opts', set: (st) => { st.opts.imageOpts = true; } },
  // Trace events go to each node's emitter; the tool has no sink for them.
  { short: 'T', long: 'trace', arg: 1, set: () => undefined },
  { long: 'fork', set: (st) => { st.opts.fork = true; } },
  { long: 'pid-file', arg: 1, set: (st, a) => { st.opts.pidFile = a; } },
  { long: 'selinux-label', arg: 1, set: (st, a) => { st.opts.selinuxLabel = a; } },
];

export const LONG_OPTIONS = longoptsOf(OPTIONS);

/** The longest export name or description qemu-nbd takes (NBD_MAX_STRING_SIZE). */
const MAX_STRING = 4096;

const CACHE_MODES = ['none', 'off', 'writeback', 'writethrough', 'directsync', 'unsafe'];
const AIO_MODES = ['threads', 'native', 'io_uring'];

/** qemu_strtoi/qemu_strtou64 with base 0: decimal, 0x hex, 0 octal, nothing trailing. */
function parseCInteger(s: string): bigint | null {
  const m = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(s);
  if (m === null) return null;
  const digits = m[2];
  let v: bigint;
  if (/^0[xX]/.test(digits)) v = BigInt(digits);
  else if (digits.length > 1 && digits.startsWith('0')) v = BigInt(`0o${digits.slice(1)}`);
  else v = BigInt(digits);
  return m[1] === '-' ? -v : v;
}

/** socket activation: LISTEN_PID names us and LISTEN_FDS says how many (check_socket_activation). */
export function checkSocketActivation(env: NodeJS.ProcessEnv, pid: number): number {
  const lpid = env.LISTEN_PID;
  const lfds = env.LISTEN_FDS;
  if (lpid === undefined || lfds === undefined) return 0;
  if (!/^\d+$/.test(lpid) || Number(lpid) !== pid) return 0;
  if (!/^\d+$/.test(lfds) || Number(lfds) === 0) return 0;
  return Number(lfds);
}

/**
 * The options of `argv` (argv[0] = program name) or a ToolExit after qemu-nbd's message.
 * -h and -V print and exit 0 here.
 */
export function parseNbdOptions(o: ToolOutput, argv: string[], env: NodeJS.ProcessEnv, pid: number): NbdToolOptions {
  const opts: NbdToolOptions = {
    list: false,
    file: undefined,
    bind: undefined,
    port: undefined,
    socket: undefined,
    shared: 1,
    persistent: false,
    verbose: false,
    exportName: undefined,
    description: undefined,
    offset: 0,
    allocationDepth: false,
    bitmaps: [],
    format: undefined,
    readOnly: false,
    snapshot: false,
    loadSnapshot: undefined,
    cache: undefined,
    aio: undefined,
    discard: 'ignore',
    detectZeroes: 'off',
    imageOpts: false,
    tlsCreds: undefined,
    tlsHostname: undefined,
    tlsAuthz: undefined,
    fork: false,
    pidFile: undefined,
    selinuxLabel: undefined,
    device: undefined,
    disconnect: false,
    socketActivation: 0,
    objects: new ObjectTable(),
  };
  const st: ParseState = { opts, seenCache: false, seenAio: false, seenDiscard: false };
  const r = getoptTable(argv, OPTIONS, st, o);
  if (r.kind === 'error') {
    // glibc's own diagnostic, then qemu-nbd's hint (an error_report, so with the prefix).
    o.errRaw(`${o.prog}: ${getoptDiagnostic(r.error, r.opt, LONG_OPTIONS)}\n`);
    fail(o, `Try \`${o.prog} --help' for more information.`);
  }
  const g = r.g;
  const rest = g.rest();
  if (opts.list) {
    if (rest.length !== 0) fail(o, 'List mode is incompatible with a file name');
    if (
      opts.exportName !== undefined ||
      opts.description !== undefined ||
      opts.offset !== 0 ||
      opts.device !== undefined ||
      opts.disconnect ||
      opts.format !== undefined ||
      opts.loadSnapshot !== undefined ||
      opts.bitmaps.length > 0 ||
      opts.allocationDepth ||
      st.seenAio ||
      st.seenDiscard ||
      st.seenCache
    ) {
      fail(o, 'List mode is incompatible with per-device settings');
    }
    if (opts.fork) fail(o, 'List mode is incompatible with forking');
  } else if (rest.length !== 1) {
    o.error('Invalid number of arguments');
    o.errRaw(`Try \`${o.prog} --help' for more information.\n`);
    throw new ToolExit(1);
  } else {
    opts.file = rest[0];
    opts.exportName ??= '';
  }

  opts.socketActivation = checkSocketActivation(env, pid);
  if (opts.socketActivation === 0) {
    if (opts.socket === undefined) {
      opts.bind ??= '0.0.0.0';
      opts.port ??= '10809';
    }
  } else {
    if (opts.device !== undefined) fail(o, "NBD device can't be set when using socket activation");
    if (opts.socket !== undefined) fail(o, "Unix socket can't be set when using socket activation");
    if (opts.bind !== undefined) fail(o, "The interface can't be set when using socket activation");
    if (opts.port !== undefined) fail(o, "TCP port number can't be set when using socket activation");
    if (opts.selinuxLabel !== undefined) fail(o, "SELinux label can't be set when using socket activation");
    if (opts.list) fail(o, 'List mode is incompatible with socket activation');
    if (opts.socketActivation > 1) fail(o, `${o.prog} does not support socket activation with LISTEN_FDS > 1`);
  }

  if (opts.tlsCreds !== undefined) {
    if (opts.device !== undefined) fail(o, 'TLS is not supported with a host device');
    if (opts.tlsAuthz !== undefined && opts.list) fail(o, 'TLS authorization is incompatible with export list');
    if (opts.tlsHostname !== undefined && !opts.list) fail(o, 'TLS hostname is only supported with export list');
  } else {
    if (opts.tlsAuthz !== undefined) fail(o, '--tls-authz is not permitted without --tls-creds');
    if (opts.tlsHostname !== undefined) fail(o, '--tls-hostname is not permitted without --tls-creds');
  }
  if (opts.selinuxLabel !== undefined) fail(o, 'SELinux support not enabled in this binary');
  return opts;
}
