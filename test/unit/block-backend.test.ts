// BlockBackend: the user's bounds (EIO past the end, whole sectors for a protocol root),
// permissions (write, resize, shared), attach/detach, drain and close.
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import {
  BlockBackend,
  BlockDriverState,
  defaultRegistry,
  memStoreRead,
} from '../../src/index.js';
import { makeMem, testRegistry } from './block-helpers.js';
import { aioWrite, expectCode, expectRefusedPastEnd, expectSectorTail, makeNines, makeSevens, storeLength } from './block-user-bounds.js';

describe('BlockBackend bounds', () => {
  it('refuses every request past the end of a protocol root with EIO and changes nothing', async () => {
    const name = makeSevens();
    const blk = await BlockBackend.open(name, { format: 'mem', registry: testRegistry() });
    await expectRefusedPastEnd(blk, name);
    await blk.close();
  });

  it('counts whole sectors: the tail of the last one reads zeros and a write there grows it', async () => {
    const name = makeNines();
    const blk = await BlockBackend.open(name, { format: 'mem', registry: testRegistry() });
    expect(await blk.getLength()).toBe(1024);
    await expectCode(blk.blockStatus(1025, 1), 'EIO');
    await expectSectorTail(blk, name);
    await blk.close();
  });

  it('bounds a format root by its virtual size while its file grows', async () => {
    const name = makeMem(4096);
    const blk = await BlockBackend.open(name, { format: 'raw', registry: testRegistry() });
    await expectCode(blk.pwrite(4096, new Uint8Array(512)), 'EIO');
    expect(blk.root?.file?.growable).toBe(true);
    await blk.pwrite(0, new Uint8Array(512).fill(4));
    expect(memStoreRead(name)[0]).toBe(4);
    await blk.close();
    expect(blk.root).toBeNull();
  });

  it('rejects invalid numbers with EINVAL', async () => {
    const blk = await BlockBackend.open(makeMem(4096), { format: 'mem', registry: testRegistry() });
    await expectCode(blk.pread(-1, new Uint8Array(1)), 'EINVAL');
    await expectCode(blk.writeZeroes(0.5, 1), 'EINVAL');
    await blk.close();
  });
});

describe('BlockBackend permissions', () => {
  it('a read-only open takes no write or resize permission', async () => {
    const name = makeMem(4096);
    const blk = await BlockBackend.open(name, { format: 'mem', registry: testRegistry(), readOnly: true });
    expect(blk.readOnly).toBe(true);
    await expectCode(blk.pwrite(0, new Uint8Array(1)), 'EPERM', /'write' permission/);
    await expectCode(blk.discard(0, 512), 'EPERM');
    await expectCode(blk.truncate(8192), 'EPERM', /'resize' permission/);
    expect((await aioWrite(blk, 0, 1))?.code).toBe('EPERM');
    await blk.pread(0, new Uint8Array(512));
    await blk.close();
  });

  it('write without resize: writes go through, truncate is refused and changes nothing', async () => {
    const name = makeMem(4096);
    const blk = await BlockBackend.open(name, { format: 'mem', registry: testRegistry(), perm: { write: true } });
    await blk.pwrite(0, Uint8Array.of(1));
    await expectCode(blk.truncate(8192), 'EPERM');
    expect(storeLength(name)).toBe(4096);
    await blk.close();
  });

  it('refuses the write permission on a read-only node', async () => {
    const bs = await BlockDriverState.open(makeMem(4096), { format: 'mem', registry: testRegistry(), readOnly: true });
    const blk = new BlockBackend({ perm: { write: true } });
    expect(() => blk.attach(bs)).toThrow(/Block node is read-only/);
    expect(blk.root).toBeNull();
    await bs.close();
  });

  it('checks shared permissions both ways between users of one node', async () => {
    const bs = await BlockDriverState.open(makeMem(4096), { format: 'mem', registry: testRegistry() });
    const writer = new BlockBackend({ perm: { write: true }, sharedPerm: { write: false, resize: true } });
    writer.attach(bs);
    const second = new BlockBackend({ perm: { write: true } });
    expect(() => second.attach(bs)).toThrow(/does not allow 'write'/);
    const exclusive = new BlockBackend({ sharedPerm: { write: false } });
    expect(() => exclusive.attach(bs)).toThrow(/uses 'write'/);
    const reader = new BlockBackend();
    reader.attach(bs);
    await expectCode(reader.pwrite(0, new Uint8Array(1)), 'EPERM');
    // Once the writer is gone, another writer may come.
    expect(writer.detach()).toBe(bs);
    second.attach(bs);
    await second.pwrite(0, Uint8Array.of(3));
    await second.close();
    await reader.close();
    // A node given to attach() stays open for its owner.
    expect(bs.isOpen).toBe(true);
    await bs.close();
  });

  it('reopen read-write takes the write permission; reopen read-only drops it', async () => {
    const blk = await BlockBackend.open(makeMem(4096), { format: 'mem', registry: testRegistry(), readOnly: true });
    await blk.reopen({ readOnly: false });
    expect(blk.readOnly).toBe(false);
    await blk.pwrite(0, Uint8Array.of(1));
    await blk.reopen({ readOnly: true });
    await expectCode(blk.pwrite(0, Uint8Array.of(1)), 'EPERM');
    await blk.close();
  });
});

