import { describe, expect, it } from 'vitest';
import { Getopt } from '../../src/tools/shared/getopt.js';
import { parseImgOptions } from '../../src/tools/img/options.js';
import { ToolExit, ToolOutput, progName } from '../../src/tools/shared/output.js';
import { cvtnum, qemuStrtosz } from '../../src/tools/shared/size.js';
import { cvtstr, formatFixed, formatG, sizeToStr } from '../../src/tools/shared/printf.js';

function collector(): { io: { stdout: { write(s: string): void }; stderr: { write(s: string): void } }; text: () => string } {
  let all = '';
  const w = { write: (s: string): void => void (all += s) };
  return { io: { stdout: w, stderr: w }, text: () => all };
}

describe('size formatting (values checked against qemu-img 7.2 info output)', () => {
  it.each([
    [0, '0 B'],
    [512, '512 B'],
    [1024, '1 KiB'],
    [1536, '1.5 KiB'],
    [1048064, '1 MiB'],
    [1047552, '0.999 MiB'],
    [1572864, '1.5 MiB'],
    [1073741824, '1 GiB'],
    [123457024, '118 MiB'],
    [1023488, '1e+03 KiB'],
    [1088, '1.06 KiB'],
  ])('sizeToStr(%d) = %s', (v, s) => {
    expect(sizeToStr(v)).toBe(s);
  });

  it('printf rounding is exact with ties to even', () => {
    expect(formatFixed(1.0625, 3)).toBe('1.062');
    expect(formatFixed(1.1875, 3)).toBe('1.188');
    expect(formatFixed(0.125, 2)).toBe('0.12');
    expect(formatFixed(0.375, 2)).toBe('0.38');
    expect(formatFixed(2.675, 2)).toBe('2.67'); // binary value is below the tie
    expect(formatG(999.5, 3)).toBe('1e+03');
    expect(formatG(0.0001234, 3)).toBe('0.000123');
    expect(formatG(123456, 3)).toBe('1.23e+05');
    expect(formatG(100, 3)).toBe('100');
  });

  it('cvtstr follows qemu-io', () => {
    expect(cvtstr(1088)).toBe('1.062 KiB');
    expect(cvtstr(65536)).toBe('64 KiB');
    expect(cvtstr(512)).toBe('512 bytes');
    expect(cvtstr(1.5 * 2 ** 20)).toBe('1.500 MiB');
  });
});

describe('qemuStrtosz / cvtnum', () => {
  it.each([
    ['1.5k', 1536n],
    ['0x10', 16n],
    [' 10', 10n],
    ['1.k', 1024n],
    ['7E', 8070450532247928832n],
    ['1M', 1048576n],
    ['2g', 2147483648n],
    ['3b', 3n],
  ])('%s parses to %s', (s, v) => {
    const r = qemuStrtosz(s);
    expect(r.ok && r.value).toBe(v);
  });

  it.each([
    ['1.5', 'EINVAL'],
    ['12z', 'EINVAL'],
    ['-5', 'EINVAL'],
    ['', 'EINVAL'],
    ['0x1k', 'EINVAL'],
    ['1.5e3k', 'EINVAL'],
    ['99999E', 'ERANGE'],
    ['16E', 'ERANGE'],
  ])('%s is rejected with %s', (s, code) => {
    const r = qemuStrtosz(s);
    expect(r.ok ? 'ok' : r.error).toBe(code);
  });

  it('prints qemu-img messages', () => {
    const c = collector();
    const o = new ToolOutput(c.io, 'qemu-img');
    expect(() => cvtnum(o, 'image size', '12z')).toThrow(ToolExit);
    expect(() => cvtnum(o, 'image size', '8E')).toThrow(ToolExit);
    expect(c.text()).toBe(
      'qemu-img: Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n' +
        'qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n' +
        'qemu-img: Invalid image size specified. Must be between 0 and 9223372036854775807.\n',
    );
  });
});

