// blk-io against qemu-io 7.2: the same scripted sessions on identical images (made by
// qemu-img), compared on stdout, stderr, the merged pipe and the exit status; only timing and
// throughput figures are masked. Sessions group many commands to keep the suite quick.
import { requireQemu } from './qemu.js';
import { cmds, describeParity, type ImageSpec, type Session } from './io-parity-harness.js';

const qemu = requireQemu();

const QED: ImageSpec = { name: 'img.qed', fmt: 'qed', size: '1M' };
const RAW: ImageSpec = { name: 'img.raw', fmt: 'raw', size: '1M' };
/** A QED image with data, a zero cluster and holes (set up by qemu-io itself). */
const QED_DATA: ImageSpec = {
  name: 'data.qed',
  fmt: 'qed',
  size: '4M',
  setup: ['write -P 0x41 0 64k', 'write -P 0x62 128k 4k', 'write -z 256k 64k', 'write -P 0x33 2M 100'],
};
const RAW_DATA: ImageSpec = { name: 'data.raw', fmt: 'raw', size: '1M', setup: ['write -P 0x5a 4k 8k'] };
/** A raw backing file and a QED overlay naming it relatively (created with -u, then copied). */
const BASE: ImageSpec = { ...RAW_DATA, name: 'base.raw' };
/** A raw file whose size (1000000) is not a multiple of 512, full of data. */
const ODD: ImageSpec = { name: 'odd.raw', fmt: 'raw', size: '1M', setup: ['write -P 0x5a 0 1M', 'truncate 1000000'] };
const OVERLAY: ImageSpec = { name: 'over.qed', fmt: 'qed', size: '1M', opts: ['-u', '-b', 'base.raw', '-F', 'raw'] };

const q = (...c: string[]): string[] => [...cmds(...c), 'img.qed'];
const r = (...c: string[]): string[] => ['-f', 'raw', ...cmds(...c), 'img.raw'];

