// QEMU's option model: QemuOpts strings, QDict flattening and order, json: filenames, protocol
// prefixes, runtime option checks. Expected messages are QEMU 7.2's.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  BlockError,
  QEMU_IMG_IMAGE_OPTS,
  QEMU_IO_IMAGE_OPTS,
  QEMU_IO_OPEN_OPTS,
  absorbOptions,
  checkNoLeftovers,
  optsToQDict,
  parseJsonFilename,
  parseOptsString,
  parseQemuJson,
  formatQemuJson,
  qdictCrumple,
  qdictExtract,
  qdictFirstKey,
  qdictFlatten,
  qdictOrder,
  stripProtocolPrefix,
  takeCommonOptions,
  type BlockDriver,
} from '../../src/block/index.js';
import { formatDouble17g } from '../../src/block/qjson.js';

function message(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    return (e as BlockError).message;
  }
  throw new Error('expected an error');
}

describe('QemuOpts strings', () => {
  it('splits key=value pairs, with ,, as a literal comma', () => {
    const p = parseOptsString('driver=qed,,file.filename=x,file.driver=file');
    expect(p.opts).toEqual([
      ['driver', 'qed,file.filename=x'],
      ['file.driver', 'file'],
    ]);
    expect(p.warnings).toEqual([]);
  });

  it('reads a bare word as a deprecated boolean, with QEMU warning and hint', () => {
    const p = parseOptsString('noflag,foo,help');
    expect(p.opts).toEqual([
      ['flag', 'off'],
      ['foo', 'on'],
      ['help', 'on'],
    ]);
    expect(p.warnings).toEqual([
      { warning: "short-form boolean option 'noflag' deprecated", hint: 'Please use flag=off instead' },
      { warning: "short-form boolean option 'foo' deprecated", hint: 'Please use foo=on instead' },
    ]);
  });

  it('gives the implied name to a leading value only where the list has one', () => {
    expect(parseOptsString('top.qed,driver=qed', QEMU_IMG_IMAGE_OPTS).opts[0]).toEqual(['file', 'top.qed']);
    const io = parseOptsString('inner.qed', QEMU_IO_IMAGE_OPTS);
    expect(io.opts).toEqual([['inner.qed', 'on']]);
    expect(io.warnings[0].hint).toBe('Please use inner.qed=on instead');
  });

  it('keeps an empty key and an empty value', () => {
    expect(parseOptsString('=x,backing=').opts).toEqual([
      ['', 'x'],
      ['backing', ''],
    ]);
  });

  it("handles id= as QEMU's lists do", () => {
    expect(message(() => parseOptsString('id=x,a=1', QEMU_IO_OPEN_OPTS))).toBe("Invalid parameter 'id'");
    expect(message(() => parseOptsString('a=1,id=1x', QEMU_IMG_IMAGE_OPTS))).toBe(
      "Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
    );
    const p = parseOptsString('a=1,id=x', QEMU_IMG_IMAGE_OPTS);
    expect(p.id).toBe('x');
    expect([...optsToQDict(p).keys()]).toEqual(['id', 'a']);
  });

  it('lets a repeated key replace the value in its first place', () => {
    const d = optsToQDict(parseOptsString('a=1,b=2,a=3'));
    expect([...d.entries()]).toEqual([
      ['a', '3'],
      ['b', '2'],
    ]);
  });

  it('round-trips any key=value list written with ,, escapes', () => {
    const key = fc.stringMatching(/^[a-z][a-z.-]{0,8}$/).filter((k) => k !== 'id');
    fc.assert(
      fc.property(fc.array(fc.tuple(key, fc.string({ maxLength: 12 })), { maxLength: 6 }), (pairs) => {
        const text = pairs.map(([k, v]) => `${k}=${v.replaceAll(',', ',,')}`).join(',');
        expect(parseOptsString(text).opts).toEqual(pairs);
      }),
    );
  });
});

describe('QDict', () => {
  it('flattens nested objects and lists; keeps empty ones', () => {
    const d = qdictFlatten({ driver: 'qed', file: { driver: 'file', filename: 'x' }, l: [1, { a: true }], e: {}, n: null });
    expect([...d.entries()]).toEqual([
      ['driver', 'qed'],
      ['e', {}],
      ['n', null],
      ['file.driver', 'file'],
      ['file.filename', 'x'],
      ['l.0', 1],
      ['l.1.a', true],
    ]);
  });

  it('extracts a child prefix and crumples back', () => {
    const d = qdictFlatten({ driver: 'qed', 'file.driver': 'qed', 'file.file.filename': 'n.qed' });
    const file = qdictExtract(d, 'file.');
    expect([...d.keys()]).toEqual(['driver']);
    expect(qdictCrumple(file)).toEqual({ driver: 'qed', file: { filename: 'n.qed' } });
  });

  it("iterates in QEMU's hash order (which leftover key an error names)", () => {
    // Observed with qemu-img 7.2: foo,bar,baz,qux,a,b is refused naming 'qux'.
    expect(qdictOrder(['foo', 'bar', 'baz', 'qux', 'a', 'b'])[0]).toBe('qux');
    // raw's json: filename prints offset, driver, size, file in this order.
    expect(qdictOrder(['driver', 'file', 'offset', 'size'])).toEqual(['offset', 'driver', 'size', 'file']);
    expect(qdictFirstKey(new Map())).toBeUndefined();
  });
});

