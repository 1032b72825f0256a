// blk-io against qemu-io 7.2 for QEMU's option model: open -o on a nested image (a QED image
// stored inside a QED image), --image-opts, json: filenames, file:-prefixed names with colons
// and relative backing files, --object, and bad option strings.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg, runQemuIo } from './qemu.js';
import { cmds, describeParity, type ImageSpec, type Session } from './io-parity-harness.js';

const qemu = requireQemu();

/**
 * The shared input files, made once with the real tools: nested.qed (a QED image whose
 * virtual disk holds small.qed, itself holding data at 0 and 512k), a chain top.qed over
 * base.qed, and the same top image under a name with a colon.
 */
function inputs(): Record<string, Buffer> {
  if (qemu === null) return {};
  const dir = makeTempDir('io-parity-options-in');
  try {
    const ok = (r: { status: number | null; stderr: string }): void => {
      if (r.status !== 0) throw new Error(r.stderr);
    };
    ok(runQemuImg(['create', '-q', '-f', 'qed', 'small.qed', '1M'], { cwd: dir }));
    ok(runQemuIo(['-f', 'qed', '-c', 'write -P 0x5a 0 64k', '-c', 'write -P 0x33 512k 4k', 'small.qed'], { cwd: dir }));
    ok(runQemuImg(['convert', '-f', 'raw', '-O', 'qed', 'small.qed', 'nested.qed'], { cwd: dir }));
    ok(runQemuImg(['create', '-q', '-f', 'qed', 'base.qed', '1M'], { cwd: dir }));
    ok(runQemuIo(['-f', 'qed', '-c', 'write -P 0x22 0 128k', 'base.qed'], { cwd: dir }));
    ok(runQemuImg(['create', '-q', '-f', 'qed', '-b', 'base.qed', '-F', 'qed', 'top.qed'], { cwd: dir }));
    ok(runQemuIo(['-f', 'qed', '-c', 'write -P 0x44 64k 64k', 'top.qed'], { cwd: dir }));
    const read = (n: string): Buffer => readFileSync(join(dir, n));
    return {
      'nested.qed': read('nested.qed'),
      'base.qed': read('base.qed'),
      'top.qed': read('top.qed'),
      'a:b.qed': read('top.qed'),
      'sec.txt': Buffer.from('topsecret'),
    };
  } finally {
    removeTempDir(dir);
  }
}

