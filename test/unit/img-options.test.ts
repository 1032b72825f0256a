// The option tables both tools declare: what getoptTable derives from a table (optstring, long
// options in table order) and how it applies the entries, and blk-img's messages around it.
import { describe, expect, it } from 'vitest';
import { getoptTable, longoptsOf, optstringOf, type OptionTable } from '../../src/tools/shared/getopt.js';
import { parseImgOptions } from '../../src/tools/img/options.js';
import { ToolExit, ToolOutput } from '../../src/tools/shared/output.js';

interface S {
  fmt?: string;
  quiet: boolean;
  seen: string[];
}

const TABLE: OptionTable<S, unknown> = [
  { short: 'f', long: 'format', arg: 1, set: (s, a) => void (s.fmt = a) },
  { short: 'q', set: (s) => void (s.quiet = true) },
  { long: 'backing-chain', set: (s) => void s.seen.push('chain') },
  { short: 'x', arg: 2, set: (s, a) => void s.seen.push(`x=${a}`) },
  { short: 'S', arg: 1, set: (_s, a) => (a === 'stop' ? 7 : undefined) },
];

describe('option tables', () => {
  it('derive the optstring and the long options (table order, val = letter or name)', () => {
    expect(optstringOf(TABLE, ':')).toBe(':f:qx::S:');
    expect(longoptsOf(TABLE)).toEqual([
      { name: 'format', hasArg: 1, val: 'f' },
      { name: 'backing-chain', hasArg: 0, val: 'backing-chain' },
    ]);
  });

  it('apply the options in command-line order and permute the rest to the end', () => {
    const s: S = { quiet: false, seen: [] };
    const r = getoptTable(['cmd', 'a', '--format=qed', '-q', 'b', '--backing', '-xy', '-x'], TABLE, s, null);
    expect(r.kind).toBe('end');
    expect(s).toEqual({ fmt: 'qed', quiet: true, seen: ['chain', 'x=y', 'x='] });
    expect(r.g.rest()).toEqual(['a', 'b']);
  });

  it('stop at a value an option returns, and at an error', () => {
    const s: S = { quiet: false, seen: [] };
    const stop = getoptTable(['cmd', '-S', 'stop', '-q'], TABLE, s, null);
    expect(stop.kind === 'stop' && stop.value).toBe(7);
    expect(s.quiet).toBe(false);
    const err = getoptTable(['cmd', '-S'], TABLE, s, null);
    expect(err.kind === 'error' && [err.error, err.opt]).toEqual(['missing', 'S']);
    const unknown = getoptTable(['cmd', '--nope'], TABLE, s, null);
    expect(unknown.kind === 'error' && [unknown.error, unknown.opt]).toEqual(['unknown', '--nope']);
  });

  it("blk-img quotes argv[optind - 1] in its messages, then the help hint", () => {
    let text = '';
    const w = { write: (x: string): void => void (text += x) };
    const o = new ToolOutput({ stdout: w, stderr: w }, 'qemu-img');
    const s: S = { quiet: false, seen: [] };
    expect(() => parseImgOptions({ o }, ['info', '-qz', 'x'], TABLE, s)).toThrow(ToolExit);
    expect(text).toBe("qemu-img: unrecognized option '-qz'\nTry 'qemu-img --help' for more information\n");
  });
});
