/**
 * qemu_strtosz (util/cutils.c): sizes with suffixes, fractions and 0x hex, as every QEMU option
 * of type size reads them. Pure, so the block core and the tools share one parser.
 */
import { BlockError } from './errors.js';

const U64_LIMIT = 1n << 64n;

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
