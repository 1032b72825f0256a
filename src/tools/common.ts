// Shared pieces of the command-line tools (blk-img, blk-io): QEMU-compatible option parsing
// (glibc getopt_long semantics, because qemu-img's error messages quote argv[optind - 1] and so
// depend on exactly how getopt advances and permutes), size parsing (qemu_strtosz / cvtnum),
// size formatting (size_to_str, qemu-io's cvtstr) with C printf rounding, and an output
// object that reproduces stdio buffering so that stdout/stderr interleave like QEMU's.
import { BlockError, isBlockError } from '../block/errors.js';

// ---------------------------------------------------------------------------------------------
// Program name and output
// ---------------------------------------------------------------------------------------------

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
 * stdout/stderr with C stdio semantics: stderr is unbuffered; stdout is fully buffered (4 KiB
 * chunks) unless it is a terminal (line buffered), and flushed explicitly or at exit. When both
 * streams share one pipe, this reproduces QEMU's ordering (errors first unless flushed).
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
    // A full buffer is written out in whole blocks; the rest waits.
    if (this.pending.length >= STDIO_BUFSIZ) {
      const n = this.pending.length - (this.pending.length % STDIO_BUFSIZ);
      this.io.stdout.write(this.pending.slice(0, n));
      this.pending = this.pending.slice(n);
    }
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
    this.io.stderr.write(s);
  }

  /** error_report: "prog: message\n" on stderr. */
  error(msg: string): void {
    this.io.stderr.write(`${this.prog}: ${msg}\n`);
  }

  /** warn_report: "prog: warning: message\n". */
  warn(msg: string): void {
    this.io.stderr.write(`${this.prog}: warning: ${msg}\n`);
  }
}

