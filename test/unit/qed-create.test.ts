import { readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDriverState, bdrvCreate, type CreateOptions } from '../../src/index.js';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg } from '../interop/qemu.js';

const qemu = requireQemu();

describe.skipIf(!qemu)('qed create is byte-identical to qemu-img create -f qed', () => {
  let dir = '';
  beforeAll(() => {
    dir = makeTempDir('qed-create');
    writeFileSync(join(dir, 'base.raw'), Buffer.alloc(3 << 20, 0x55));
    const r = runQemuImg(['create', '-q', '-f', 'qed', join(dir, 'base.qed'), '8M']);
    expect(r.status).toBe(0);
  });
  afterAll(() => removeTempDir(dir));

  const cases: { name: string; args: string[]; size: string; opts: CreateOptions }[] = [
    { name: 'default 1G', args: [], size: '1G', opts: { size: 1 << 30 } },
    { name: '4K ts=1', args: ['-o', 'cluster_size=4096,table_size=1'], size: '64M', opts: { size: 64 << 20, clusterSize: 4096, tableSize: 1 } },
    { name: '4K ts=16', args: ['-o', 'cluster_size=4096,table_size=16'], size: '10G', opts: { size: 10 * 2 ** 30, clusterSize: 4096, tableSize: 16 } },
    { name: '4K ts=2', args: ['-o', 'cluster_size=4096,table_size=2'], size: '1M', opts: { size: 1 << 20, clusterSize: 4096, tableSize: 2 } },
    { name: 'size 1000 rounds to 1024', args: [], size: '1000', opts: { size: 1000 } },
    { name: 'size 0', args: ['-o', 'cluster_size=8192'], size: '0', opts: { size: 0, clusterSize: 8192 } },
    {
      name: 'raw backing (NO_PROBE)',
      args: ['-b', 'base.raw', '-F', 'raw'],
      size: '4M',
      opts: { size: 4 << 20, backingFile: 'base.raw', backingFmt: 'raw' },
    },
    {
      name: 'qed backing (probed)',
      args: ['-o', 'cluster_size=4096', '-b', 'base.qed', '-F', 'qed'],
      size: '8M',
      opts: { size: 8 << 20, clusterSize: 4096, backingFile: 'base.qed', backingFmt: 'qed' },
    },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const theirs = join(dir, `q-${c.name.replace(/\W/g, '_')}.qed`);
      const ours = join(dir, `o-${c.name.replace(/\W/g, '_')}.qed`);
      const r = runQemuImg(['create', '-q', '-f', 'qed', ...c.args, theirs, c.size], { cwd: dir });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      // Leave garbage in our target first: create must start from an empty file.
      writeFileSync(ours, Buffer.alloc(300000, 0xee));
      await bdrvCreate(ours, { format: 'qed', options: c.opts });
      const a = readFileSync(theirs);
      const b = readFileSync(ours);
      expect(b.length).toBe(a.length);
      expect(b.equals(a)).toBe(true);
    });
  }

  it('file lengths match QEMU’s layout: (1 + ts) * cs', async () => {
    const f = join(dir, 'len.qed');
    await bdrvCreate(f, { format: 'qed', options: { size: 1 << 20, clusterSize: 4096, tableSize: 16 } });
    expect(statSync(f).size).toBe(69632);
  });

  it('opens what it creates, with the recorded backing file and format', async () => {
    const f = join(dir, 'o-raw_backing__NO_PROBE_.qed');
    const bs = await BlockDriverState.open(f, { readOnly: true });
    try {
      expect(bs.backingFile).toBe('base.raw');
      expect(bs.backingFormat).toBe('raw');
      expect(bs.backing).not.toBeNull();
      const buf = new Uint8Array(512);
      await bs.pread(0, buf);
      expect(buf.every((x) => x === 0x55)).toBe(true);
    } finally {
      await bs.close();
    }
  });

  it('refuses bad options with QEMU’s messages and writes nothing', async () => {
    const f = join(dir, 'never.qed');
    await expect(bdrvCreate(f, { format: 'qed', options: { size: 1 << 20, clusterSize: 1000 } })).rejects.toThrow(
      'QED cluster size must be within range [4096, 67108864] and power of 2',
    );
    await expect(
      bdrvCreate(f, { format: 'qed', options: { size: 1 << 20, clusterSize: 4096, backingFile: 'x'.repeat(5000) }, unsafe: true }),
    ).rejects.toThrow(/too long/);
    expect(existsSync(f)).toBe(false);
    const r = runQemuImg(['create', '-f', 'qed', '-o', 'cluster_size=1000', f, '1G']);
    expect(r.stderr).toContain('QED cluster size must be within range [4096, 67108864] and power of 2');
  });
});
