// blk-nbd's command line: qemu-nbd 7.2's option table and its checks, in qemu-nbd's order
// (each option as getopt meets it, then list mode, socket activation, TLS and SELinux), with
// its messages and exit status. Parsing only: nothing here opens an image or a socket, except
// that --object creates its object at once, as qemu-nbd does (TLS files are read then).
import { Getopt, ToolExit, type LongOption, type ToolOutput } from '../common.js';
import { splitOptionList } from '../img-util.js';
import { helpText, versionText } from './help.js';
import { addObject } from './objects.js';

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
}

const SHORT = ':hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L';

export const LONG_OPTIONS: LongOption[] = [
  { name: 'help', hasArg: 0, val: 'h' },
  { name: 'version', hasArg: 0, val: 'V' },
  { name: 'bind', hasArg: 1, val: 'b' },
  { name: 'port', hasArg: 1, val: 'p' },
  { name: 'socket', hasArg: 1, val: 'k' },
  { name: 'offset', hasArg: 1, val: 'o' },
  { name: 'read-only', hasArg: 0, val: 'r' },
  { name: 'allocation-depth', hasArg: 0, val: 'A' },
  { name: 'bitmap', hasArg: 1, val: 'B' },
  { name: 'connect', hasArg: 1, val: 'c' },
  { name: 'disconnect', hasArg: 0, val: 'd' },
  { name: 'list', hasArg: 0, val: 'L' },
  { name: 'snapshot', hasArg: 0, val: 's' },
  { name: 'load-snapshot', hasArg: 1, val: 'l' },
  { name: 'nocache', hasArg: 0, val: 'n' },
  { name: 'cache', hasArg: 1, val: 'cache' },
  { name: 'aio', hasArg: 1, val: 'aio' },
  { name: 'discard', hasArg: 1, val: 'discard' },
  { name: 'detect-zeroes', hasArg: 1, val: 'detect-zeroes' },
  { name: 'shared', hasArg: 1, val: 'e' },
  { name: 'format', hasArg: 1, val: 'f' },
  { name: 'persistent', hasArg: 0, val: 't' },
  { name: 'verbose', hasArg: 0, val: 'v' },
  { name: 'object', hasArg: 1, val: 'object' },
  { name: 'export-name', hasArg: 1, val: 'x' },
  { name: 'description', hasArg: 1, val: 'D' },
  { name: 'tls-creds', hasArg: 1, val: 'tls-creds' },
  { name: 'tls-hostname', hasArg: 1, val: 'tls-hostname' },
  { name: 'tls-authz', hasArg: 1, val: 'tls-authz' },
  { name: 'image-opts', hasArg: 0, val: 'image-opts' },
  { name: 'trace', hasArg: 1, val: 'T' },
  { name: 'fork', hasArg: 0, val: 'fork' },
  { name: 'pid-file', hasArg: 1, val: 'pid-file' },
  { name: 'selinux-label', hasArg: 1, val: 'selinux-label' },
];

/**
 * glibc getopt_long's diagnostic for a long option it rejected: an argument where none is
 * allowed, an ambiguous abbreviation, or an unknown name.
 */