describe("QEMU's JSON", () => {
  it('parses objects with single-quoted strings and exact integers', () => {
    expect(parseQemuJson(`{'a': "x\\u00e9", "b": [1, 2.5, true, null], "c": 18446744073709551615}`)).toEqual({
      a: 'x\u00e9',
      b: [1, 2.5, true, null],
      c: 18446744073709551615n,
    });
  });

  it.each([
    ['', 'Expecting a JSON value'],
    ['  ', 'Expecting a JSON value'],
    ['{"a":}', 'JSON parse error, expecting value'],
    ['{"a" 1}', 'JSON parse error, missing : in object pair'],
    ['{a:1}', "JSON parse error, invalid keyword 'a'"],
    ['{"a":1}x', 'Expecting at most one JSON value'],
    ['{"a":1}@', 'Expecting at most one JSON value'],
    ['1 2', 'Expecting at most one JSON value'],
    ['{"driver":"qed"', 'JSON parse error, premature EOI'],
    ['[', 'JSON parse error, premature EOI'],
    ['{"a":1,}', 'JSON parse error, expecting value'],
    ['{"a":1 "b":2}', 'JSON parse error, expected separator in dict'],
    ['{"a":[1 2]}', 'JSON parse error, expected separator in list'],
    ['{1:2}', 'JSON parse error, key is not a string in object'],
    ['{"a":@}', "JSON parse error, stray '@'"],
    ['{"a":-}', "JSON parse error, stray '-}'"],
    ['{"a":01}', "JSON parse error, stray '01'"],
    ['{"a":"\\q"}', 'JSON parse error, invalid escape sequence in string'],
    ['{"a":"xyz', `JSON parse error, stray '"xyz'`],
    ['{"a":"x\ny"}', `JSON parse error, stray '"x\n'`],
    ['{"a":1e5x}', 'JSON parse error, expected separator in dict'],
    ['}', 'JSON parse error, expecting value'],
    ['{"a":tru}', "JSON parse error, invalid keyword 'tru'"],
  ])('refuses %j with "%s"', (text, msg) => {
    expect(message(() => parseQemuJson(text))).toBe(msg);
  });

  it('bounds nesting', () => {
    expect(message(() => parseQemuJson('['.repeat(2000) + ']'.repeat(2000)))).toBe('JSON nesting depth limit exceeded');
  });

  it("prints as qobject_to_json and %.17g, as QEMU's json: filenames", () => {
    expect(formatQemuJson({ driver: 'qed', file: { driver: 'file', filename: 'n "1".qed' } })).toBe(
      '{"driver": "qed", "file": {"driver": "file", "filename": "n \\"1\\".qed"}}',
    );
    expect(formatDouble17g(512.5)).toBe('512.5');
    expect(formatDouble17g(0.1)).toBe('0.10000000000000001');
    expect(formatDouble17g(1e21)).toBe('1e+21');
  });

  it('gives json: filenames their QEMU messages', () => {
    expect(message(() => parseJsonFilename('json:[1]'))).toBe('Invalid JSON object given');
    expect(message(() => parseJsonFilename('json:"x"'))).toBe('Invalid JSON object given');
    expect(message(() => parseJsonFilename('json:{"driver":"qed"'))).toBe(
      'Could not parse the JSON options: JSON parse error, premature EOI',
    );
    expect([...parseJsonFilename('json:{"driver":"qed","file":{"filename":"a"}}').keys()]).toEqual(['driver', 'file.filename']);
  });
});

describe('protocol prefixes', () => {
  it('strips file: and keeps a colon name from reading as a protocol', () => {
    expect(stripProtocolPrefix('file:a:b.qed', 'file:')).toBe('./a:b.qed');
    expect(stripProtocolPrefix('file:d/x:y.qed', 'file:')).toBe('d/x:y.qed');
    expect(stripProtocolPrefix('file:/abs/x', 'file:')).toBe('/abs/x');
    expect(stripProtocolPrefix('plain.qed', 'file:')).toBe('plain.qed');
  });
});

describe('runtime options', () => {
  const qed = { formatName: 'qed' } as BlockDriver;
  const file = { formatName: 'file', isProtocol: true } as BlockDriver;

  it('checks the generic options and takes them out', () => {
    const d = qdictFlatten({ 'read-only': true, 'cache.no-flush': 'on', 'force-share': 'off', driver: 'qed', x: 1 });
    expect(takeCommonOptions(d)).toEqual({ readOnly: true, noFlush: true, forceShare: false });
    expect([...d.keys()]).toEqual(['driver', 'x']);
  });

  it.each([
    [{ 'read-only': 'x' }, "Parameter 'read-only' expects 'on' or 'off'"],
    [{ 'read-only': 1 }, "Parameter 'read-only' expects 'on' or 'off'"],
    [{ discard: 'x' }, 'Invalid discard option'],
    [{ 'detect-zeroes': 'x' }, 'invalid parameter value: x'],
    [{ 'node-name': '1x' }, "Invalid node-name: '1x'"],
  ])('refuses %j', (opts, msg) => {
    expect(message(() => takeCommonOptions(qdictFlatten(opts)))).toBe(msg);
  });

  it('absorbs a number option and refuses a non-number', () => {
    const specs = [{ name: 'n', type: 'number' as const }];
    expect(absorbOptions(qdictFlatten({ n: 42 }), specs).get('n')).toBe('42');
    expect(message(() => absorbOptions(qdictFlatten({ n: 'x' }), specs))).toBe("Parameter 'n' expects a number");
  });

  it('names the leftover key by the kind of node', () => {
    expect(message(() => checkNoLeftovers(qdictFlatten({ foo: 1, qux: 2 }), qed))).toBe(
      "Block format 'qed' does not support the option 'qux'",
    );
    expect(message(() => checkNoLeftovers(qdictFlatten({ foo: 1 }), file))).toBe(
      "Block protocol 'file' doesn't support the option 'foo'",
    );
    expect(() => checkNoLeftovers(new Map(), qed)).not.toThrow();
  });
});