describe('BlockBackend reopen and permissions', () => {
  it('a reopen that keeps the mode keeps the permissions; gaining write is checked first', async () => {
    const bs = await BlockDriverState.open(makeMem(4096), { format: 'mem', registry: testRegistry() });
    const reader = new BlockBackend();
    reader.attach(bs);
    await reader.reopen({ noFlush: true });
    await expectCode(reader.pwrite(0, Uint8Array.of(1)), 'EPERM');
    const exclusive = new BlockBackend({ sharedPerm: { write: false } });
    exclusive.attach(bs);
    await expect(reader.reopen({ readOnly: false })).rejects.toThrow(/does not allow 'write'/);
    await expectCode(reader.pwrite(0, Uint8Array.of(1)), 'EPERM');
    exclusive.detach();
    await reader.reopen({ readOnly: false });
    await reader.pwrite(0, Uint8Array.of(1));
    reader.detach();
    await bs.close();
  });
});

describe('BlockBackend attach, drain, close', () => {
  it('an empty backend answers ENOMEDIUM; attach gives it a root, detach gives it back', async () => {
    const blk = new BlockBackend({ perm: { write: true } });
    await expectCode(blk.pread(0, new Uint8Array(1)), 'ENOMEDIUM', /No medium inserted/);
    const bs = await BlockDriverState.open(makeMem(512), { format: 'mem', registry: testRegistry() });
    expect(bs.growable).toBe(false);
    blk.attach(bs);
    expect(blk.root).toBe(bs);
    expect(bs.growable).toBe(true);
    expect(() => blk.attach(bs)).toThrow(/already has a root/);
    expect(blk.detach()).toBe(bs);
    // The node's own bounds are back once no backend holds it.
    expect(bs.growable).toBe(false);
    expect(blk.detach()).toBeNull();
    await bs.close();
  });

  it('drain waits for requests in flight; close refuses new ones and closes the root it opened', async () => {
    const blk = await BlockBackend.open(makeMem(1 << 20), { format: 'mem', registry: defaultRegistry });
    const bs = blk.root;
    const writes = [0, 1, 2, 3].map((i) => blk.pwrite(i * 4096, new Uint8Array(4096).fill(i + 1)));
    await blk.drain();
    await Promise.all(writes);
    await blk.close();
    expect(bs?.isOpen).toBe(false);
    await expectCode(blk.pread(0, new Uint8Array(1)), 'EBADF');
    // A second close is the first one.
    await blk.close();
  });

  it('answers allocation status through the backing chain', async () => {
    const blk = await BlockBackend.open(makeMem(4096), { format: 'mem', registry: testRegistry() });
    expect(await blk.blockStatusAbove(0, 4096)).toMatchObject({ depth: 0, allocated: true });
    expect(await blk.isAllocated(0, 4096)).toMatchObject({ allocated: true });
    expect(await blk.isAllocatedAbove(null, 0, 4096)).toMatchObject({ allocated: true });
    await blk.close();
  });
});

describe('console summaries', () => {
  it('a node, a backend and a block status print as short summaries, not internals', async () => {
    const name = makeMem(4096);
    const blk = await BlockBackend.open(name, { format: 'raw', registry: testRegistry() });
    const bs = blk.root;
    if (!bs) throw new Error('no root');
    expect(inspect(bs)).toBe(`BlockDriverState { raw '${name}', 4096 bytes, file: mem '${name}' }`);
    expect(inspect(blk)).toBe(`BlockBackend { root: raw '${name}', perm: write,resize }`);
    // A status names its file node by the node's summary, not by the node's internals.
    const st = inspect(await blk.blockStatus(0, 4096), { breakLength: Infinity });
    expect(st).toContain(`file: BlockDriverState { mem '${name}', 4096 bytes }`);
    expect(st).not.toMatch(/requests|opaque|openOptions/);
    await blk.close();
    expect(inspect(blk)).toBe('BlockBackend { root: none, perm: write,resize, closed }');
    expect(inspect(bs)).toBe(`BlockDriverState { raw '${name}', closed, file: mem '${name}' }`);
  });
});
