import { describe, expect, it } from 'vitest';
import { ToolOutput } from '../../src/tools/shared/output.js';
import {
  cvtnum,
  dumpBuffer,
  maskTimings,
  parsePattern,
  printReport,
  strtolFull,
  timestr,
} from '../../src/tools/io/format.js';

function collector(): { o: ToolOutput; text: () => string; err: () => string } {
  let out = '';
  let err = '';
  const o = new ToolOutput({ stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) } }, 'blk-io');
  return {
    o,
    text: () => {
      o.flush();
      return out;
    },
    err: () => err,
  };
}

describe('cvtnum (qemu_strtosz as qemu-io 7.2 uses it)', () => {
  const ok: Array<[string, bigint]> = [
    ['0', 0n],
    ['010', 10n],
    ['0x10', 16n],
    ['1k', 1024n],
    ['1.5k', 1536n],
    ['0.5k', 512n],
    ['1.k', 1024n],
    ['1.e', 1n << 60n],
    ['512b', 512n],
    ['+1', 1n],
    ['0.0005k', 1n], // 0.512 rounds half up
    ['0.0001k', 0n],
    ['9223372036854775807', (1n << 63n) - 1n],
    ['4.5E', (9n << 60n) / 2n],
    ['1.9999999999999999999k', 1024n], // the fraction rounds to 1.0 and wraps to 0 in QEMU
  ];
  for (const [s, v] of ok) {
    it(`accepts ${s}`, () => {
      const r = cvtnum(collector().o, s);
      expect(r.ok && r.big).toBe(v);
    });
  }
  const bad: Array<[string, 'EINVAL' | 'ERANGE']> = [
    ['1.5', 'EINVAL'],
    ['1.5b', 'EINVAL'],
    ['-1', 'EINVAL'],
    ['1x', 'EINVAL'],
    ['.5k', 'EINVAL'],
    ['1e3', 'EINVAL'],
    ['0x1.5k', 'EINVAL'],
    ['8E', 'ERANGE'],
    ['9223372036854775808', 'ERANGE'],
    ['99999999999999999999', 'ERANGE'],
  ];
  for (const [s, e] of bad) {
    it(`refuses ${s} with ${e}`, () => {
      const r = cvtnum(collector().o, s);
      expect(r.ok ? 'ok' : r.error).toBe(e);
    });
  }
  it('takes a hex number with a suffix, with 7.2 deprecation warning', () => {
    const c = collector();
    const r = cvtnum(c.o, '0x2k');
    expect(r.ok && r.big).toBe(2048n);
    expect(c.err()).toBe('blk-io: warning: Using a multiplier suffix on hex numbers is deprecated: 0x2k\n');
  });
});

describe('pattern bytes and strtol', () => {
  it('parses C notations', () => {
    expect(strtolFull('0x1f')).toBe(31);
    expect(strtolFull('011')).toBe(9);
    expect(strtolFull('08')).toBeNull();
    expect(strtolFull('1k')).toBeNull();
    expect(strtolFull('-3')).toBe(-3);
  });
  it('refuses what is not a byte, with the message', () => {
    const c = collector();
    expect(parsePattern(c.o, '255')).toBe(255);
    expect(parsePattern(c.o, '256')).toBe(-1);
    expect(c.text()).toBe('256 is not a valid pattern byte\n');
  });
});

describe('dump_buffer', () => {
  it('prints 16 bytes a line and an unpadded last line', () => {
    const c = collector();
    const buf = new Uint8Array(18);
    buf.set([0x41, 0x7a, 0x30, 0x20, 0x2e, 0xff]);
    dumpBuffer(c.o, buf, 0x1000);
    expect(c.text()).toBe(
      '00001000:  41 7a 30 20 2e ff 00 00 00 00 00 00 00 00 00 00  Az0.............\n' + '00001010:  00 00  ..\n',
    );
  });
});

describe('reports', () => {
  it('formats the time below and above a second', () => {
    expect(timestr(12_345_678n, false)).toBe('00.01 sec');
    expect(timestr(3_725_500_000_000n, false)).toBe('1:02:05.50');
    expect(timestr(5_000_000n, true)).toBe('0:00:00.01');
  });
  it('prints the human and the -C form', () => {
    const c = collector();
    printReport(c.o, 'read', 500_000_000n, 512, 4096, 4096, 1, false);
    printReport(c.o, 'wrote', 2_000_000_000n, 0, 1536, 1536, 1, true);
    expect(c.text()).toBe(
      'read 4096/4096 bytes at offset 512\n' +
        '4 KiB, 1 ops; 00.50 sec (8 KiB/sec and 2.0000 ops/sec)\n' +
        '1536,1,0:00:02.00,768.000,0.500\n',
    );
  });
  it('masks only the timing figures', () => {
    const text = 'read 1/1 bytes at offset 0\n1 bytes, 1 ops; 00.00 sec (7.743 KiB/sec and 7928.4536 ops/sec)\n1,1,0:00:00.00,1234.567,8.000\n';
    expect(maskTimings(text)).toBe('read 1/1 bytes at offset 0\n1 bytes, 1 ops; TIME (RATE)\n1,1,TIME,RATE,RATE\n');
  });
});
