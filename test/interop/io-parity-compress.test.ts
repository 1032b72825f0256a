// blk-io `write -c` against qemu-io 7.2 on qcow2: same output and status for compressed
// writes (compressible, incompressible, tail cluster, refused ones), and the resulting image
// byte-identical to QEMU's (one cluster per request, so QEMU's allocation order is fixed)
// and clean under qemu-img check. On zstd images the compressed bytes may differ (another
// libzstd build): qemu-img must read ours as its own, with the same counts and map.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { cmds, describeParity, type ImageSpec, type Session } from './io-parity-harness.js';
import { qemuIoPath, runQemuImg } from './qemu.js';
import { expectSameCompressedImage } from './qcow2-support.js';

const img = (name: string, opts: string[] = []): ImageSpec => ({ name, fmt: 'qcow2', size: '1040k', opts });
const on = (name: string, ...list: string[]): string[] => ['-f', 'qcow2', ...cmds(...list), name];

const sessions: Session[] = [
  {
    name: 'write -c, one cluster at a time',
    args: on('a.qcow2', 'write -c -P 0x41 0 64k', 'write -c -P 0x42 192k 64k', 'write -c -s rand.bin 256k 64k', 'write -c -P 7 1024k 16k', 'read -P 0x41 0 64k', 'map'),
    images: [img('a.qcow2')],
    compareImages: true,
  },
  {
    name: 'write -c refused: allocated, unaligned, partial cluster',
    args: on('b.qcow2', 'write -P 1 0 64k', 'write -c 0 64k', 'write -c 512 64k', 'write -c 64k 4k', 'write -c 128k 512', 'map'),
    images: [img('b.qcow2')],
    compareImages: true,
  },
  {
    name: 'write -c on small clusters and compat 0.10',
    args: on('c.qcow2', 'write -c -P 0x55 0 4k', 'write -c -P 0x66 8k 4k', 'write -c -P 0x55 12k 4k', 'read -P 0x66 8k 4k'),
    images: [img('c.qcow2', ['-o', 'cluster_size=4k,compat=0.10'])],
    compareImages: true,
  },
  {
    name: 'write -c on a zstd image, one cluster at a time',
    args: on('z.qcow2', 'write -c -P 0x41 0 64k', 'write -c -P 0x42 192k 64k', 'write -c -s rand.bin 256k 64k', 'write -c -P 7 1024k 16k', 'write -c 64k 4k', 'read -P 0x41 0 64k', 'map'),
    images: [img('z.qcow2', ['-o', 'compression_type=zstd'])],
    compareImages: true,
  },
  {
    name: 'write -c on a zstd image with 512-byte clusters',
    args: on('y.qcow2', 'write -c -P 0x55 0 512', 'write -c -s rand.bin 1k 512', 'write -c -P 0x66 2k 512', 'read -P 0x66 2k 512', 'map'),
    images: [img('y.qcow2', ['-o', 'compression_type=zstd,cluster_size=512'])],
    compareImages: true,
  },
  {
    name: 'write -c on a zstd image with 2 MiB clusters',
    args: ['-f', 'qcow2', ...cmds('write -c -P 0x77 0 2M', 'write -c -P 0 2M 2M', 'read -P 0x77 0 2M'), 'x.qcow2'],
    images: [{ name: 'x.qcow2', fmt: 'qcow2', size: '5M', opts: ['-o', 'compression_type=zstd,cluster_size=2M'] }],
    compareImages: true,
  },
  { name: 'write -c on raw', args: ['-f', 'raw', ...cmds('write -c 0 64k'), 'r.raw'], images: [{ name: 'r.raw', fmt: 'raw', size: '1M' }], compareImages: true },
];

const rand = Buffer.alloc(64 << 10);
for (let i = 0, x = 12345; i < rand.length; i++) {
  x = (x * 1103515245 + 12345) >>> 0;
  rand[i] = x >>> 24;
}

describeParity('blk-io write -c parity with qemu-io 7.2 on qcow2', qemuIoPath(), sessions, {
  files: { 'rand.bin': rand },
  imagesAlways: true,
  extra: (s, _res, runner) => {
    for (const i of s.images ?? []) {
      if (i.fmt !== 'qcow2') continue;
      const ours = join(runner.lastCaseDir, i.name);
      if (i.opts?.some((o) => o.includes('compression_type=zstd')) === true) {
        expectSameCompressedImage(ours, `${ours}.qemu`);
        continue;
      }
      expect(readFileSync(ours).equals(readFileSync(`${ours}.qemu`)), `${i.name} byte-identical`).toBe(true);
      const c = runQemuImg(['check', ours]);
      expect(c.stdout + c.stderr).toContain('No errors were found on the image.');
    }
  },
});