/** Thrown to leave a tool with an exit status after the messages were printed. */
export class ToolExit extends Error {
  override readonly name = 'ToolExit';
  constructor(readonly status: number) {
    super(`exit ${status}`);
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

// ---------------------------------------------------------------------------------------------
// getopt_long (glibc semantics, PERMUTE ordering unless the optstring starts with '+')
// ---------------------------------------------------------------------------------------------

export interface LongOption {
  name: string;
  /** 0 no_argument, 1 required_argument, 2 optional_argument. */
  hasArg: 0 | 1 | 2;
  /** Value returned (a short option letter or any unique string). */
  val: string;
}

export type GetoptResult =
  | { kind: 'opt'; opt: string; arg: string | undefined }
  | { kind: 'missing'; opt: string }
  | { kind: 'unknown'; opt: string }
  | { kind: 'end' };

/**
 * A port of glibc's getopt_long state machine over a copy of argv (argv[0] is the command
 * name, as in the C programs). `optind` and the (permuted) `argv` are observable so that
 * messages can quote `argv[optind - 1]` exactly as qemu-img does.
 */
export class Getopt {
  readonly argv: string[];
  optind = 1;
  optarg: string | undefined;
  private nextchar: string | null = null;
  private firstNonopt = 1;
  private lastNonopt = 1;
  private readonly permute: boolean;
  private readonly shortopts: string;
  private readonly colon: boolean;

  constructor(
    argv: readonly string[],
    optstring: string,
    private readonly longopts: readonly LongOption[] = [],
  ) {
    this.argv = [...argv];
    let s = optstring;
    this.permute = true;
    if (s.startsWith('+') || s.startsWith('-')) {
      this.permute = !s.startsWith('+');
      s = s.slice(1);
    }
    this.colon = s.startsWith(':');
    this.shortopts = s;
  }

  private isNonOption(i: number): boolean {
    const a = this.argv[i];
    return a[0] !== '-' || a.length === 1;
  }

  /** glibc's exchange(): move the skipped non-options after the options just processed. */
  private exchange(): void {
    const a = this.argv;
    const nonopts = a.slice(this.firstNonopt, this.lastNonopt);
    const opts = a.slice(this.lastNonopt, this.optind);
    a.splice(this.firstNonopt, this.optind - this.firstNonopt, ...opts, ...nonopts);
    this.firstNonopt += this.optind - this.lastNonopt;
    this.lastNonopt = this.optind;
  }

  /** The next option; 'missing'/'unknown' correspond to getopt returning ':' / '?'. */
  next(): GetoptResult {
    const argc = this.argv.length;
    this.optarg = undefined;
    if (this.nextchar === null || this.nextchar === '') {
      if (this.lastNonopt > this.optind) this.lastNonopt = this.optind;
      if (this.firstNonopt > this.optind) this.firstNonopt = this.optind;
      if (this.permute) {
        if (this.firstNonopt !== this.lastNonopt && this.lastNonopt !== this.optind) this.exchange();
        else if (this.lastNonopt !== this.optind) this.firstNonopt = this.optind;
        while (this.optind < argc && this.isNonOption(this.optind)) this.optind++;
        this.lastNonopt = this.optind;
      }
      if (this.optind !== argc && this.argv[this.optind] === '--') {
        this.optind++;
        if (this.firstNonopt !== this.lastNonopt && this.lastNonopt !== this.optind) this.exchange();
        else if (this.firstNonopt === this.lastNonopt) this.firstNonopt = this.optind;
        this.lastNonopt = argc;
        this.optind = argc;
      }
      if (this.optind === argc) {
        if (this.firstNonopt !== this.lastNonopt) this.optind = this.firstNonopt;
        return { kind: 'end' };
      }
      if (this.isNonOption(this.optind)) {
        // REQUIRE_ORDER ('+'): stop at the first non-option.
        return { kind: 'end' };
      }
      const cur = this.argv[this.optind];
      if (this.longopts.length > 0 && cur[1] === '-') {
        this.nextchar = cur.slice(2);
        return this.longOption();
      }
      this.nextchar = cur.slice(1);
    }
    const c = this.nextchar[0];
    this.nextchar = this.nextchar.slice(1);
    // optind moves on when the last character of the element is being processed.
    if (this.nextchar === '') this.optind++;
    const idx = this.shortopts.indexOf(c);
    if (idx < 0 || c === ':' || c === ';') return { kind: 'unknown', opt: c };
    const takesArg = this.shortopts[idx + 1] === ':';
    const optional = takesArg && this.shortopts[idx + 2] === ':';
    if (!takesArg) return { kind: 'opt', opt: c, arg: undefined };
    if (optional) {
      let arg: string | undefined;
      if (this.nextchar !== '') {
        arg = this.nextchar;
        this.optind++;
      }
      this.nextchar = null;
      this.optarg = arg;
      return { kind: 'opt', opt: c, arg };
    }
    let arg: string;
    if (this.nextchar !== '') {
      arg = this.nextchar;
      this.optind++;
    } else if (this.optind === argc) {
      this.nextchar = null;
      return this.colon ? { kind: 'missing', opt: c } : { kind: 'unknown', opt: c };
    } else {
      arg = this.argv[this.optind++];
    }
    this.nextchar = null;
    this.optarg = arg;
    return { kind: 'opt', opt: c, arg };
  }

  private longOption(): GetoptResult {
    const argc = this.argv.length;
    const text = this.nextchar ?? '';
    const eq = text.indexOf('=');
    const name = eq >= 0 ? text.slice(0, eq) : text;
    let found: LongOption | undefined = this.longopts.find((o) => o.name === name);
    if (found === undefined) {
      let ambiguous = false;
      for (const o of this.longopts) {
        if (!o.name.startsWith(name)) continue;
        if (found === undefined) found = o;
        else if (found.hasArg !== o.hasArg || found.val !== o.val) ambiguous = true;
      }
      if (ambiguous) {
        this.nextchar = null;
        this.optind++;
        return { kind: 'unknown', opt: `--${text}` };
      }
    }
    if (found === undefined) {
      this.nextchar = null;
      this.optind++;
      return { kind: 'unknown', opt: `--${text}` };
    }
    this.optind++;
    this.nextchar = null;
    if (eq >= 0) {
      if (found.hasArg === 0) return { kind: 'unknown', opt: `--${found.name}` };
      this.optarg = text.slice(eq + 1);
    } else if (found.hasArg === 1) {
      if (this.optind < argc) this.optarg = this.argv[this.optind++];
      else return this.colon ? { kind: 'missing', opt: `--${found.name}` } : { kind: 'unknown', opt: `--${found.name}` };
    }
    return { kind: 'opt', opt: found.val, arg: this.optarg };
  }

  /** argv[optind - 1]: what qemu-img quotes in "unrecognized option" / "missing argument". */
  get lastElement(): string {
    return this.argv[this.optind - 1];
  }

  /** Arguments left after the options (permuted non-options first). */
  rest(): string[] {
    return this.argv.slice(this.optind);
  }
}

/**
 * Drive a Getopt the way every qemu-img subcommand does: ':' -> "missing argument for option
 * 'X'", '?' -> "unrecognized option 'X'" (X = argv[optind-1]), both followed by the help hint
 * and exit 1. `handle` gets each recognised option.
 */
export function parseOptions(
  o: ToolOutput,
  argv: readonly string[],
  optstring: string,
  longopts: readonly LongOption[],
  handle: (opt: string, arg: string | undefined) => void,
): string[] {
  const g = new Getopt(argv, optstring, longopts);
  for (;;) {
    const r = g.next();
    if (r.kind === 'end') break;
    if (r.kind === 'missing') errorExit(o, `missing argument for option '${g.lastElement}'`);
    if (r.kind === 'unknown') errorExit(o, `unrecognized option '${g.lastElement}'`);
    handle(r.opt, r.arg);
  }
  return g.rest();
}

// ---------------------------------------------------------------------------------------------
// Sizes: qemu_strtosz and cvtnum
// ---------------------------------------------------------------------------------------------

const U64_LIMIT = 1n << 64n;
export const INT64_MAX = (1n << 63n) - 1n;

function suffixMul(c: string | undefined, unit: bigint): bigint {
  switch (c?.toUpperCase()) {
    case 'B':
      return 1n;
    case 'K':
      return unit;
    case 'M':
      return unit ** 2n;
    case 'G':
      return unit ** 3n;
    case 'T':
      return unit ** 4n;
    case 'P':
      return unit ** 5n;
    case 'E':
      return unit ** 6n;
    default:
      return -1n;
  }
}

/** strtoull-like scan: whitespace, sign, digits in `base`; returns end index and value. */
function scanU64(s: string, start: number, base: 10 | 16): { end: number; value: bigint; erange: boolean; neg: boolean } {
  let i = start;
  while (i < s.length && ' \t\n\v\f\r'.includes(s[i])) i++;
  let neg = false;
  if (s[i] === '+' || s[i] === '-') {
    neg = s[i] === '-';
    i++;
  }
  if (base === 16 && s[i] === '0' && (s[i + 1] === 'x' || s[i + 1] === 'X') && /[0-9a-fA-F]/.test(s[i + 2] ?? '')) i += 2;
  const digits = base === 10 ? /[0-9]/ : /[0-9a-fA-F]/;
  const d0 = i;
  let v = 0n;
  while (i < s.length && digits.test(s[i])) {
    v = v * BigInt(base) + BigInt(parseInt(s[i], base));
    i++;
  }
  if (i === d0) return { end: start, value: 0n, erange: false, neg: false };
  const erange = v >= U64_LIMIT;
  return { end: i, value: erange ? U64_LIMIT - 1n : v, erange, neg };
}

export type StrtoszResult = { ok: true; value: bigint; end: number } | { ok: false; error: 'EINVAL' | 'ERANGE'; end: number };

/**
 * qemu_strtosz: decimal (or 0x hex) integer, optional decimal fraction, optional suffix
 * B/K/M/G/T/P/E (any case, powers of `unit`); a fraction requires a suffix other than B.
 * With `allowTrailing` false, anything after the number is EINVAL (callers passing end=NULL).
 */
export function qemuStrtosz(s: string, defaultSuffix = 'B', unit = 1024n, allowTrailing = false): StrtoszResult {
  let retval: 'EINVAL' | 'ERANGE' | null = null;
  let end = 0;
  let val = 0n;
  let valf = 0n; // fraction as 0.64 fixed point
  let done = false;
  const first = scanU64(s, 0, 10);
  if (first.end === 0) {
    retval = 'EINVAL';
    end = 0;
    done = true;
  } else if (first.erange) {
    retval = 'ERANGE';
    end = first.end;
    done = true;
  } else if (s.slice(0, first.end).includes('-')) {
    retval = 'EINVAL';
    end = 0;
    done = true;
  }
  if (!done) {
    val = first.value;
    end = first.end;
    if (val === 0n && (s[end] === 'x' || s[end] === 'X')) {
      const hex = scanU64(s, 0, 16);
      if (hex.erange) {
        retval = 'ERANGE';
        end = hex.end;
        done = true;
      } else {
        val = hex.value;
        end = hex.end;
        if (s[end] === '.' || suffixMul(s[end], unit) > 0n) {
          end = 0;
          retval = 'EINVAL';
          done = true;
        }
      }
    } else if (s[end] === '.') {
      // strtod on the fraction; an exponent makes the whole input invalid.
      const m = /^\.[0-9]*(?:[eE][+-]?[0-9]+)?/.exec(s.slice(end));
      const txt = m === null ? '.' : m[0];
      if (txt === '.' || !/[0-9]/.test(txt)) {
        end += 1;
      } else if (/[eE]/.test(txt)) {
        end = 0;
        retval = 'EINVAL';
        done = true;
      } else {
        const fraction = Number(`0${txt}`);
        end += txt.length;
        valf = exactFloor(fraction * 2 ** 64);
      }
    }
  }
  if (!done) {
    let mul = suffixMul(s[end], unit);
    if (mul > 0n) end++;
    else mul = suffixMul(defaultSuffix, unit);
    if (mul === 1n) {
      if (valf !== 0n) {
        end = 0;
        retval = 'EINVAL';
      }
    } else {
      // Exact 64.64 x 64 product; the fraction rounds half up.
      const total = ((val * mul) << 64n) + valf * mul + (1n << 63n);
      val = total >> 64n;
      if (val >= U64_LIMIT) retval = 'ERANGE';
    }
  }
  if (!allowTrailing && end < s.length) retval = 'EINVAL';
  if (retval !== null) return { ok: false, error: retval, end };
  return { ok: true, value: val, end };
}

/** floor of a finite non-negative double as a BigInt (exact). */
function exactFloor(x: number): bigint {
  if (!Number.isFinite(x) || x <= 0) return 0n;
  if (x >= 2 ** 64) return U64_LIMIT - 1n;
  return BigInt(Math.floor(x));
}

/**
 * qemu-img's cvtnum_full: a size in [min, max] or the two-line "You may use k, M, G..." /
 * "Must be between" errors. Throws ToolExit(1) after printing.
 */
export function cvtnumFull(o: ToolOutput, name: string, value: string, min: bigint, max: bigint): number {
  const r = qemuStrtosz(value);
  if (!r.ok && r.error !== 'ERANGE') {
    o.error(`Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for`);
    o.error('kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
    throw new ToolExit(1);
  }
  if (!r.ok || r.value > max || r.value < min) {
    o.error(`Invalid ${name} specified. Must be between ${min} and ${max}.`);
    throw new ToolExit(1);
  }
  return toSafeNumber(r.value, name);
}

export function cvtnum(o: ToolOutput, name: string, value: string): number {
  return cvtnumFull(o, name, value, 0n, INT64_MAX);
}

/** Sizes beyond 2^53 cannot be represented as JS numbers: refuse them clearly. */
export function toSafeNumber(v: bigint, what = 'value'): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new BlockError('EFBIG', `${what} ${v} is larger than this implementation supports (${Number.MAX_SAFE_INTEGER})`);
  }
  return Number(v);
}

/** qemu_strtosz for -o size options: the QemuOpts message when invalid. */
export function parseOptionSize(name: string, value: string): bigint {
  const r = qemuStrtosz(value);
  if (!r.ok) {
    throw new BlockError(
      'EINVAL',
      `Parameter '${name}' expects a non-negative number below 2^64\n` +
        'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n' +
        'and exabytes, respectively.',
    );
  }
  return r.value;
}

// ---------------------------------------------------------------------------------------------
// printf-exact number formatting (glibc: exact binary value, ties to even)
// ---------------------------------------------------------------------------------------------

/** x (finite, >= 0) as an exact fraction num/den. */
function toFraction(x: number): { num: bigint; den: bigint } {
  if (x === 0) return { num: 0n, den: 1n };
  const buf = new DataView(new ArrayBuffer(8));
  buf.setFloat64(0, x);
  const hi = buf.getUint32(0);
  const lo = buf.getUint32(4);
  const expBits = (hi >>> 20) & 0x7ff;
  let mant = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  let exp: number;
  if (expBits === 0) exp = -1074;
  else {
    mant |= 1n << 52n;
    exp = expBits - 1075;
  }
  return exp >= 0 ? { num: mant << BigInt(exp), den: 1n } : { num: mant, den: 1n << BigInt(-exp) };
}

/** round(num/den * 10^scale) to an integer, ties to even. */
function roundScaled(num: bigint, den: bigint, scale: number): bigint {
  let n = num;
  let d = den;
  if (scale >= 0) n *= 10n ** BigInt(scale);
  else d *= 10n ** BigInt(-scale);
  const q = n / d;
  const r2 = (n % d) * 2n;
  if (r2 > d || (r2 === d && q % 2n === 1n)) return q + 1n;
  return q;
}

function withPoint(digits: bigint, decimals: number): string {
  let s = digits.toString();
  if (decimals === 0) return s;
  if (s.length <= decimals) s = '0'.repeat(decimals - s.length + 1) + s;
  return `${s.slice(0, s.length - decimals)}.${s.slice(s.length - decimals)}`;
}

/** printf("%.<prec>f", x). */
export function formatFixed(x: number, prec: number): string {
  const neg = x < 0 || Object.is(x, -0);
  const { num, den } = toFraction(Math.abs(x));
  return (neg ? '-' : '') + withPoint(roundScaled(num, den, prec), prec);
}

/** printf("%.<prec>g", x) (also what "%0.3g" means). */
export function formatG(x: number, prec = 6): string {
  const p = prec === 0 ? 1 : prec;
  const neg = x < 0 || Object.is(x, -0);
  const ax = Math.abs(x);
  if (ax === 0) return neg ? '-0' : '0';
  const { num, den } = toFraction(ax);
  // Decimal exponent e with 10^e <= ax < 10^(e+1), found exactly.
  let e = Math.floor(Math.log10(ax));
  const pow = (k: number): { n: bigint; d: bigint } => (k >= 0 ? { n: 10n ** BigInt(k), d: 1n } : { n: 1n, d: 10n ** BigInt(-k) });
  const ge = (k: number): boolean => {
    const t = pow(k);
    return num * t.d >= t.n * den;
  };
  while (!ge(e)) e--;
  while (ge(e + 1)) e++;
  let q = roundScaled(num, den, p - 1 - e);
  if (q >= 10n ** BigInt(p)) {
    q /= 10n;
    e++;
  }
  let s: string;
  if (e < -4 || e >= p) {
    const m = withPoint(q, p - 1);
    const mant = m.includes('.') ? m.replace(/0+$/, '').replace(/\.$/, '') : m;
    const ae = Math.abs(e);
    s = `${mant}e${e < 0 ? '-' : '+'}${ae < 10 ? '0' : ''}${ae}`;
  } else {
    const decimals = p - 1 - e;
    const f = withPoint(q, decimals);
    s = f.includes('.') ? f.replace(/0+$/, '').replace(/\.$/, '') : f;
  }
  return (neg ? '-' : '') + s;
}

const SIZE_SUFFIXES = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];