const sessions: Session[] = [
  // --- the program's own options --------------------------------------------------------------
  { name: 'help option', args: ['--help'] },
  { name: '-h', args: ['-h', 'img.qed'], images: [QED] },
  { name: 'unknown short option', args: ['-Z', 'img.qed'], images: [QED] },
  { name: 'unknown long option', args: ['--foo', 'img.qed'], images: [QED] },
  { name: 'unknown long option with value', args: ['--foo=1', 'img.qed'], images: [QED] },
  { name: 'ambiguous long option', args: ['--c', 'x', 'img.qed'], images: [QED] },
  { name: 'long option refusing a value', args: ['--read-only=1', 'img.qed'], images: [QED] },
  { name: 'image-opts refusing a value', args: ['--image-opts=1', 'img.qed'], images: [QED] },
  { name: 'missing -c argument', args: ['-c'] },
  { name: 'missing -f argument', args: ['-f'] },
  { name: 'missing --cache argument', args: ['--cache'] },
  { name: 'two files', args: ['img.qed', 'img.qed'], images: [QED] },
  { name: 'image-opts with -f', args: ['--image-opts', '-f', 'qed', 'img.qed'], images: [QED] },
  { name: 'bad cache mode', args: ['-t', 'bogus', 'img.qed'], images: [QED] },
  { name: 'bad discard mode', args: ['-d', 'bogus', 'img.qed'], images: [QED] },
  { name: 'bad aio mode', args: ['-i', 'bogus', 'img.qed'], images: [QED] },
  { name: 'native aio without O_DIRECT', args: ['-k', ...q('length')], images: [QED] },
  { name: 'force-share read-write', args: ['-U', ...q('length')], images: [QED] },
  { name: 'copy-on-read read-only', args: ['-C', '-r', ...q('length')], images: [QED] },
  { name: 'unknown format', args: ['-f', 'bogus', ...q('length')], images: [QED] },
  { name: 'wrong format', args: ['-f', 'qed', ...cmds('length'), 'img.raw'], images: [RAW] },
  { name: 'missing file', args: cmds('read 0 512').concat('nonexist.qed') },
  { name: 'directory', args: [...cmds('length'), '.'] },
  { name: 'empty file name', args: [...cmds('length'), ''] },
  { name: 'no file, commands', args: cmds('read 0 1', 'length', 'close', 'info', 'help length') },
  { name: 'no file, no commands', args: [] },
  {
    name: 'valid cache/discard/aio modes and long options',
    args: ['-t', 'writethrough', '-t', 'unsafe', '-t', 'directsync', '-t', 'writeback', '-d', 'unmap', '-d', 'on', '-d', 'off', '-d', 'ignore', '-i', 'threads', '--format=qed', '--cmd=length', '--cm', 'info', '-m', 'img.qed'],
    images: [QED],
  },
  { name: '-n and -t none', args: ['-n', '-t', 'none', ...q('read 0 1', 'write 512 1')], images: [QED] },
  { name: 'read-only refuses every write command', args: ['-r', ...q('write 0 1', 'writev 0 1', 'aio_write 0 1', 'discard 0 1', 'truncate 2M', 'flush', 'write -z 0 1', 'read 0 1')], images: [QED] },
  { name: 'long options mixed', args: ['--cmd', 'length', '--nocache', '--cache=none', '--force-share', '-r', 'img.qed'], images: [QED] },
  { name: 'options after the file name', args: ['img.qed', '-c', 'length'], images: [QED] },
  { name: 'double dash', args: ['-c', 'length', '--', 'img.qed'], images: [QED] },
  { name: 'probed raw warning', args: [...cmds('write -P 0x51 0 512', 'read -P 0x51 0 512'), 'img.raw'], images: [RAW], compareImages: true },
  { name: 'copy-on-read option', args: ['-C', ...q('read 0 1', 'map')], images: [QED] },
  { name: 'snapshot writes go away', args: ['-s', ...q('write -P 7 0 4k', 'read -P 7 0 4k', 'map')], images: [QED], compareImages: true },
  {
    name: 'VM state area of qcow2: -b writes past the guest disk, reads them back',
    args: [
      ...cmds('write -b -P 5 0 64k', 'write -b -P 6 2M 4k', 'read -b -P 5 0 64k', 'read -b -P 6 2M 4k', 'read -b -P 0 64k 4k', 'read -P 0x41 0 4k', 'write -b 1 512', 'read -b 0 511', 'write -b -z 0 512', 'map'),
      'vm.qcow2',
    ],
    images: [{ name: 'vm.qcow2', fmt: 'qcow2', size: '1M', setup: ['write -P 0x41 0 4k'] }],
    compareImages: true,
  },
  { name: 'VM state of formats without one', args: ['-f', 'raw', ...cmds('write -b 0 512', 'read -b 0 512'), 'img.raw'], images: [RAW] },
  {
    name: 'snapshot writes go away over qcow2',
    args: ['-s', ...cmds('write -P 7 0 4k', 'read -P 7 0 4k', 'read -P 0x41 4k 60k', 'map'), 'data.qcow2'],
    images: [{ name: 'data.qcow2', fmt: 'qcow2', size: '1M', setup: ['write -P 0x41 0 64k', 'write -z 128k 64k'] }],
    compareImages: true,
  },

  // --- command line basics --------------------------------------------------------------------
  {
    name: 'argument counts',
    args: q('abort 1', 'aio_flush 1', 'aio_read', 'aio_write', 'alloc', 'alloc 1 2 3', 'break', 'break a', 'break a b c', 'close 1', 'discard', 'flush 1', 'help a b', 'info 1', 'length 1', 'map 1', 'open', 'readv', 'readv 1', 'remove_break', 'remove_break 1 2', 'resume', 'sigraise', 'sleep', 'sleep 1 2', 'truncate', 'wait_break', 'write', 'writev', 'read', 'read 0'),
    images: [QED],
  },
  { name: 'unknown commands and blank lines', args: q('bogus 1', '', '   ', ' length', 'length   ', 'r 0 1', 'w 0 1', 'length'), images: [QED] },
  { name: 'quit stops the list', args: q('length', 'q 1', 'length'), images: [QED] },
  { name: 'quit', args: q('quit', 'length'), images: [QED] },
  { name: 'help', args: cmds('help') },
  {
    name: 'help for each command',
    args: cmds(
      'help abort', 'help aio_flush', 'help aio_read', 'help aio_write', 'help alloc', 'help break', 'help close', 'help discard', 'help flush', 'help help', 'help info', 'help length', 'help map', 'help open', 'help quit', 'help read', 'help readv', 'help remove_break', 'help reopen', 'help resume', 'help sigraise', 'help sleep', 'help truncate', 'help wait_break', 'help write', 'help writev',
    ),
  },
  { name: 'help with altnames and unknown', args: cmds('help r', 'help w', 'help q', 'help ?', '?', 'help bogus') },

  // --- read ----------------------------------------------------------------------------------
  {
    name: 'read pattern checks',
    args: ['-f', 'qed', ...cmds('read -P 0x41 0 64k', 'read -P 0x41 0 65k', 'read -P 0x42 0 4k', 'read -P 0x41 -s 1k -l 1k 0 4k', 'read -P 0 -s 64k -l 1k 60k 8k', 'read -P 0x41 -s 5k 0 4k', 'read -P 0x41 -s 3k -l 2k 0 4k', 'read -P 0x41 -l 5k 0 4k', 'read -s 1k 0 4k', 'read -l 1k 0 4k', 'read -P 0 256k 64k', 'read -P 0x33 2M 100', 'read -P 0x33 2M 101'), 'data.qed'],
    images: [QED_DATA],
  },
  {
    name: 'read option errors',
    args: q('read -P 0x100 0 1', 'read -P -1 0 1', 'read -P 1x 0 1', 'read -P 011 0 1', 'read -P 0x 0 1', 'read -P 08 0 1', 'read -P 255 0 1', 'read -a 0 1', 'read -x 0 1', 'read 0 1 2', 'read -l 1x -P 0 0 1', 'read -s -1 -P 0 0 1', 'read -P', 'read 0 1 -P', 'read -- 0 1', 'read 0 1 -v', 'read -p 0 1'),
    images: [QED],
  },
  { name: 'read -C and -q', args: q('read -C 0 4k', 'read -Cq 0 1', 'read -q 0 1', 'read -vq 0 16', 'read -qv 0 16', 'read -C -P 0 0 512'), images: [QED] },
  { name: 'read -b (vmstate)', args: q('read -b 0 512', 'read -b 1 512', 'read -b 0 511', 'write -b 0 512', 'write -b 1 512', 'write -b 0 1'), images: [QED] },
  { name: 'read bounds', args: q('read 1M 0', 'read 1M 1', 'read 1048575 1', 'read 1048575 2', 'read 0 2M', 'read 2M 1', 'read 0 3G', 'read 0 2G', 'read 0 2147483136', 'read 8E 1', 'read 9223372036854775807 1', 'read 0 0'), images: [QED] },
  {
    name: 'hex dumps',
    args: ['-f', 'qed', ...cmds('read -v 0 1', 'read -v 0 15', 'read -v 0 16', 'read -v 0 17', 'read -v 65530 12', 'read -v 131070 40', 'read -v 2097150 110', 'read -v 100 0'), 'data.qed'],
    images: [QED_DATA],
  },
  { name: 'printable column', args: [...cmds('write -s pat.txt 0 300', 'read -v 0 300'), '-f', 'raw', 'img.raw'], images: [RAW] },

  // --- write ---------------------------------------------------------------------------------
  {
    name: 'write variants',
    args: q('write 0 1k', 'write -P 0xff 1k 512', 'write -P 1 100 3000', 'write -f 4k 4k', 'write -C 8k 4k', 'write -q 12k 4k', 'write -p 16k 1', 'read -P 0xcd 0 1k', 'read -P 0xff 1k 512', 'read -v 3090 20', 'map'),
    images: [QED],
    compareImages: true,
  },
  {
    name: 'write flag conflicts',
    args: q('write -n 0 1', 'write -u 0 1', 'write -z -P 1 0 1', 'write -z -s x 0 1', 'write -P 1 -s x 0 1', 'write -b -z 0 1', 'write -f -b 0 1', 'write -f -c 0 1', 'write -c 0 64k', 'write -c 1 512', 'write -c 0 511', 'write -x 0 1', 'write 0 1 2', 'write -P 0x1ff 0 1', 'write 0 3G', 'write -n 0 3G', 'write -zn 0 3G', 'write -P 2 0'),
    images: [QED],
  },
  {
    name: 'write zeroes',
    args: q('write -P 9 0 128k', 'write -z 0 64k', 'write -zu 64k 64k', 'write -z 200k 64k', 'write -z 1 10', 'write -zn 1 10', 'write -zn 0 64k', 'write -zn 512k 64k', 'read -P 0 0 128k', 'read -v 190k 16', 'map', 'alloc 0 1M'),
    images: [QED],
    compareImages: true,
  },
  { name: 'write zeroes on raw', args: r('write -P 3 0 8k', 'write -z 0 512', 'write -z 1 511', 'write -zu 4k 4k', 'read -v 0 16', 'read -P 0 4k 4k'), images: [RAW], compareImages: true },
  { name: 'write bounds', args: q('write 1M 0', 'write 1M 1', 'write 1048575 1', 'write 1048575 2', 'write 2M 1', 'write 8E 1'), images: [QED], compareImages: true },
  {
    name: 'write -s pattern file',
    args: q('write -s pat.txt 0 25', 'read -v 0 32', 'write -s pat.txt 0 4', 'read -v 0 17', 'write -s pat.txt -q 100 3', 'read -v 100 5', 'write -s nonexist 0 1', 'write -s . 0 1', 'write -s empty.txt 0 1', 'write -s pat.txt 0 0'),
    images: [QED],
    compareImages: true,
  },
  { name: 'probed raw head guard', args: [...cmds('write -s qedhead.bin 0 512', 'write -s qedhead.bin 512 512', 'write -s qedhead.bin 0 4', 'write -P 0 0 1', 'read -v 0 8'), 'img.raw'], images: [RAW], compareImages: true },

  // --- readv / writev --------------------------------------------------------------------------
  {
    name: 'readv and writev',
    args: q('writev -P 9 0 512 1k 100', 'readv -P 9 0 512 1k 100', 'readv -v 1600 10 6', 'readv -P 9 0 2k', 'writev -P 4 5000 1 2 3', 'readv -v 4990 20', 'readv -C 0 1', 'readv -q 0 1', 'writev -C 0 1', 'writev -q 0 1', 'writev -f 0 1', 'readv 0 0', 'writev 0 0', 'map'),
    images: [QED],
    compareImages: true,
  },
  {
    name: 'readv and writev errors',
    args: q('readv 0 1x', 'readv x 1', 'readv 0 3G', 'readv 0 1G 1G 1G', 'writev 2M 1', 'readv 1M 1', 'writev -x 0 1', 'readv -x 0 1', 'readv -P 0x100 0 1', 'writev -P x 0 1', 'readv 1048575 1 1'),
    images: [QED],
  },

  // --- aio -----------------------------------------------------------------------------------
  { name: 'aio write then flush', args: q('aio_write -P 1 0 4k', 'length', 'aio_flush', 'read -P 1 0 4k', 'aio_read -P 1 0 4k', 'aio_flush', 'aio_read -P 2 0 4k', 'aio_flush', 'aio_read -v 0 16', 'aio_flush'), images: [QED], compareImages: true },
  // length, info and help never run the event loop in qemu-io: the completion is reported at
  // aio_flush, after their output. (A sync read in between would race with the request.)
  { name: 'aio completion waits for the main loop', args: q('aio_write -P 5 8k 4k', 'length', 'info', 'help length', 'aio_flush', 'read -P 5 8k 4k', 'aio_read -q 0 1', 'length'), images: [QED], compareImages: true },
  { name: 'aio reported at exit', args: q('aio_write -P 6 0 512', 'length'), images: [QED], compareImages: true },
  {
    name: 'aio options and errors',
    args: q('aio_write -i 0 1', 'aio_read -i 0 1', 'aio_read 0 2M', 'aio_flush', 'aio_write 1M 1', 'aio_flush', 'aio_write -z 0 1 2', 'aio_write -u 0 1', 'aio_read 0 1x', 'aio_read x 1', 'aio_write -q 0 1', 'aio_flush', 'aio_write -C 0 1', 'aio_flush', 'aio_read -P 0x1ff 0 1', 'aio_read -x 0 1', 'aio_write -f 0 1', 'aio_flush', 'aio_read -C 0 1', 'aio_flush', 'aio_write -P 3 1000 10 20', 'aio_flush', 'aio_read -P 3 1000 30', 'aio_flush', 'aio_write -x 0 1', 'aio_write 0 3G'),
    images: [QED],
  },
  { name: 'two failing aio requests report newest first', args: q('aio_read 0 2M', 'aio_write 1M 1', 'aio_flush'), images: [QED] },
  { name: 'aio write zeroes', args: q('aio_write -z -P 1 64k 64k', 'aio_flush', 'aio_write -zu 1 10', 'aio_flush', 'map'), images: [QED], compareImages: true },

  // --- flush, discard, truncate, length, info, map, alloc ---------------------------------------
  {
    name: 'flush and discard',
    args: q('flush', 'discard 0 64k', 'discard -C 0 1', 'discard -q 0 1', 'discard 0 2M', 'discard 1M 0', 'discard 0 1x', 'discard -x 0 1', 'discard 0 1 2', 'discard 0 3G', 'discard x 1'),
    images: [QED],
  },
  {
    name: 'truncate',
    args: q('truncate 2M', 'length', 'truncate 1M', 'truncate 2M+1', 'truncate 3000', 'truncate 65T', 'truncate -m falloc 3M', 'truncate -m bogus 3M', 'truncate -m off 4M', 'length', 'truncate -m', 'truncate x', 'truncate -x 1', 'truncate 5M 1 2', 'length', 'truncate -m off x', 'map'),
    images: [QED],
    compareImages: true,
  },
  { name: 'raw truncate', args: r('truncate 2M', 'length', 'truncate 512k', 'length', 'read 600k 1', 'truncate -m falloc 1M', 'length', 'truncate -m metadata 2M', 'truncate -m full 3M', 'length', 'read -P 0 2M 1M', 'map'), images: [RAW], compareImages: true },
  { name: 'raw truncate to an unaligned size', args: r('truncate 3000', 'length', 'read 0 3001', 'read -v 2990 20', 'map'), images: [RAW], compareImages: true },
  { name: 'close and reopen drain aio', args: q('aio_write -P 1 0 4k', 'close', 'open img.qed', 'read -P 1 0 4k', 'aio_read -v 0 4', 'reopen -r', 'aio_write 0 1', 'length'), images: [QED], compareImages: true },
  { name: 'empty requests', args: q('sleep 0', 'alloc 0 0', 'read -v 0 0', 'readv -v 0 0', 'discard 0 0', 'write -z 0 0', 'aio_read 0 0', 'aio_flush'), images: [QED] },
  { name: 'length and info', args: ['-f', 'qed', ...cmds('length', 'info'), 'data.qed'], images: [QED_DATA] },
  { name: 'raw length, info, map, alloc', args: r('length', 'info', 'map', 'alloc 0 2M', 'alloc 0', 'alloc 1M'), images: [RAW] },
  { name: 'raw with data', args: ['-f', 'raw', ...cmds('map', 'alloc 4k 8k', 'read -P 0x5a 4k 8k', 'read -v 4090 12', 'write -P 0x21 5k 1k', 'read -v 5116 8'), 'data.raw'], images: [RAW_DATA], compareImages: true },
  {
    name: 'overlay over a raw backing file',
    args: [...cmds('read -P 0x5a 4k 8k', 'read -P 0 0 4k', 'map', 'alloc 0 1M', 'write -P 1 6k 1k', 'read -v 6140 10', 'map', 'alloc 0 1M', 'info', 'read -P 0 64k 64k'), 'over.qed'],
    images: [BASE, OVERLAY],
    compareImages: true,
  },
  { name: 'missing backing file', args: [...cmds('length'), 'orphan.qed'], images: [{ name: 'orphan.qed', fmt: 'qed', size: '1M', opts: ['-u', '-b', 'nobase.raw', '-F', 'raw'] }] },
  { name: 'QED header read as raw', args: ['-f', 'raw', ...cmds('length', 'read -v 0 80'), 'orphan.qed'], images: [{ name: 'orphan.qed', fmt: 'qed', size: '1M', opts: ['-u', '-b', 'nobase.raw', '-F', 'raw'] }] },
  { name: 'copy-on-read from the backing file', args: ['-C', ...cmds('read -P 0 0 4k', 'map', 'read -P 0x5a 8k 1k', 'map'), 'over.qed'], images: [BASE, OVERLAY], compareImages: true },
  { name: 'overlay opened read-only', args: ['-r', ...cmds('read -P 0x5a 4k 8k', 'write 0 1', 'map'), 'over.qed'], images: [BASE, OVERLAY] },
  {
    name: 'blkdebug error injection',
    args: [...cmds('read 0 4k', 'write -P 1 0 4k', 'read 0 4k', 'readv 0 512', 'aio_read 0 512', 'aio_flush', 'read -P 1 0 4k'), 'blkdebug:inject.cfg:img.qed'],
    images: [QED],
  },
  { name: 'map of a populated image', args: ['-f', 'qed', ...cmds('map'), 'data.qed'], images: [QED_DATA] },
  { name: 'map of an empty image', args: q('map'), images: [QED] },
  {
    name: 'alloc',
    args: ['-f', 'qed', ...cmds('alloc 0', 'alloc 64k', 'alloc 64k 1M', 'alloc 60k 8k', 'alloc 256k 64k', 'alloc 0 4M', 'alloc 4M', 'alloc 5M 1', 'alloc 100 1', 'alloc 2M 1k', 'alloc 1x', 'alloc 0 1x', 'alloc 0 0', 'alloc 8E'), 'data.qed'],
    images: [QED_DATA],
  },

  // --- a protocol node opened by the user: bounded like QEMU's BlockBackend, never grows -------
  {
    name: 'file node refuses requests past its end',
    args: ['-f', 'file', ...cmds('write -P 1 1M 4k', 'write -P 1 1020k 8k', 'read 1020k 8k', 'read 1M 1', 'read 1048577 0', 'write 1048577 0', 'read 1M 0', 'write 1M 0', 'write -P 2 1048575 1', 'write 1048575 2', 'read -v 1048570 6', 'read 1048575 2', 'write -z 1M 4k', 'write -z 1020k 8k', 'write -z 1048575 2', 'write -z 1M 0', 'discard 1M 4k', 'discard 1020k 8k', 'discard 1048575 2', 'discard 1M 0', 'writev 1020k 4k 4k', 'readv 1020k 4k 4k', 'alloc 1M', 'alloc 1020k 8k', 'map', 'length', 'truncate 2M', 'write -P 5 1M 4k', 'read -P 5 1M 4k', 'write 2M 1', 'length'), 'img.raw'],
    images: [RAW],
    compareImages: true,
  },
  {
    name: 'file node aio past its end',
    args: ['-f', 'file', ...cmds('aio_write 1M 4k', 'aio_flush', 'aio_read 1020k 8k', 'aio_flush', 'aio_write -z 1M 512', 'aio_flush', 'aio_write -P 3 1044480 4k', 'aio_flush', 'aio_read -P 3 1044480 4k', 'aio_flush', 'length'), 'img.raw'],
    images: [RAW],
    compareImages: true,
  },
  {
    name: 'file node of an unaligned size counts whole sectors',
    args: ['-f', 'file', ...cmds('length', 'read -v 999990 20', 'write -P 3 999999 2', 'read -v 999990 20', 'write 1000448 1', 'write -z 1000000 1', 'write -P 4 1000001 447', 'read 1000448 0', 'read 1000448 1', 'alloc 999936 512', 'map', 'length'), 'odd.raw'],
    images: [ODD],
    compareImages: true,
  },
  {
    name: 'file node of an unaligned size with -t none',
    args: ['-t', 'none', '-f', 'file', ...cmds('read -v 999990 20', 'write -P 3 999999 2', 'read -v 999990 20', 'write 1000448 1', 'aio_write -P 4 1000000 448', 'aio_flush', 'read -v 999996 8', 'length'), 'odd.raw'],
    images: [ODD],
    compareImages: true,
  },
  {
    name: 'filter node opened as the image refuses requests past its end',
    args: ['-f', 'blkdebug', ...cmds('write 1M 1', 'read 1048575 2', 'write -P 7 1048575 1', 'read -v 1048575 1', 'write -z 1M 512', 'discard 1M 512', 'length'), 'blkdebug::img.raw'],
    images: [RAW],
    compareImages: true,
  },
  { name: 'raw node refuses requests past its end', args: r('write 1M 4k', 'read 1020k 8k', 'write -z 1M 4k', 'discard 1M 4k', 'write -P 6 1048575 1', 'read 1048575 2', 'read -v 1048575 1'), images: [RAW], compareImages: true },

  // --- size parsing (cvtnum) through alloc ---------------------------------------------------
  {
    name: 'size suffixes and parse errors',
    args: r(
      ...['0', '1', '0x10', '0X10', '010', '1k', '1K', '1.5k', '0.5k', '1.5', '1b', '1B', '512b', '1m', '1g', '1t', '1p', '1e', '1E', '8E', '9E', '16E', '1x', '-1', '1kk', '0x1.5k', '1e3', '1.k', '.5k', '9223372036854775807', '9223372036854775808', '18446744073709551615', '18446744073709551616', '99999999999999999999', '0xffffffffffffffff', '1.5b', '1.25k', '+1', '0x', '0b1', 'inf', 'nan', '1.0e1', '1.2B', '2147483647', '1.05k', '4.5E', '00x1', '1.5e', '0xk', '1.e', '1.', '1.5m', '0.0k', '0.', '1.0b', '0.0001k', '0.0005k', '0.00048828125k', '0.000244140625k', '0x1k', '0x1K', '0x2m', '0x10g', '0x1t', '0x1p', '1.9999999999999999999k', '1.0000000000000001k', '2.99999999999999999999m', ' 1', '\t1', '1\t'].map((v) => `alloc ${v}`),
    ),
    images: [RAW],
  },

  // --- open / close / reopen ---------------------------------------------------------------
  {
    name: 'open and close',
    args: q('close', 'length', 'open img.qed', 'length', 'open img.qed', 'close', 'close', 'open', 'open -r img.qed', 'write 0 1', 'close', 'open -x img.qed', 'open -t bogus img.qed', 'open nonexist', 'open -o driver=raw img.qed', 'info', 'close', 'open -o driver=bogus img.qed', 'open -o bogus=1 img.qed', 'open -d bogus img.qed', 'open -i bogus img.qed', 'open -U img.qed', 'close', 'open -C -r img.qed', 'close', 'open -rU img.qed', 'length', 'open a b c', 'close', 'open -k img.qed', 'open -n -t none -d on img.qed', 'info'),
    images: [QED],
  },
  {
    name: 'open with options',
    args: ['-f', 'raw', ...cmds('close', 'open -o driver=raw img.raw', 'length', 'close', 'open -r -o driver=raw img.raw', 'write 0 1', 'close', 'open -o driver=qed img.raw'), 'img.raw'],
    images: [RAW],
  },
  { name: 'image-opts', args: ['--image-opts', ...cmds('info', 'length', 'write -P 2 0 1k', 'read -P 2 0 1k'), 'driver=qed,file.filename=img.qed'], images: [QED], compareImages: true },
  { name: 'image-opts without a driver', args: ['--image-opts', ...cmds('length'), 'img.qed'], images: [QED] },
  { name: 'image-opts and open', args: ['--image-opts', ...cmds('open -o driver=raw img.qed', 'open driver=raw,file.filename=img.qed', 'info', 'close', 'open driver=qed,file.driver=file,file.filename=img.qed', 'info')], images: [QED] },
  {
    name: 'open without a path',
    args: cmds('open -o driver=qed', 'open -o driver=raw', 'open -r', 'open -o file.filename=img.qed', 'info', 'close', 'open -o filename=img.qed', 'info', 'close', 'open -o driver=qed,file.filename=img.qed', 'info'),
    images: [QED],
  },
  {
    name: 'open option strings',
    args: cmds('open -o foo img.qed', 'open -o driver=qed,,x img.qed', 'open -o a=b,c img.qed', 'open -o =b img.qed', 'open -o nofoo img.qed', 'open -o driver=qed -o bar=1 img.qed', 'open -o driver=qed,cache.no-flush=on img.qed', 'info'),
    images: [QED],
  },
  {
    name: 'QED with 4 KiB clusters',
    args: ['-f', 'qed', ...cmds('info', 'write -P 1 4k 4k', 'write -z 16k 8k', 'map', 'alloc 0 64k', 'read -P 0 0 4k', 'truncate 3M', 'length'), 'small.qed'],
    images: [{ name: 'small.qed', fmt: 'qed', size: '2M', opts: ['-o', 'cluster_size=4096,table_size=2'] }],
    compareImages: true,
  },
  { name: 'altname option errors', args: q('r -x 0 1', 'w -x 0 1', 'alloc 100 1000', 'q -x'), images: [QED] },
  {
    name: 'reopen',
    args: q('reopen -r', 'write 0 1', 'read 0 1', 'reopen -w', 'write 0 1', 'reopen -r -w', 'reopen -c bogus', 'reopen -c none', 'reopen -c writeback', 'reopen -o cache.direct=on -c none', 'reopen -o foo=bar', 'reopen -c unsafe', 'reopen -o read-only=on -r', 'reopen -x', 'reopen 1', 'write 0 1', 'map'),
    images: [QED],
    compareImages: true,
  },
  { name: 'reopen read-write from -r', args: ['-r', ...q('write 0 1', 'reopen -w', 'write -P 4 0 1', 'read -P 4 0 1')], images: [QED], compareImages: true },

  // --- sleep, sigraise, blkdebug ---------------------------------------------------------------
  { name: 'sleep', args: q('sleep 10', 'sleep -1', 'sleep 1x', 'sleep 0x10', 'sleep 1k', 'sleep 010', 'sleep 08', 'length'), images: [QED] },
  { name: 'sigraise errors', args: q('sigraise 99', 'sigraise 66', 'sigraise x', 'sigraise 0', 'length'), images: [QED] },
  { name: 'breakpoints without blkdebug', args: q('break write_aio A', 'resume A', 'remove_break A'), images: [QED] },
  {
    name: 'blkdebug breakpoints',
    args: [...cmds('break write_aio A', 'aio_write -P 3 0 4k', 'wait_break A', 'resume A', 'aio_flush', 'read -P 3 0 4k', 'break bogus B', 'resume Z', 'remove_break Z', 'break l2_update C', 'remove_break C', 'write -P 4 64k 4k', 'read -P 4 64k 4k'), 'blkdebug::img.qed'],
    images: [QED],
    compareImages: true,
  },

  // --- commands from stdin ---------------------------------------------------------------------
  { name: 'stdin commands', args: ['img.qed'], stdin: 'length\nread 0 1\nbogus\n\nread 0 1x\nlength', images: [QED] },
  { name: 'stdin quit', args: ['img.qed'], stdin: 'length\nquit\nlength\n', images: [QED] },
  { name: 'stdin carriage return and tab', args: ['img.qed'], stdin: 'length\r\nread 0 1\t\nwrite -P 1 0 1\n', images: [QED] },
  { name: 'stdin without a file', args: [], stdin: 'length\nopen img.qed\nlength\nclose\n', images: [QED] },
  { name: 'stdin long line', args: ['img.qed'], stdin: `${'length '.repeat(200)}\nlength\n`, images: [QED] },
  { name: 'stdin aio', args: ['img.qed'], stdin: 'aio_write -P 2 0 4k\nlength\naio_flush\nread -P 2 0 4k\n', images: [QED], compareImages: true },

  // --- stdio buffering: more than one 4 KiB block with stderr in between --------------------
  // (Statistics lines vary in length with the timing, so only fixed-size text goes before
  // the later errors: the 4 KiB flush points must fall on the same byte.)
  { name: 'stdout blocks around stderr', args: q('bogus', 'help', 'nope', 'help', 'help', 'no file', 'help read', 'x y', 'map', 'help', 'z', 'length'), images: [QED] },
  { name: 'large dump', args: q('bogus', 'read -v 0 8k', 'length'), images: [QED] },
];

describeParity('blk-io parity with qemu-io 7.2', qemu?.qemuIo ?? null, sessions, {
  files: {
    'pat.txt': 'abcdefghijABCDEFGHIJ0123456789 !"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~\x01\x7f\xff',
    'empty.txt': '',
    'inject.cfg': '[inject-error]\nevent = "read_aio"\nerrno = "5"\n',
    'qedhead.bin': Buffer.concat([Buffer.from('QED\0', 'latin1'), Buffer.alloc(508)]),
  },
});

export const PARITY_SESSIONS = sessions;