describe('getopt_long port', () => {
  const longs = [
    { name: 'output', hasArg: 1 as const, val: 'O' },
    { name: 'object', hasArg: 1 as const, val: 'o' },
    { name: 'help', hasArg: 0 as const, val: 'h' },
  ];
  it('permutes non-options to the end', () => {
    const g = new Getopt(['info', 'x.raw', '-f', 'raw', 'y', '--output=json'], ':f:hU', longs);
    const seen: string[] = [];
    for (let r = g.next(); r.kind !== 'end'; r = g.next()) if (r.kind === 'opt') seen.push(`${r.opt}=${r.arg ?? ''}`);
    expect(seen).toEqual(['f=raw', 'O=json']);
    expect(g.rest()).toEqual(['x.raw', 'y']);
  });
  it('quotes argv[optind-1] like glibc', () => {
    const g = new Getopt(['info', '-qz', 'x'], ':f:hU', longs);
    expect(g.next().kind).toBe('unknown');
    expect(g.lastElement).toBe('info');
    const g2 = new Getopt(['info', '--o=json'], ':f:hU', longs);
    expect(g2.next().kind).toBe('unknown'); // ambiguous prefix
    expect(g2.lastElement).toBe('--o=json');
    const g3 = new Getopt(['info', '--out=json'], ':f:hU', longs);
    expect(g3.next()).toEqual({ kind: 'opt', opt: 'O', arg: 'json' });
    const g4 = new Getopt(['info', 'x', '-f'], ':f:hU', longs);
    expect(g4.next().kind).toBe('missing');
    expect(g4.lastElement).toBe('-f');
    const g5 = new Getopt(['info', '--help=3'], ':f:hU', longs);
    expect(g5.next().kind).toBe('unknown');
  });
  it('stops at -- and at the first non-option with +', () => {
    const g = new Getopt(['x', '-a', '--', '-b'], 'ab', []);
    expect(g.next()).toEqual({ kind: 'opt', opt: 'a', arg: undefined });
    expect(g.next().kind).toBe('end');
    expect(g.rest()).toEqual(['-b']);
    const g2 = new Getopt(['qemu-img', 'info', '-f'], '+:hVT:', []);
    expect(g2.next().kind).toBe('end');
    expect(g2.rest()).toEqual(['info', '-f']);
  });
  it('parseImgOptions prints the error and the help hint', () => {
    const c = collector();
    const o = new ToolOutput(c.io, 'qemu-img');
    const table = [{ short: 'f', arg: 1 as const }, { short: 'h' }, ...longs.map((l) => ({ long: l.name, arg: l.hasArg }))].map((d) => ({ ...d, set: () => undefined }));
    expect(() => parseImgOptions({ o }, ['info', '--output'], table, null)).toThrow(ToolExit);
    expect(c.text()).toBe("qemu-img: missing argument for option '--output'\nTry 'qemu-img --help' for more information\n");
  });
});

describe('ToolOutput buffering', () => {
  it('stderr overtakes buffered stdout until a flush', () => {
    const c = collector();
    const o = new ToolOutput(c.io, 'p');
    o.out('a\n');
    o.error('e1');
    o.flush();
    o.out('b\n');
    o.error('e2');
    o.flush();
    expect(c.text()).toBe('p: e1\na\np: e2\nb\n');
  });
  it('writes full 4 KiB blocks as the buffer fills', () => {
    const c = collector();
    const o = new ToolOutput(c.io, 'p');
    o.out('x'.repeat(5000));
    o.error('e');
    o.flush();
    expect(c.text()).toBe(`${'x'.repeat(4096)}p: e\n${'x'.repeat(904)}`);
  });
  it('holds full blocks back and writes them together, still before stderr', () => {
    const c = collector();
    let writes = 0;
    const o = new ToolOutput({ ...c.io, stdout: { write: (s: string) => (writes++, c.io.stdout.write(s)) } }, 'p');
    for (let i = 0; i < 25000; i++) o.out('xyz\n');
    o.error('e');
    o.flush();
    // stdio's order: the 24 whole 4 KiB blocks of the 100000 bytes, the error, the rest.
    expect(c.text()).toBe(`${'xyz\n'.repeat(24576)}p: e\n${'xyz\n'.repeat(424)}`);
    expect(writes).toBe(2);
  });
  it('program name is the basename of argv[1]', () => {
    expect(progName(['node', '/usr/lib/x/bin/blk-img.js'])).toBe('blk-img');
    expect(progName(['node', '/tmp/qemu-img'])).toBe('qemu-img');
  });
});
