/**
 * buffer_is_zero (QEMU's util/bufferiszero.c) and the per-sector scan built on it. Data is
 * scanned 32 bits at a time through a word view of the buffer; bytes before the first and
 * after the last whole word go one by one.
 */

/** The 32-bit words wholly inside [start, end) of `buf`, and the byte range they cover. */
interface Words {
  words: Int32Array;
  /** Byte offsets (relative to `buf`) where the whole words begin and end. */
  from: number;
  to: number;
}

function wordsOf(buf: Uint8Array, start: number, end: number): Words {
  const from = Math.min(end, start + ((4 - ((buf.byteOffset + start) & 3)) & 3));
  const to = end - ((end - from) & 3);
  return { words: new Int32Array(buf.buffer, buf.byteOffset + from, (to - from) >> 2), from, to };
}

function bytesAreZero(buf: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Words [w, e) of `words` are all zero. Eight at a time: one branch per 32 bytes. */
function wordsAreZero(words: Int32Array, w: number, e: number): boolean {
  for (; w + 8 <= e; w += 8) {
    if ((words[w] | words[w + 1] | words[w + 2] | words[w + 3] | words[w + 4] | words[w + 5] | words[w + 6] | words[w + 7]) !== 0) {
      return false;
    }
  }
  for (; w < e; w++) if (words[w] !== 0) return false;
  return true;
}

/** buffer_is_zero: every byte of `buf[start, end)` is zero. */
export function bufferIsZero(buf: Uint8Array, start = 0, end: number = buf.length): boolean {
  if (end - start < 64) return bytesAreZero(buf, start, end);
  const v = wordsOf(buf, start, end);
  return bytesAreZero(buf, start, v.from) && bytesAreZero(buf, v.to, end) && wordsAreZero(v.words, 0, v.words.length);
}

/**
 * How many `sectorSize`-byte sectors from sector `first` (at most `n`, all inside `buf`; the
 * last one may be short where `buf` ends) are all zero (`zero`) or each hold a non-zero byte:
 * is_allocated_sectors' inner loop, one call per run rather than one per sector. A sector of
 * data is told by its first word in nearly every case, so a data run costs one load per sector.
 */
export function sectorRun(buf: Uint8Array, first: number, n: number, sectorSize: number, zero: boolean): number {
  const start = first * sectorSize;
  const end = Math.min(buf.length, start + n * sectorSize);
  if ((buf.byteOffset + start) % 4 !== 0 || sectorSize % 4 !== 0) {
    // Not word-aligned (convert's pooled buffers always are): one sector at a time.
    let i = 0;
    for (let s = start; i < n && s < end; i++, s += sectorSize) {
      if (bufferIsZero(buf, s, Math.min(s + sectorSize, end)) !== zero) break;
    }
    return i;
  }
  const { words } = wordsOf(buf, start, end);
  const spw = sectorSize >> 2;
  const whole = Math.min(n, words.length / spw) | 0;
  let i = 0;
  if (zero) {
    for (let w = 0; i < whole && wordsAreZero(words, w, w + spw); i++, w += spw);
  } else {
    for (let w = 0; i < whole; i++, w += spw) {
      if (words[w] !== 0) continue;
      if (wordsAreZero(words, w, w + spw)) break;
    }
  }
  // A short last sector (the buffer ends inside it).
  if (i === whole && i < n && start + i * sectorSize < end) {
    const s = start + i * sectorSize;
    if (bufferIsZero(buf, s, Math.min(s + sectorSize, end)) === zero) i++;
  }
  return i;
}

/** The bytes two at a time, as UTF-16 code units (0 where both are zero); made on first use. */
let pairDecoder: TextDecoder | null = null;
const NON_ZERO_UNIT = /[^\0]/;

/**
 * Where the first non-zero byte pair of `buf[start, end)` (start and end even) begins, or -1:
 * found by native code, the decoder and a regular expression, where a loop over the bytes runs
 * in V8's interpreter in a fresh process (a 64 KiB table of zeros cost about 2.7 M
 * instructions that way, 0.2 M this way). The decoder keeps one code unit per two bytes (lone
 * surrogates become U+FFFD, and a leading byte order mark is kept).
 */
export function nonZeroPairAt(buf: Uint8Array, start: number, end: number): number {
  pairDecoder ??= new TextDecoder('utf-16le', { ignoreBOM: true });
  const at = pairDecoder.decode(buf.subarray(start, end)).search(NON_ZERO_UNIT);
  return at < 0 ? -1 : start + 2 * at;
}
