import { afterEach, describe, expect, it } from 'vitest';
import { BlockDriverState, BlockError } from '../../src/index.js';
import { memStoreCreate, memStoreDelete, memStoreWrite } from '../../src/drivers/mem/index.js';
import {
  blkdebugBreak,
  blkdebugFind,
  blkdebugIsSuspended,
  blkdebugParseFilename,
  blkdebugRemoveBreak,
  blkdebugResume,
  blkdebugState,
  blkdebugWaitBreak,
} from '../../src/drivers/blkdebug/index.js';

const names: string[] = [];
function mem(name: string, size: number): string {
  memStoreCreate(name, size);
  names.push(name);
  return `mem:${name}`;
}
afterEach(() => {
  for (const n of names.splice(0)) memStoreDelete(n);
});

async function rejection(p: Promise<unknown>): Promise<BlockError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    return e as BlockError;
  }
  throw new Error('expected a rejection');
}

describe('blkdebug filename', () => {
  it('splits CONFIG and IMAGE at the first colon', () => {
    expect(blkdebugParseFilename('blkdebug:rules.cfg:mem:disk')).toEqual({ config: 'rules.cfg', image: 'mem:disk' });
    expect(blkdebugParseFilename('blkdebug::/tmp/a.qed')).toEqual({ config: '', image: '/tmp/a.qed' });
  });
  it('takes a name without the prefix as the image, with no config (qemu-io -f blkdebug x.raw)', () => {
    expect(blkdebugParseFilename('/tmp/a.raw')).toEqual({ config: '', image: '/tmp/a.raw' });
    expect(blkdebugParseFilename('file:a.raw')).toEqual({ config: '', image: 'file:a.raw' });
    expect(blkdebugParseFilename('mem:disk')).toEqual({ config: '', image: 'mem:disk' });
  });
  it('refuses a name without an image', () => {
    expect(() => blkdebugParseFilename('blkdebug:onlyconfig')).toThrow(/requires both config file and image path/);
    expect(() => blkdebugParseFilename('blkdebug:cfg:')).toThrow(BlockError);
  });
});

