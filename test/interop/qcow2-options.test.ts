// blk-io against qemu-io 7.2 for qcow2's open options (qcow2_runtime_opts): the same options
// given through --image-opts, open -o and json: filenames are accepted or refused alike, with
// QEMU's messages, and an image opened with them reads and writes the same.
import { cmds, describeParity, type ImageSpec, type Session } from './io-parity-harness.js';
import { requireQemu } from './qemu.js';

const qemu = requireQemu();

const IMG: ImageSpec = { name: 'img.qcow2', fmt: 'qcow2', size: '4M', setup: ['write -P 0x11 0 64k', 'write -P 0x22 1M 64k'] };
const V2: ImageSpec = { name: 'v2.qcow2', fmt: 'qcow2', size: '1M', opts: ['-o', 'compat=0.10'] };
const opts = (o: string): string => `driver=qcow2,file.filename=img.qcow2,${o}`;

/** Options QEMU accepts: the image then reads and writes as usual. */
const ACCEPTED = [
  'l2-cache-size=1M',
  'l2-cache-size=1.5M',
  'l2-cache-size=0x10',
  'l2-cache-size=1P',
  'refcount-cache-size=1,l2-cache-size=1',
  'cache-size=100k',
  'cache-size=8M,l2-cache-size=64k',
  'cache-size=8M,refcount-cache-size=256k',
  'l2-cache-entry-size=4k',
  'l2-cache-entry-size=512,l2-cache-size=1k',
  'lazy-refcounts=on',
  'lazy-refcounts=off',
  'lazy-refcounts=yes',
  'pass-discard-request=off',
  'pass-discard-snapshot=on,pass-discard-other=on',
  'overlap-check=none',
  'overlap-check=all,overlap-check.template=all',
  'overlap-check.template=constant,overlap-check.main-header=off',
  'cache-clean-interval=0',
  'cache-clean-interval=0x10',
];

/** Options QEMU refuses, each with its own message. */
const REFUSED = [
  'l2-cache-size=abc',
  'l2-cache-size=1.5',
  'refcount-cache-size=-1',
  'refcount-cache-size=1E',
  'cache-size=1M,l2-cache-size=512k,refcount-cache-size=512k',
  'cache-size=100k,l2-cache-size=200k',
  'cache-size=100k,refcount-cache-size=200k',
  'l2-cache-entry-size=256',
  'l2-cache-entry-size=1000',
  'l2-cache-entry-size=128k',
  'lazy-refcounts=maybe',
  'pass-discard-snapshot=x',
  'overlap-check=foo',
  'overlap-check.template=x',
  'overlap-check=none,overlap-check.template=all',
  'overlap-check.main-header=x',
  'overlap-check.bogus=on',
  'cache-clean-interval=x',
  'cache-clean-interval=1.5',
  'cache-clean-interval=-1',
  'cache-clean-interval=99999999999',
  'discard-no-unref=on',
  'bogus=1',
];

const sessions: Session[] = [
  ...ACCEPTED.map((o) => ({
    name: `--image-opts ${o}`,
    images: [IMG],
    args: ['--image-opts', ...cmds('read -P 0x11 0 64k', 'read -P 0x22 1M 64k', 'write -P 0x33 2M 64k', 'read -P 0x33 2M 64k', 'discard 0 64k'), opts(o)],
    compareImages: true,
  })),
  ...REFUSED.map((o) => ({ name: `--image-opts ${o}`, images: [IMG], args: ['--image-opts', ...cmds('read 0 512'), opts(o)] })),
  {
    name: 'open -o with qcow2 options, good and bad',
    images: [IMG],
    args: cmds(
      'open -o l2-cache-size=64k,refcount-cache-size=256k img.qcow2',
      'read -P 0x11 0 64k',
      'close',
      'open -o cache-size=1M,l2-cache-size=2M img.qcow2',
      'open -o l2-cache-entry-size=3k img.qcow2',
      'open -o overlap-check=cached,lazy-refcounts=off img.qcow2',
      'read -P 0x22 1M 64k',
    ),
  },
  {
    name: 'json: with qcow2 options (numbers, booleans, nested overlap-check)',
    images: [IMG],
    args: cmds(
      'open json:{"driver":"qcow2","file":{"filename":"img.qcow2"},"l2-cache-size":65536,"lazy-refcounts":true}',
      'read -P 0x11 0 64k',
      'close',
      'open json:{"driver":"qcow2","file":{"filename":"img.qcow2"},"overlap-check":{"template":"all","main-header":false}}',
      'read -P 0x22 1M 64k',
      'close',
      'open json:{"driver":"qcow2","file":{"filename":"img.qcow2"},"overlap-check":{"template":"bogus"}}',
      'open json:{"driver":"qcow2","file":{"filename":"img.qcow2"},"cache-size":"1k","l2-cache-size":"2k"}',
      'open json:{"driver":"qcow2","file":{"filename":"img.qcow2"},"lazy-refcounts":"maybe"}',
    ),
  },
  {
    name: 'lazy-refcounts=on needs compat 1.1',
    images: [V2],
    args: cmds('open -o lazy-refcounts=on v2.qcow2', 'open -o lazy-refcounts=off v2.qcow2', 'read 0 512'),
  },
];

describeParity('blk-io parity with qemu-io 7.2: qcow2 open options', qemu?.qemuIo ?? null, sessions);
