// Opening from options (QEMU's bdrv_open with a QDict): nested stacks, json: filenames,
// backing=null, backing.* options, leftovers refused in QEMU's words, nothing left open on error.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlockBackend, BlockDriverState, BlockError, bdrvCreate, memStoreRead, memStoreWrite } from '../../src/index.js';
import { createQed, memName, pattern, readAll } from './qed-helpers.js';

async function openMessage(p: Promise<BlockDriverState>): Promise<string> {
  try {
    const bs = await p;
    await bs.close();
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    return (e as BlockError).message;
  }
  throw new Error('expected the open to fail');
}

/** A QED image (with data) stored as the contents of another QED image. */
async function nestedQed(): Promise<{ outer: string; data: Uint8Array }> {
  const inner = memName('inner');
  await createQed(inner, { size: 1 << 20 });
  const data = pattern(65536, 7);
  const bs = await BlockDriverState.open(inner, { format: 'qed' });
  await bs.pwrite(0, data);
  await bs.close();
  const innerBytes = memStoreRead(inner);
  const outer = memName('outer');
  await createQed(outer, { size: 4 << 20 });
  const o = await BlockDriverState.open(outer, { format: 'qed' });
  await o.pwrite(0, innerBytes);
  await o.close();
  return { outer, data };
}