describe('blkdebug driver', () => {
  it('passes requests through to the image', async () => {
    const img = mem('bd-pass', 8192);
    const bs = await BlockDriverState.open(`blkdebug::${img}`, { format: 'raw' });
    expect(bs.file?.driver.formatName).toBe('blkdebug');
    expect(blkdebugFind(bs)).toBe(bs.file);
    await bs.pwrite(100, new Uint8Array([1, 2, 3]));
    const back = new Uint8Array(3);
    await bs.pread(100, back);
    expect([...back]).toEqual([1, 2, 3]);
    expect(await bs.getLength()).toBe(8192);
    await bs.close();
    const again = await BlockDriverState.open(img, { format: 'raw' });
    await again.pread(100, back);
    expect([...back]).toEqual([1, 2, 3]);
    await again.close();
  });

  it('reads the config file through the protocol layer and injects at the event', async () => {
    const img = mem('bd-inj', 8192);
    mem('bd-cfg', 0);
    memStoreWrite('bd-cfg', new TextEncoder().encode('[inject-error]\nevent = "write_aio"\nerrno = "28"\nonce = "on"\n'));
    const bs = await BlockDriverState.open(`blkdebug::${img}`, { format: 'raw', driverOptions: { config: 'mem:bd-cfg' } });
    await bs.file!.pwrite(0, new Uint8Array(512).fill(7));
    // raw announces write_aio on its file before each write, as QEMU's raw does: the rule fires.
    const err = await rejection(bs.pwrite(0, new Uint8Array(512).fill(9)));
    expect(err.code).toBe('ENOSPC');
    // the failed write did not reach the image
    const back = new Uint8Array(512);
    await bs.pread(0, back);
    expect(back[0]).toBe(7);
    // once: the next write goes through
    await bs.pwrite(0, new Uint8Array(512).fill(9));
    await bs.pread(0, back);
    expect(back[0]).toBe(9);
    expect(blkdebugState(bs)?.errorsInjected).toBe(1);
    await bs.close();
  });

  it('a missing config file fails the open and leaves nothing open', async () => {
    const img = mem('bd-missing', 512);
    const err = await rejection(
      BlockDriverState.open(`blkdebug::${img}`, { format: 'raw', driverOptions: { config: 'mem:no-such-cfg' } }),
    );
    expect(err.code).toBe('ENOENT');
    expect(err.message).toMatch(/Could not read blkdebug config file/);
  });

  it('a bad config fails the open with EINVAL', async () => {
    const img = mem('bd-badcfg', 512);
    const err = await rejection(
      BlockDriverState.open(`blkdebug::${img}`, { format: 'raw', driverOptions: { configText: '[inject-error]\n' } }),
    );
    expect(err.code).toBe('EINVAL');
  });

  it('flush errors: a sector-less rule fails flushes too', async () => {
    const img = mem('bd-flush', 4096);
    const bs = await BlockDriverState.open(`blkdebug::${img}`, {
      format: 'raw',
      driverOptions: { configText: '[inject-error]\nevent = "flush_to_disk"\niotype = "flush"\nimmediately = "on"\n' },
    });
    await bs.flush();
    await bs.file!.debugEvent('flush_to_disk');
    // As in QEMU, blkdebug checks flush rules only when the flush reaches the disk: after a write.
    await bs.flush();
    await bs.pwrite(0, new Uint8Array(512));
    expect((await rejection(bs.flush())).code).toBe('EIO');
    // iotype flush only: reads still work
    await bs.pread(0, new Uint8Array(16));
    await bs.close().catch(() => undefined);
  });

  it('breakpoints: break / wait_break / resume / remove_break', async () => {
    const img = mem('bd-break', 4096);
    const bs = await BlockDriverState.open(`blkdebug::${img}`, { format: 'raw' });
    blkdebugBreak(bs, 'write_aio', 'A');
    expect(() => blkdebugBreak(bs, 'nonsense', 'A')).toThrow(/Unknown blkdebug event/);
    let finished = false;
    const req = bs.file!.debugEvent('write_aio').then(() => {
      finished = true;
    });
    await blkdebugWaitBreak(bs, 'A');
    expect(blkdebugIsSuspended(bs, 'A')).toBe(true);
    expect(finished).toBe(false);
    blkdebugResume(bs, 'A');
    await req;
    expect(finished).toBe(true);
    expect(() => blkdebugResume(bs, 'A')).toThrow(/No suspended request/);
    expect(() => blkdebugRemoveBreak(bs, 'A')).toThrow(/No breakpoint/);
    blkdebugBreak(bs, 'write_aio', 'B');
    blkdebugRemoveBreak(bs, 'B');
    await bs.file!.debugEvent('write_aio');
    await bs.close();
  });

  it('close wakes requests parked at a breakpoint', async () => {
    const img = mem('bd-closepark', 4096);
    const bs = await BlockDriverState.open(`blkdebug::${img}`, { format: 'raw' });
    blkdebugBreak(bs, 'l2_update', 'T');
    const parked = bs.file!.debugEvent('l2_update');
    await blkdebugWaitBreak(bs, 'T');
    await bs.close();
    await parked;
  });

  it('the breakpoint API refuses stacks without blkdebug', async () => {
    const img = mem('bd-none', 512);
    const bs = await BlockDriverState.open(img, { format: 'raw' });
    expect(() => blkdebugBreak(bs, 'write_aio', 'x')).toThrow(/no blkdebug node/);
    await bs.close();
  });
});

describe('blkdebug filename with a protocol config', () => {
  it('keeps the colon of a mem: config name', () => {
    expect(blkdebugParseFilename('blkdebug:mem:cfg:mem:disk')).toEqual({ config: 'mem:cfg', image: 'mem:disk' });
  });
});