function longOptionError(prog: string, opt: string, table: readonly LongOption[]): string {
  const text = opt.slice(2);
  const eq = text.indexOf('=');
  const name = eq >= 0 ? text.slice(0, eq) : text;
  const candidates = table.filter((l) => l.name.startsWith(name));
  const found = table.find((l) => l.name === name) ?? (candidates.length === 1 ? candidates[0] : undefined);
  if (found !== undefined) return `${prog}: option '--${found.name}' doesn't allow an argument`;
  if (candidates.length > 1) {
    return `${prog}: option '--${name}' is ambiguous; possibilities:${candidates.map((c) => ` '--${c.name}'`).join('')}`;
  }
  return `${prog}: unrecognized option '${opt}'`;
}

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
  const fail = (msg: string): never => {
    o.error(msg);
    throw new ToolExit(1);
  };
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
  };
  let seenCache = false;
  let seenAio = false;
  let seenDiscard = false;
  const g = new Getopt(argv, SHORT, LONG_OPTIONS);
  for (;;) {
    const r = g.next();
    if (r.kind === 'end') break;
    if (r.kind === 'unknown' || r.kind === 'missing') {
      // glibc's own diagnostic, then qemu-nbd's hint (an error_report, so with the prefix).
      if (r.opt.startsWith('--')) {
        o.errRaw(r.kind === 'missing' ? `${o.prog}: option '${r.opt}' requires an argument\n` : `${longOptionError(o.prog, r.opt, LONG_OPTIONS)}\n`);
      } else if (r.kind === 'missing') {
        o.errRaw(`${o.prog}: option requires an argument -- '${r.opt}'\n`);
      } else {
        o.errRaw(`${o.prog}: invalid option -- '${r.opt}'\n`);
      }
      fail(`Try \`${o.prog} --help' for more information.`);
    }
    if (r.kind !== 'opt') continue;
    const a = r.arg ?? '';
    switch (r.opt) {
      case 's':
        opts.snapshot = true;
        break;
      case 'n':
      case 'cache': {
        const mode = r.opt === 'n' ? 'none' : a;
        if (seenCache) fail('-n and --cache can only be specified once');
        seenCache = true;
        if (!CACHE_MODES.includes(mode)) fail(`Invalid cache mode \`${mode}'`);
        opts.cache = mode;
        break;
      }
      case 'aio':
        if (seenAio) fail('--aio can only be specified once');
        seenAio = true;
        if (!AIO_MODES.includes(a)) fail(`Invalid aio mode '${a}'`);
        opts.aio = a;
        break;
      case 'discard':
        if (seenDiscard) fail('--discard can only be specified once');
        seenDiscard = true;
        if (a === 'off' || a === 'ignore') opts.discard = 'ignore';
        else if (a === 'on' || a === 'unmap') opts.discard = 'unmap';
        else fail(`Invalid discard mode \`${a}'`);
        break;
      case 'detect-zeroes':
        if (a !== 'off' && a !== 'on' && a !== 'unmap') fail(`Failed to parse detect_zeroes mode: invalid parameter value: ${a}`);
        opts.detectZeroes = a as NbdToolOptions['detectZeroes'];
        if (a === 'unmap' && opts.discard !== 'unmap') {
          fail('setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
        }
        break;
      case 'b':
        opts.bind = a;
        break;
      case 'p':
        opts.port = a;
        break;
      case 'o': {
        const v = parseCInteger(a);
        if (v === null || v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`Invalid offset '${a}'`);
        opts.offset = Number(v);
        break;
      }
      case 'l':
        // snapshot.id=ID,snapshot.name=NAME, or a bare ID_OR_NAME.
        if (a.startsWith('snapshot.')) {
          for (const [k] of splitOptionList(a)) {
            if (k !== 'snapshot.id' && k !== 'snapshot.name') {
              o.error(`Invalid parameter '${k}'`);
              fail(`Failed in parsing snapshot param \`${a}'`);
            }
          }
        }
        opts.loadSnapshot = a;
        opts.readOnly = true;
        break;
      case 'r':
        opts.readOnly = true;
        break;
      case 'A':
        opts.allocationDepth = true;
        break;
      case 'B':
        opts.bitmaps.unshift(a);
        break;
      case 'k':
        if (!a.startsWith('/')) fail('socket path must be absolute');
        opts.socket = a;
        break;
      case 'd':
        opts.disconnect = true;
        break;
      case 'c':
        opts.device = a;
        break;
      case 'e': {
        const v = parseCInteger(a);
        if (v === null || v < 0n || v > 0x7fffffffn) fail(`Invalid shared device number '${a}'`);
        opts.shared = Number(v);
        break;
      }
      case 'f':
        opts.format = a;
        break;
      case 't':
        opts.persistent = true;
        break;
      case 'x':
        if (new TextEncoder().encode(a).length > MAX_STRING) fail(`export name '${a}' too long`);
        opts.exportName = a;
        break;
      case 'D':
        if (new TextEncoder().encode(a).length > MAX_STRING) fail(`export description '${a}' too long`);
        opts.description = a;
        break;
      case 'v':
        opts.verbose = true;
        break;
      case 'V':
        o.out(versionText(o.prog));
        throw new ToolExit(0);
      case 'h':
        o.out(helpText(o.prog));
        throw new ToolExit(0);
      case 'object':
        try {
          addObject(a);
        } catch (e) {
          fail(e instanceof Error ? e.message : String(e));
        }
        break;
      case 'tls-creds':
        opts.tlsCreds = a;
        break;
      case 'tls-hostname':
        opts.tlsHostname = a;
        break;
      case 'tls-authz':
        opts.tlsAuthz = a;
        break;
      case 'image-opts':
        opts.imageOpts = true;
        break;
      case 'T':
        // Trace events go to each node's emitter; the tool has no sink for them.
        break;
      case 'fork':
        opts.fork = true;
        break;
      case 'L':
        opts.list = true;
        break;
      case 'pid-file':
        opts.pidFile = a;
        break;
      case 'selinux-label':
        opts.selinuxLabel = a;
        break;
    }
  }
  const rest = g.rest();
  if (opts.list) {
    if (rest.length !== 0) fail('List mode is incompatible with a file name');
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
      seenAio ||
      seenDiscard ||
      seenCache
    ) {
      fail('List mode is incompatible with per-device settings');
    }
    if (opts.fork) fail('List mode is incompatible with forking');
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
    if (opts.device !== undefined) fail("NBD device can't be set when using socket activation");
    if (opts.socket !== undefined) fail("Unix socket can't be set when using socket activation");
    if (opts.bind !== undefined) fail("The interface can't be set when using socket activation");
    if (opts.port !== undefined) fail("TCP port number can't be set when using socket activation");
    if (opts.selinuxLabel !== undefined) fail("SELinux label can't be set when using socket activation");
    if (opts.list) fail('List mode is incompatible with socket activation');
    if (opts.socketActivation > 1) fail(`${o.prog} does not support socket activation with LISTEN_FDS > 1`);
  }

  if (opts.tlsCreds !== undefined) {
    if (opts.device !== undefined) fail('TLS is not supported with a host device');
    if (opts.tlsAuthz !== undefined && opts.list) fail('TLS authorization is incompatible with export list');
    if (opts.tlsHostname !== undefined && !opts.list) fail('TLS hostname is only supported with export list');
  } else {
    if (opts.tlsAuthz !== undefined) fail('--tls-authz is not permitted without --tls-creds');
    if (opts.tlsHostname !== undefined) fail('--tls-hostname is not permitted without --tls-creds');
  }
  if (opts.selinuxLabel !== undefined) fail('SELinux support not enabled in this binary');
  return opts;
}
