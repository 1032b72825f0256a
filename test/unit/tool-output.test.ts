import { describe, expect, it } from 'vitest';
import { STDIO_BUFSIZ, ToolOutput, type ToolIO } from '../../src/tools/shared/output.js';

/** One pipe shared by stdout and stderr, as a reader of `2>&1` sees it. */
function pipe(bytes: boolean): { io: ToolIO; text: () => string; writes: () => number } {
  const chunks: Uint8Array[] = [];
  const enc = new TextEncoder();
  let writes = 0;
  const put = (b: Uint8Array): void => {
    chunks.push(b);
    writes++;
  };
  const io: ToolIO = {
    stdout: { write: (s: string) => put(enc.encode(s)) },
    stderr: { write: (s: string) => put(enc.encode(s)) },
  };
  if (bytes) {
    io.stdoutBytes = {
      alloc: (size) => new Uint8Array(size),
      encode: (s, buf, at) => enc.encodeInto(s, buf.subarray(at)).written,
      write: (b) => put(b),
    };
  }
  return { io, text: () => new TextDecoder().decode(Buffer.concat(chunks)), writes: () => writes };
}

function script(o: ToolOutput, key: string): void {
  for (let i = 0; i < 50000; i++) o.out(`{ "start": ${i * 65536}, "${key}": ${i % 3 === 0} },\n`);
  o.errRaw('an error after the full blocks\n');
  o.out('tail without newline');
  o.error('last');
  o.flush();
}

describe('ToolOutput', () => {
  it('writes the same stream through a byte sink as through the text sink', () => {
    const asText = pipe(false);
    script(new ToolOutput(asText.io, 'p'), 'zero');
    const asBytes = pipe(true);
    script(new ToolOutput(asBytes.io, 'p'), 'zero');
    expect(asBytes.text()).toBe(asText.text());
    // Held back and written together, not a write per printf.
    expect(asBytes.writes()).toBeLessThan(20);
  });

  it('never reuses bytes the sink was given, with stderr between printfs', () => {
    const asText = pipe(false);
    const asBytes = pipe(true);
    for (const p of [asText, asBytes]) {
      const o = new ToolOutput(p.io, 'p');
      for (let i = 0; i < 40000; i++) {
        o.out(`line ${i} of stdout\n`);
        if (i % 997 === 0) o.errRaw(`message ${i}\n`);
      }
      o.flush();
    }
    expect(asBytes.text()).toBe(asText.text());
  });

  it('puts stderr after whole 4 KiB blocks of bytes through a byte sink', () => {
    const asBytes = pipe(true);
    script(new ToolOutput(asBytes.io, 'p'), 'é');
    const text = asBytes.text();
    // Where stderr lands: stdio's whole blocks of bytes are out before it, the rest after.
    const before = new TextEncoder().encode(text.slice(0, text.indexOf('an error'))).length;
    expect(before % STDIO_BUFSIZ).toBe(0);
    // Nothing of stdout between the two stderr lines: the rest is flushed at the end.
    const err = 'an error after the full blocks\n';
    expect(text.indexOf('p: last\n')).toBe(text.indexOf(err) + err.length);
    expect(text.endsWith('tail without newline')).toBe(true);
  });

  it('keeps ASCII bytes (outAscii) in order with text, through either sink', () => {
    const ascii = (s: string): Uint8Array => new TextEncoder().encode(s);
    const asText = pipe(false);
    const asBytes = pipe(true);
    for (const p of [asText, asBytes]) {
      const o = new ToolOutput(p.io, 'p');
      for (let i = 0; i < 30000; i++) {
        o.out(`text ${i}, `);
        o.outAscii(ascii(`bytes ${i}\n`));
        if (i % 4999 === 0) o.errRaw(`message ${i}\n`);
      }
      o.flush();
    }
    expect(asBytes.text()).toBe(asText.text());
    expect(asBytes.text()).toContain('text 29999, bytes 29999\n');
  });
});
