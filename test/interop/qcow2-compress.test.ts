// Compressed writes against qemu-img 7.2: convert -c output is byte-identical to qemu-img's
// (same zlib stream, same packing, same padding), the refusals match, and the real qemu-img
// checks our images clean with the same compressed cluster counts. zstd images are not promised
// byte identity (another libzstd build): qemu-img must read them as its own, with the same
// counts and map.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';
import { runOurs, runTheirs } from './img-parity-harness.js';
import { expectSameCompressedImage } from './qcow2-support.js';

const qemu = requireQemu();

/** A raw image of mixed chunks: repeated bytes, text, zeros and noise (seeded). */
function mixedRaw(size: number, seed: number): Uint8Array {
  const buf = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  const rnd = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
  const text = new TextEncoder().encode('compressed clusters pack at byte granularity; ');
  for (let off = 0; off < size; off += 4096) {
    const end = Math.min(off + 4096, size);
    const r = rnd();
    if (r < 0.3) buf.fill(off % 251, off, end);
    else if (r < 0.5) for (let i = off; i < end; i++) buf[i] = (rnd() * 256) | 0;
    else if (r < 0.7) for (let i = off; i < end; i++) buf[i] = text[i % text.length];
  }
  return buf;
}

describe.skipIf(!qemu)('qcow2 compressed writes against qemu-img 7.2', () => {
  const root = makeTempDir('qcow2-compress');
  afterAll(() => removeTempDir(root));
  writeFileSync(join(root, 'mixed.raw'), mixedRaw(3 * 1024 * 1024 + 1536, 7));
  writeFileSync(join(root, 'odd.raw'), mixedRaw(200 * 1024 + 512, 99));
  runQemuImg(['create', '-q', '-f', 'qcow2', 'sparse.qcow2', '5M'], { cwd: root });
  runQemuIo(['-c', 'write -P 0x33 100k 300k', '-c', 'write -P 0 1M 64k', '-c', 'write -z 2M 1M', 'sparse.qcow2'], { cwd: root });

  const cases: string[][] = [];
  for (const src of ['mixed.raw', 'odd.raw', 'sparse.qcow2']) {
    for (const o of [[], ['-o', 'cluster_size=4096'], ['-o', 'cluster_size=2M'], ['-o', 'compat=0.10'], ['-S', '0']]) cases.push([...o, src]);
    for (const o of [[], ['-o', 'cluster_size=512'], ['-o', 'cluster_size=4096'], ['-o', 'cluster_size=2M'], ['-S', '0']]) {
      cases.push(['-o', 'compression_type=zstd', ...o, src]);
    }
  }
  for (const [i, c] of cases.entries()) {
    it(`convert -c -O qcow2 ${c.join(' ')}`, async () => {
      const theirs = runTheirs(['convert', '-c', '-O', 'qcow2', ...c, `q${i}.qcow2`], root, false);
      const ours = await runOurs(['convert', '-c', '-O', 'qcow2', ...c, `b${i}.qcow2`], root, false);
      expect(ours).toEqual(theirs);
      expect(theirs.status).toBe(0);
      const q = readFileSync(join(root, `q${i}.qcow2`));
      const b = readFileSync(join(root, `b${i}.qcow2`));
      expect(b.length % 512).toBe(0);
      if (c.includes('compression_type=zstd')) {
        expectSameCompressedImage(join(root, `b${i}.qcow2`), join(root, `q${i}.qcow2`));
        return;
      }
      expect(b.equals(q)).toBe(true);
      const check = runQemuImg(['check', `b${i}.qcow2`], { cwd: root });
      expect(check.status).toBe(0);
      expect(check.stdout).toContain('No errors were found on the image.');
    });
  }

  for (const fmt of ['raw', 'qed']) {
    it(`convert -c -O ${fmt} is refused as qemu-img refuses it`, async () => {
      const theirs = runTheirs(['convert', '-c', '-O', fmt, 'odd.raw', `q.${fmt}`], root, false);
      const ours = await runOurs(['convert', '-c', '-O', fmt, 'odd.raw', `b.${fmt}`], root, false);
      expect(ours).toEqual(theirs);
      expect(theirs.status).toBe(1);
    });
  }
});