/**
 * QEMU's size_to_str: switch to the next binary unit once the value reaches 1000 of the
 * current one (frexp of val * 1024/1000), then "%0.3g <unit>B".
 */
export function sizeToStr(val: number | bigint): string {
  const v = typeof val === 'bigint' ? Number(val) : val;
  const scaled = v / (1000 / 1024);
  let exp = 0;
  if (scaled !== 0) {
    // frexp: scaled = m * 2^exp with m in [0.5, 1)
    exp = Math.floor(Math.log2(scaled)) + 1;
    if (2 ** (exp - 1) > scaled) exp--;
    else if (2 ** exp <= scaled) exp++;
  }
  const i = Math.trunc((exp - 1) / 10);
  const div = 2 ** (i * 10);
  return `${formatG(v / div, 3)} ${SIZE_SUFFIXES[i]}B`;
}

/** qemu-io's cvtstr: "%.3f" in the largest unit reached, ".000" dropped ("1.062 KiB", "64 KiB"). */
export function cvtstr(value: number): string {
  const units: Array<[number, string]> = [
    [2 ** 60, ' EiB'],
    [2 ** 50, ' PiB'],
    [2 ** 40, ' TiB'],
    [2 ** 30, ' GiB'],
    [2 ** 20, ' MiB'],
    [2 ** 10, ' KiB'],
  ];
  for (const [mul, suffix] of units) {
    if (value >= mul) return trimZeros(formatFixed(value / mul, 3), suffix);
  }
  return trimZeros(formatFixed(value, 6), ' bytes');
}

function trimZeros(s: string, suffix: string): string {
  const i = s.indexOf('.000');
  return i >= 0 ? s.slice(0, i) + suffix : s + suffix;
}
