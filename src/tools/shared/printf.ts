// printf-exact number formatting (glibc: the exact binary value, ties to even): "%.Nf", "%.Ng",
// QEMU's size_to_str and qemu-io's cvtstr.


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
