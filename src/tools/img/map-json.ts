// blk-img map --output=json's lines as ASCII bytes, formatted into a reused buffer and handed
// to stdout in batches: a fragmented image prints tens of thousands of lines, and a string
// joined per line (then gathered and encoded) cost more than the walk that found them.
import type { ToolOutput } from '../shared/output.js';

/** What a JSON line says of an extent (map.ts's MapEntry adds the human output's file name). */
export interface MapJsonEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  hasOffset: boolean;
  offset: number;
}

const ascii = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));
const START = ascii('{ "start": ');
const LENGTH = ascii(', "length": ');
/**
 * What follows the length for depth 0, by hasOffset << 3 | present << 2 | zero << 1 | data:
 * one copy a line, the offset's name included.
 */
const TAIL0 = Array.from({ length: 16 }, (_, i) => ascii(tail(0, i)));
const CLOSE = ascii('}');
const CLOSE_NEXT = ascii('},\n');
/** A line's end and the next line's start: one copy between two lines. */
const CLOSE_NEXT_START = ascii('},\n{ "start": ');
/** "00" to "99": two digits a division. */
const DIGIT_PAIRS = ascii(Array.from({ length: 100 }, (_, i) => `${i}`.padStart(2, '0')).join(''));

function tail(depth: number, flags: number): string {
  const offset = (flags & 8) !== 0 ? ', "offset": ' : '';
  return `, "depth": ${depth}, "present": ${(flags & 4) !== 0}, "zero": ${(flags & 2) !== 0}, "data": ${(flags & 1) !== 0}${offset}`;
}

/** Bytes gathered before they go to stdout; a line is at most ~150. */
const BATCH = 64 * 1024;

/**
 * The lines in a reused buffer. Constant text is copied with TypedArray.set and numbers are
 * written two digits at a time: in a fresh process most lines run before TurboFan has
 * compiled this code, and a byte loop costs most there. Each set is a builtin call of some
 * 150 instructions, so a line takes three: its start (with the end of the line before), the
 * length's name, and what follows the length up to the offset's value.
 */
export class MapJsonWriter {
  private readonly buf = new Uint8Array(BATCH + 256);
  private at = 0;
  /** The line before ended without its "},\n" yet: the next line's start brings it. */
  private pendingClose = false;
  constructor(private readonly o: ToolOutput) {}

  /** One extent's line, ",\n" after it unless it is the last. */
  entry(e: MapJsonEntry, last: boolean): void {
    const buf = this.buf;
    const start = this.pendingClose ? CLOSE_NEXT_START : START;
    buf.set(start, this.at);
    this.at += start.length;
    this.num(e.start);
    buf.set(LENGTH, this.at);
    this.at += LENGTH.length;
    this.num(e.length);
    const flags = (e.hasOffset ? 8 : 0) | (e.present ? 4 : 0) | (e.zero ? 2 : 0) | (e.data ? 1 : 0);
    const rest = e.depth === 0 ? TAIL0[flags] : ascii(tail(e.depth, flags));
    buf.set(rest, this.at);
    this.at += rest.length;
    if (e.hasOffset) this.num(e.offset);
    this.pendingClose = !last;
    if (last) {
      buf.set(CLOSE, this.at);
      this.at += CLOSE.length;
    }
    if (this.at >= BATCH) this.flush();
  }

  /**
   * Hand the gathered lines to stdout: before anything else is printed (stdio's order), each
   * line with its end, as qemu-img prints it once it knows the next extent.
   */
  flush(): void {
    if (this.pendingClose) {
      this.buf.set(CLOSE_NEXT, this.at);
      this.at += CLOSE_NEXT.length;
      this.pendingClose = false;
    }
    if (this.at > 0) this.o.outAscii(this.buf.subarray(0, this.at));
    this.at = 0;
  }

  /**
   * A non-negative safe integer in decimal ("%" PRId64), split at 10^9: a number past 2^31 is
   * a heap number to V8, and two small integers keep the digits in integer arithmetic.
   */
  private num(n: number): void {
    if (n < 1e9) {
      this.digits(n, 0);
      return;
    }
    const lo = n % 1e9;
    this.digits((n - lo) / 1e9, 0);
    this.digits(lo, 9);
  }

  /** `n` (below 10^9) in decimal, zero-padded to `width` digits. */
  private digits(n: number, width: number): void {
    let m = n | 0;
    let len = 1;
    for (let p = 10; p <= m && len < 9; p *= 10) len++;
    if (len < width) len = width;
    const buf = this.buf;
    const start = this.at;
    let at = start + len;
    this.at = at;
    // Two digits at a time, then an odd one; once m is 0 the pairs are the padding. One path
    // for all: a padding loop of its own met its first use (past 1 GB) in optimised code.
    while (at - start >= 2) {
      const q = (m / 100) | 0;
      const r = (m - q * 100) * 2;
      buf[at - 1] = DIGIT_PAIRS[r + 1];
      buf[at - 2] = DIGIT_PAIRS[r];
      at -= 2;
      m = q;
    }
    if (at > start) buf[start] = 48 + m;
  }
}
