// What the tools ask of drivers through hooks and properties instead of format names:
// breakpoints down the stack (block/debug.ts), the probed-raw open warning, create warnings,
// the driver's own open options and no-fallback zeroing.
import { describe, expect, it } from 'vitest';
import { BlockDriverState, bdrvCreate, defaultRegistry, isBlockError, setDebugMessageSink } from '../../src/index.js';
import { main } from '../../src/tools/io/main.js';
import { makeMem, memName } from './block-helpers.js';

const mem = (prefix: string, size: number): string => makeMem(size, prefix);

describe('breakpoints through the node (bdrv_debug_*)', () => {
  it('find the blkdebug node below a format and park, report and resume a request', async () => {
    const img = mem('hooks-break', 65536);
    const bs = await BlockDriverState.open(`blkdebug::${img}`, { format: 'raw' });
    const lines: string[] = [];
    setDebugMessageSink((l) => lines.push(l));
    try {
      bs.debugBreakpoint('write_aio', 'A');
      const req = bs.file!.debugEvent('write_aio');
      while (!bs.debugIsSuspended('A')) await new Promise((r) => setTimeout(r, 1));
      expect(lines).toEqual(["blkdebug: Suspended request 'A'"]);
      bs.debugResume('A');
      await req;
      expect(lines).toEqual(["blkdebug: Suspended request 'A'", "blkdebug: Resuming request 'A'"]);
      expect(() => bs.debugRemoveBreakpoint('A')).toThrow(/No breakpoint/);
    } finally {
      setDebugMessageSink(null);
      await bs.close();
    }
  });

  it('refuse with ENOTSUP a stack that has no breakpoint hooks', async () => {
    const img = mem('hooks-nobreak', 4096);
    const bs = await BlockDriverState.open(img, { format: 'raw' });
    try {
      for (const call of [() => bs.debugBreakpoint('write_aio', 'A'), () => bs.debugResume('A'), () => bs.debugIsSuspended('A')]) {
        let err: unknown = null;
        try {
          call();
        } catch (e) {
          err = e;
        }
        expect(isBlockError(err, 'ENOTSUP')).toBe(true);
      }
    } finally {
      await bs.close();
    }
  });
});

describe('driver warnings', () => {
  it('raw warns about a probed image only when it is writable (as raw_open)', async () => {
    const img = mem('hooks-probe', 4096);
    const rw = await BlockDriverState.open(img);
    expect(rw.driver.openWarning?.(rw)).toBe(
      `WARNING: Image format was not specified for '${img}' and probing guessed raw.\n` +
        '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
        "         Specify the 'raw' format explicitly to remove the restrictions.\n",
    );
    await rw.close();
    const ro = await BlockDriverState.open(img, { readOnly: true });
    expect(ro.driver.openWarning?.(ro)).toBeUndefined();
    await ro.close();
    const named = await BlockDriverState.open(img, { format: 'raw' });
    expect(named.driver.openWarning?.(named)).toBeUndefined();
    await named.close();
  });

  it('qed warns about a table size QEMU cannot open; raw has nothing to say', () => {
    const qed = defaultRegistry.require('qed');
    expect(qed.createWarnings?.({ size: 1 << 20, tableSize: 1 })).toHaveLength(1);
    expect(qed.createWarnings?.({ size: 1 << 20, tableSize: 4 })).toEqual([]);
    expect('createWarnings' in defaultRegistry.require('raw')).toBe(false);
  });
});

describe('driver properties the tools read', () => {
  it('blkdebug names its own open option; other drivers none', () => {
    expect(defaultRegistry.require('blkdebug').runtimeOptions?.map((o) => o.name)).toEqual(['config']);
    expect(defaultRegistry.require('qed').runtimeOptions).toBeUndefined();
  });

  async function io(args: string[]): Promise<string> {
    let out = '';
    const w = { write: (s: string): boolean => ((out += s), true) };
    await main(['node', 'blk-io', ...args], { stdout: w, stderr: w });
    return out;
  }

  it('write -z -n: raw over mem zeroes, qed refuses before trying', async () => {
    const raw = mem('hooks-nofb-raw', 65536);
    expect(await io(['-f', 'raw', '-c', 'write -z -n 0 64k', raw])).toMatch(/^wrote 65536\/65536 bytes at offset 0\n/);
    const q = memName('hooks-nofb-qed');
    await bdrvCreate(q, { format: 'qed', options: { size: 1 << 20 } });
    expect(await io(['-f', 'qed', '-c', 'write -z -n 0 64k', q])).toBe('write failed: Operation not supported\n');
  });
});
