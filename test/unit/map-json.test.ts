// map --output=json's lines as bytes (MapJsonWriter): the text qemu-img prints, numbers in
// full up to 2^53, through ToolOutput's byte path.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ToolOutput, type ToolIO } from '../../src/tools/shared/output.js';
import { MapJsonWriter, type MapJsonEntry } from '../../src/tools/img/map-json.js';

function collect(): { o: ToolOutput; text: () => string } {
  let text = '';
  const io: ToolIO = { stdout: { write: (s: string) => (text += s) }, stderr: { write: () => undefined } };
  return { o: new ToolOutput(io, 'p'), text: () => text };
}

/** The line as map printed it from a string (printf's %" PRId64 "). */
function line(e: MapJsonEntry, last: boolean): string {
  let s = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
  if (e.hasOffset) s += `, "offset": ${e.offset}`;
  return `${s}}${last ? '' : ',\n'}`;
}

const safe = fc.oneof(fc.integer({ min: 0, max: 2 ** 31 }), fc.maxSafeNat(), fc.constantFrom(0, 9, 10, 99, 100, 1e9 - 1, 1e9, 1e9 + 1, 1e9 * 10, 2 ** 53 - 1));
const entryArb: fc.Arbitrary<MapJsonEntry> = fc.record({
  start: safe,
  length: safe,
  depth: fc.integer({ min: 0, max: 12 }),
  present: fc.boolean(),
  zero: fc.boolean(),
  data: fc.boolean(),
  hasOffset: fc.boolean(),
  offset: safe,
});

describe('MapJsonWriter', () => {
  it('prints the lines map printed as strings', () => {
    fc.assert(
      fc.property(fc.array(entryArb, { minLength: 1, maxLength: 2000 }), (entries) => {
        const { o, text } = collect();
        const w = new MapJsonWriter(o);
        entries.forEach((e, i) => w.entry(e, i === entries.length - 1));
        w.flush();
        o.flush();
        expect(text()).toBe(entries.map((e, i) => line(e, i === entries.length - 1)).join(''));
      }),
      { numRuns: 50 },
    );
  });
});
