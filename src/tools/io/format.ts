// blk-io's number parsing and output formats, matching qemu-io 7.2 byte for byte: the size
// parser (qemu_strtosz through cvtnum, with 7.2's deprecated hex-with-suffix form), pattern bytes,
// the hex dump of `read -v` and the two report formats (human and `-C`).
import { INT64_MAX, qemuStrtosz } from '../shared/size.js';
import { cvtstr, formatFixed } from '../shared/printf.js';
import { toolHost } from '../shared/host.js';
import { type ToolOutput } from '../shared/output.js';

/** Largest request qemu-io accepts (BDRV_REQUEST_MAX_BYTES: INT_MAX rounded down to 512). */
export const BDRV_REQUEST_MAX_BYTES = 2147483136;

/**
 * `value` is the number as a double (exact up to 2^53; beyond, callers see a non-safe integer
 * and treat the request as out of range); `big` is exact, for messages that print it.
 */
export type CvtnumResult = { ok: true; value: number; big: bigint } | { ok: false; error: 'EINVAL' | 'ERANGE' };

/** Multipliers of the suffixes that cannot be hex digits (B and E are digits after 0x). */
const HEX_SUFFIX_MUL: Record<string, bigint> = { K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n, P: 1n << 50n };

/**
 * qemu-io's cvtnum: qemu_strtosz with nothing allowed after the number, then a value above
 * INT64_MAX is ERANGE. QEMU 7.2 still accepts "0x1k" with a deprecation warning (removed in 8.0,
 * which is what common.ts's parser implements), so that one form is handled here.
 */
export function cvtnum(o: ToolOutput, s: string): CvtnumResult {
  let value: bigint;
  const hex = /^([ \t\n\v\f\r]*\+?0[xX][0-9a-fA-F]+)([KMGTPkmgtp])$/.exec(s);
  if (hex !== null) {
    o.warn(`Using a multiplier suffix on hex numbers is deprecated: ${s}`);
    const digits = hex[1].trim().replace(/^\+/, '');
    const base = BigInt(digits);
    if (base >= 1n << 64n) return { ok: false, error: 'ERANGE' };
    value = base * HEX_SUFFIX_MUL[hex[2].toUpperCase()];
    if (value >= 1n << 64n) return { ok: false, error: 'ERANGE' };
  } else if (roundsToOne(s) !== null) {
    // A fraction so close to 1 that the double is 1.0: QEMU's conversion of 2^64 to its
    // 0.64 fixed point wraps to 0 (x86), so the fraction vanishes ("1.99999999999999999999k"
    // is 1 KiB).
    value = roundsToOne(s) ?? 0n;
    if (value >= 1n << 64n) return { ok: false, error: 'ERANGE' };
  } else {
    const r = qemuStrtosz(s);
    if (!r.ok) return { ok: false, error: r.error };
    value = r.value;
  }
  if (value > INT64_MAX) return { ok: false, error: 'ERANGE' };
  return { ok: true, value: Number(value), big: value };
}

const SUFFIX_MUL: Record<string, bigint> = { K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n, P: 1n << 50n, E: 1n << 60n };

/** The value of "N.FFFF<suffix>" when the fraction reads as exactly 1.0, else null. */
function roundsToOne(s: string): bigint | null {
  const m = /^[ \t\n\v\f\r]*\+?([0-9]+)(\.[0-9]+)([KMGTPEkmgtpe])$/.exec(s);
  if (m === null || Number(`0${m[2]}`) < 1) return null;
  return BigInt(m[1]) * SUFFIX_MUL[m[3].toUpperCase()];
}