describe('open from options', () => {
  it('opens a QED image stored inside a QED image (driver=qed,file.driver=qed)', async () => {
    const { outer, data } = await nestedQed();
    for (const spec of [
      { driver: 'qed', 'file.driver': 'qed', 'file.file.filename': outer },
      { driver: 'qed', file: { driver: 'qed', file: { filename: outer } } },
    ]) {
      const bs = await BlockDriverState.open(spec, { readOnly: true });
      expect(bs.driver.formatName).toBe('qed');
      expect(bs.file?.driver.formatName).toBe('qed');
      expect(await bs.getLength()).toBe(1 << 20);
      expect((await readAll(bs, 65536)).every((b, i) => b === data[i])).toBe(true);
      // As QEMU's bdrv_refresh_filename: a format over a format has a json: name.
      expect(bs.filename).toBe(`json:{"driver": "qed", "file": {"driver": "qed", "file": {"driver": "mem", "filename": "${outer}"}}}`);
      await bs.close();
    }
  });

  it('opens json: filenames, nested or dotted, as plain names', async () => {
    const name = memName();
    await createQed(name, { size: 65536 });
    for (const j of [
      `json:{"driver":"qed","file":{"driver":"mem","filename":"${name}"}}`,
      `json:{"driver":"qed","file.filename":"${name}"}`,
      `json:{'file.filename':'${name}'}`,
    ]) {
      const bs = await BlockDriverState.open(j);
      expect(bs.driver.formatName).toBe('qed');
      expect(bs.filename).toBe(name);
      await bs.close();
    }
  });

  it('takes the generic options per node', async () => {
    const name = memName();
    await createQed(name, { size: 65536 });
    const bs = await BlockDriverState.open({ driver: 'qed', 'read-only': 'on', file: { filename: name } });
    expect(bs.readOnly).toBe(true);
    await expect(bs.pwrite(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'EACCES' });
    await bs.close();
  });

  it('opens the backing file unless backing=null, and backing.* options choose how', async () => {
    const base = memName('base');
    await bdrvCreate(base, { format: 'raw', options: { size: 65536 } });
    memStoreWrite(base, new Uint8Array(65536).fill(0x11));
    const top = memName('top');
    await createQed(top, { size: 65536, backingFile: base, backingFmt: 'raw' });

    const chained = await BlockDriverState.open({ driver: 'qed', file: { filename: top } });
    expect(chained.backing?.driver.formatName).toBe('raw');
    expect((await readAll(chained, 512))[0]).toBe(0x11);
    await chained.close();

    const alone = await BlockDriverState.open({ driver: 'qed', file: { filename: top }, backing: null });
    expect(alone.backing).toBeNull();
    expect(alone.backingFile).toBe(base);
    expect((await readAll(alone, 512))[0]).toBe(0);
    await alone.close();

    const warnings: string[] = [];
    const deprecated = await BlockDriverState.open(
      { driver: 'qed', file: { filename: top }, backing: '' },
      { onWarning: (m) => warnings.push(m) },
    );
    expect(deprecated.backing).toBeNull();
    expect(warnings).toEqual(['Use of "backing": "" is deprecated; use "backing": null instead']);
    await deprecated.close();

    const viaOpts = await BlockDriverState.open({ driver: 'qed', file: { filename: top }, 'backing.driver': 'raw' });
    expect(viaOpts.backing?.readOnly).toBe(true);
    await viaOpts.close();

    expect(await openMessage(BlockDriverState.open({ driver: 'qed', file: { filename: top }, backing: 'null' }))).toBe(
      "Could not open backing file: Cannot find device='null' nor node-name='null'",
    );
  });

  it("refuses bad options with QEMU's messages", async () => {
    const name = memName();
    await createQed(name, { size: 65536 });
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ driver: 'qed', 'file.filename': name, foo: 1, bar: 2, baz: 3, qux: 4 }, "Block format 'qed' does not support the option 'qux'"],
      [{ driver: 'qed', 'file.filename': name, 'file.foo': 1 }, "Block protocol 'mem' doesn't support the option 'foo'"],
      [{ driver: 'bogus', 'file.filename': name }, "Unknown driver 'bogus'"],
      [{ driver: 'qed' }, 'A block device must be specified for "file"'],
      [{ filename: name }, 'Must specify either driver or file'],
      [{ driver: 'qed', file: name }, `Cannot find device='${name}' nor node-name='${name}'`],
      [{ driver: 'qed', 'file.filename': name, 'read-only': 'x' }, "Parameter 'read-only' expects 'on' or 'off'"],
      [{ driver: 'qed', 'file.driver': 'qed', 'file.file.filename': name }, 'Image not in QED format'],
      [{ driver: 'mem' }, "The 'mem' block driver requires a file name"],
      [{ driver: 'qed', 'file.filename': name, 'file.read-only': 'on' }, 'Block node is read-only'],
    ];
    for (const [opts, msg] of cases) {
      expect(await openMessage(BlockDriverState.open(opts as never))).toBe(msg);
    }
    expect(await openMessage(BlockDriverState.open('json:{"driver":"qed"'))).toBe(
      'Could not parse the JSON options: JSON parse error, premature EOI',
    );
  });

  it('refuses a protocol prefix nobody claims, and file: names a file with a colon', async () => {
    expect(await openMessage(BlockDriverState.open('nosuchproto:x.qed'))).toBe("Unknown protocol 'nosuchproto'");
    const dir = mkdtempSync(join(tmpdir(), 'blk-opts-'));
    try {
      const img = join(dir, 'a:b.raw');
      writeFileSync(img, new Uint8Array(4096).fill(0x22));
      // Absolute: the colon comes after a slash, a plain path.
      const abs = await BlockDriverState.open(img, { format: 'raw' });
      expect(abs.filename).toBe(img);
      await abs.close();
      // Relative, with file: in front: the file ./a:b.raw, named so it cannot read as a protocol.
      const cwd = process.cwd();
      process.chdir(dir);
      try {
        const rel = await BlockDriverState.open('file:a:b.raw', { format: 'raw' });
        expect(rel.filename).toBe('./a:b.raw');
        expect((await readAll(rel, 1))[0]).toBe(0x22);
        await rel.close();
        expect(await openMessage(BlockDriverState.open('a:b.raw', { format: 'raw' }))).toBe("Unknown protocol 'a'");
      } finally {
        process.chdir(cwd);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('BlockBackend from options', () => {
  it('opens a backend on an options object, and refuses write on a read-only root', async () => {
    const name = memName();
    await createQed(name, { size: 65536 });
    const blk = await BlockBackend.open({ driver: 'qed', file: { filename: name } });
    await blk.pwrite(0, new Uint8Array(512).fill(9));
    await blk.close();
    await expect(BlockBackend.open({ driver: 'qed', 'read-only': 'on', file: { filename: name } })).rejects.toThrow('Block node is read-only');
  });
});