const IMG: ImageSpec = { name: 'img.qed', fmt: 'qed', size: '1M', setup: ['write -P 0x11 0 64k'] };
const NESTED = 'driver=qed,file.driver=qed,file.file.filename=nested.qed';
const sessions: Session[] = [
  {
    name: 'open -o driver=qed,file.driver=qed on a QED image inside a QED image',
    args: cmds('open -o driver=qed,file.driver=qed nested.qed', 'read -P 0x5a 0 64k', 'read -P 0x33 512k 4k', 'read -P 0 64k 64k', 'info', 'map', 'close'),
  },
  {
    name: '--image-opts on the nested image',
    args: ['--image-opts', ...cmds('read -P 0x5a 0 64k', 'read -v 512k 32', 'info', 'map'), NESTED],
  },
  {
    name: 'open -o with the whole stack in options',
    args: cmds(`open -r -o ${NESTED}`, 'read -P 0x5a 0 64k', 'close', 'open -o driver=qed,file.filename=top.qed', 'read -P 0x22 0 64k', 'read -P 0x44 64k 64k', 'info'),
  },
  {
    name: 'open -o: backing=null, backing.*',
    args: cmds(
      'open -o driver=qed,file.filename=top.qed,backing=null',
      'read -P 0 0 64k',
      'close',
      'open -o driver=qed,file.filename=top.qed,backing.driver=qed,backing.file.filename=base.qed',
      'read -P 0x22 0 64k',
      'close',
      'open -o backing.driver=raw top.qed',
      'read -v 0 16',
    ),
  },
  {
    name: 'json: filenames',
    images: [IMG],
    args: cmds(
      'open json:{"driver":"qed","file":{"driver":"file","filename":"img.qed"}}',
      'read -P 0x11 0 64k',
      'write -P 0x12 64k 4k',
      'close',
      "open json:{'file.filename':'img.qed'}",
      'read -P 0x12 64k 4k',
      'close',
      'open json:{"driver":"qed","file":{"driver":"qed","file":{"filename":"nested.qed"}}}',
      'read -P 0x5a 0 64k',
    ),
    compareImages: true,
  },
  {
    name: 'json: filename with -f (the option wins)',
    args: ['-f', 'raw', ...cmds('read -v 0 16'), 'json:{"driver":"qed","file":{"filename":"top.qed"}}'],
  },
  {
    name: 'file:-prefixed names with colons and relative backing files',
    args: cmds('open file:a:b.qed', 'read -P 0x22 0 64k', 'read -P 0x44 64k 64k', 'close', 'open a:b.qed', 'open ./a:b.qed', 'read -P 0x22 0 64k'),
  },
  {
    name: 'bad option strings',
    images: [IMG],
    args: cmds(
      'open -o foo=bar img.qed',
      'open -o driver=qed,foo=bar img.qed',
      'open -o driver=qed,foo=1,bar=2,baz=3,qux=4 img.qed',
      'open -o file.driver=qed,file.foo=1 img.qed',
      'open -o driver=qed,,x img.qed',
      'open -o noflag img.qed',
      'open -o id=1x img.qed',
      'open -o id=x img.qed',
      'open -o =x img.qed',
      'open -o help img.qed',
      'open -o driver=qed,file.driver=qed img.qed',
      'open -o driver=qed,file.filename=img.qed img.qed',
      'open -o driver=qed',
      'open -o filename=img.qed',
      'open -o driver=bogus img.qed',
      'open -o read-only=x img.qed',
      'open -o read-only=on img.qed',
      'open -o file.read-only=on img.qed',
      'open -o backing=null2 top.qed',
      'open -o backing.driver=raw,backing.foo=1 top.qed',
      'open -U -o force-share=off -r img.qed',
      'open json:{"driver":"qed"',
      'open json:[1]',
      'open json:{"driver":"qed","file":{"filename":"img.qed"},"x":1}',
    ),
  },
  { name: '--image-opts: a bare name is a flag', args: ['--image-opts', 'img.qed'], images: [IMG] },
  { name: '--image-opts and -f', args: ['-f', 'qed', '--image-opts', 'driver=qed,file.filename=img.qed'], images: [IMG] },
  { name: '--image-opts and open -o', args: ['--image-opts', ...cmds('open -o driver=qed img.qed'), 'driver=qed,file.filename=img.qed'], images: [IMG] },
  { name: '--image-opts with a bad id', args: ['--image-opts', 'id=1x,driver=qed,file.filename=img.qed'], images: [IMG] },
  { name: '--image-opts with leftovers', args: ['--image-opts', 'driver=qed,file.filename=img.qed,x=1'], images: [IMG] },
  { name: '--object secret', args: ['--object', 'secret,id=s,data=x', '--object', 'secret,id=t,file=sec.txt', ...cmds('info'), 'img.qed'], images: [IMG] },
  { name: '--object with no data', args: ['--object', 'secret,id=s', ...cmds('info'), 'img.qed'], images: [IMG] },
  { name: '--object duplicate id', args: ['--object', 'secret,id=s,data=x', '--object', 'secret,id=s,data=y', ...cmds('info'), 'img.qed'], images: [IMG] },
  { name: '--object unknown type', args: ['--object', 'bogus,id=s', 'img.qed'], images: [IMG] },
  { name: '--object unreadable file', args: ['--object', 'secret,id=s,file=nothere', 'img.qed'], images: [IMG] },
];

describeParity('blk-io parity with qemu-io 7.2: options, json:, file: names, --object', qemu?.qemuIo ?? null, sessions, {
  files: inputs(),
});
