import { describe, expect, it } from 'vitest';
import {
  BlockDriverRegistry,
  BlockDriverState,
  BlockError,
  bdrvCreate,
  memDriver,
  memStoreCreate,
  memStoreExists,
  validateCreateOptions,
  type BlockDriver,
  type CreateOptions,
} from '../../src/index.js';
import { chainDriver, memName, testRegistry } from './block-helpers.js';

const registry = testRegistry();

async function createError(filename: string, params: Parameters<typeof bdrvCreate>[1]): Promise<BlockError> {
  const e: unknown = await bdrvCreate(filename, { registry, ...params }).then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(BlockError);
  return e as BlockError;
}

describe('bdrvCreate', () => {
  it('creates the protocol file and lets the format write it', async () => {
    const name = memName('create');
    await bdrvCreate(name, { format: 'tchain', options: { size: 65536 }, registry });
    const bs = await BlockDriverState.open(name, { registry });
    expect(bs.driver.formatName).toBe('tchain');
    expect(await bs.getLength()).toBe(65536);
    await bs.close();
  });

  it("accepts QEMU's option names and refuses unknown ones before creating anything", async () => {
    const name = memName('opts');
    const e = await createError(name, { format: 'tchain', options: { size: 4096, colour: 'red' } });
    expect(e.code).toBe('EINVAL');
    expect(e.message).toBe("Invalid parameter 'colour'");
    expect(memStoreExists(name)).toBe(false);
    expect(validateCreateOptions(chainDriver, { size: 512, backing_file: 'b', backing_fmt: 'raw' })).toEqual({
      size: 512,
      backingFile: 'b',
      backingFmt: 'raw',
    });
    expect(() => validateCreateOptions(chainDriver, { size: -1 })).toThrow(BlockError);
    expect(() => validateCreateOptions(chainDriver, { size: 1.5 })).toThrow(BlockError);
    expect(() => validateCreateOptions(chainDriver, { backingFile: 3 } as unknown as CreateOptions)).toThrow(BlockError);
  });

  it('takes the size from the backing file when none is given', async () => {
    const base = memName('base');
    memStoreCreate(base, 12288);
    const top = memName('top');
    await bdrvCreate(top, { format: 'tchain', options: { backingFile: base, backingFmt: 'raw' }, registry });
    const bs = await BlockDriverState.open(top, { registry });
    expect(await bs.getLength()).toBe(12288);
    await bs.close();
  });

  it('checks that the backing file opens unless unsafe; unsafe needs a size', async () => {
    const top = memName('top');
    const missing = memName('missing');
    const e = await createError(top, { format: 'tchain', options: { size: 4096, backingFile: missing } });
    expect(e.code).toBe('ENOENT');
    expect(e.message).toContain(`Could not open '${missing}'`);
    expect(memStoreExists(top)).toBe(false);

    const u = await createError(top, { format: 'tchain', options: { backingFile: missing }, unsafe: true });
    expect(u.code).toBe('EINVAL');
    expect(memStoreExists(top)).toBe(false);

    await bdrvCreate(top, { format: 'tchain', options: { size: 4096, backingFile: missing }, unsafe: true, registry });
    const bs = await BlockDriverState.open(top, { registry, noBacking: true });
    expect(bs.backingFile).toBe(missing);
    await bs.close();
  });

  it('needs a size without a backing file', async () => {
    const e = await createError(memName('nosize'), { format: 'tchain', options: {} });
    expect(e.code).toBe('EINVAL');
  });

  it('refuses unknown formats, unknown backing formats, and formats without create', async () => {
    expect((await createError(memName('x'), { format: 'nope', options: { size: 512 } })).code).toBe('EINVAL');
    const bf = await createError(memName('x'), { format: 'tchain', options: { size: 512, backingFile: 'b', backingFmt: 'nope' } });
    expect(bf.code).toBe('EINVAL');
    const noCreate: BlockDriver = { formatName: 'nocreate' };
    const reg = new BlockDriverRegistry().register(memDriver).register(noCreate);
    const e = await bdrvCreate(memName('x'), { format: 'nocreate', options: { size: 512 }, registry: reg }).then(
      () => null,
      (err: unknown) => err as BlockError,
    );
    expect(e?.code).toBe('ENOTSUP');
    // A format without backing support refuses a backing file.
    const raw = await createError(memName('x'), { format: 'raw', options: { size: 512, backingFile: 'b' }, unsafe: true });
    expect(raw.code).toBe('ENOTSUP');
  });

  it('creates protocol-level images directly (format mem)', async () => {
    const name = memName('proto');
    await bdrvCreate(name, { format: 'mem', options: { size: 1024 }, registry });
    const bs = await BlockDriverState.open(name, { registry, format: 'mem' });
    expect(await bs.getLength()).toBe(1024);
    await bs.close();
  });
});