/** print_cvtnum_err: the message for a failed cvtnum (stdout). */
export function printCvtnumErr(o: ToolOutput, error: 'EINVAL' | 'ERANGE', arg: string): void {
  if (error === 'EINVAL') o.out(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${arg}\n`);
  else o.out(`Parsing error: argument too large -- ${arg}\n`);
}

/** C strtol(s, &end, 0) over the whole string: null when something is left over or it overflows. */
export function strtolFull(s: string): number | null {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(s);
  if (m === null) {
    // "0x" alone parses as 0 with "x" left over: still invalid as a whole.
    return null;
  }
  const body = m[2];
  let v: bigint;
  if (/^0[xX]/.test(body)) v = BigInt(body);
  else if (body.length > 1 && body.startsWith('0')) v = BigInt(`0o${body.slice(1)}`);
  else v = BigInt(body);
  if (m[1] === '-') v = -v;
  // strtol saturates at LONG_MIN/LONG_MAX: callers only compare against small bounds.
  const LONG_MAX = (1n << 63n) - 1n;
  if (v > LONG_MAX) v = LONG_MAX;
  if (v < -LONG_MAX - 1n) v = -LONG_MAX - 1n;
  return Number(v);
}

/** parse_pattern: a byte 0..255 in C notation (0x.., 0.., decimal), else the message and -1. */
export function parsePattern(o: ToolOutput, arg: string): number {
  const v = strtolFull(arg);
  if (v === null || v < 0 || v > 255) {
    o.out(`${arg} is not a valid pattern byte\n`);
    return -1;
  }
  return v;
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/** C isalnum in the "C" locale. */
function isAlnum(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
}

/**
 * dump_buffer: 16 bytes a line, "%08x:  " guest offset, "xx " per byte, one space, then the
 * printable column; a short last line is not padded.
 */
export function dumpBuffer(o: ToolOutput, buf: Uint8Array, offset: number): void {
  let text = '';
  for (let i = 0; i < buf.length; i += 16) {
    const n = Math.min(16, buf.length - i);
    let line = `${(offset + i).toString(16).padStart(8, '0')}:  `;
    for (let j = 0; j < n; j++) line += `${hex2(buf[i + j])} `;
    line += ' ';
    for (let j = 0; j < n; j++) line += isAlnum(buf[i + j]) ? String.fromCharCode(buf[i + j]) : '.';
    text += `${line}\n`;
    // Hand large dumps to the stdio model in pieces, so the 4 KiB flush points stay exact.
    if (text.length >= 65536) {
      o.out(text);
      text = '';
    }
  }
  if (text !== '') o.out(text);
}

/** Elapsed time of one operation, nanoseconds (CLOCK_MONOTONIC difference). */
export type Elapsed = bigint;

export function nowNs(): bigint {
  return toolHost().nowNs();
}

/** Seconds as a double, never 0 (a zero interval would print "inf" in QEMU; ours never is). */
function seconds(t: Elapsed): number {
  const s = Number(t) / 1e9;
  return s > 0 ? s : 1e-9;
}

/** timestr: "SS.ss sec" below a second, "H:MM:SS.ss" above it or when verbose (-C). */
export function timestr(t: Elapsed, verbose: boolean): string {
  const sec = Number(t / 1_000_000_000n);
  const frac = Number(t % 1_000_000_000n) / 1e9;
  if (verbose || sec > 0) {
    const h = Math.floor(sec / 3600);
    const m = Math.floor((sec % 3600) / 60);
    const s = (sec % 60) + frac;
    return `${h}:${String(m).padStart(2, '0')}:${formatFixed(s, 2).padStart(5, '0')}`;
  }
  return `${formatFixed(frac, 2).padStart(5, '0')} sec`;
}

/**
 * print_report: "<op> total/count bytes at offset N" and the statistics line, or with -C the
 * machine-readable "bytes,ops,time,bytes/sec,ops/sec".
 */
export function printReport(
  o: ToolOutput,
  op: string,
  t: Elapsed,
  offset: number,
  count: number,
  total: number,
  cnt: number,
  cflag: boolean,
): void {
  const ts = timestr(t, cflag);
  const secs = seconds(t);
  if (!cflag) {
    o.out(`${op} ${total}/${count} bytes at offset ${offset}\n`);
    o.out(`${cvtstr(total)}, ${cnt} ops; ${ts} (${cvtstr(total / secs)}/sec and ${formatFixed(cnt / secs, 4)} ops/sec)\n`);
  } else {
    o.out(`${total},${cnt},${ts},${formatFixed(total / secs, 3)},${formatFixed(cnt / secs, 3)}\n`);
  }
}

/** Mask the timing figures of qemu-io/blk-io output (tests compare everything else). */
export function maskTimings(text: string): string {
  return text
    .replace(/ops; [0-9:.]+(?: sec)? \([^)]*\/sec and [0-9.]+ ops\/sec\)/g, 'ops; TIME (RATE)')
    .replace(/^(-?[0-9]+,[0-9]+),[0-9]+:[0-9]{2}:[0-9.]+,[0-9.]+,[0-9.]+$/gm, '$1,TIME,RATE,RATE');
}
