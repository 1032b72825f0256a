// Parity with qemu-io 7.2 for blkdebug's ways in: a plain image name under -f blkdebug (no
// `blkdebug:` prefix), the config= option of open -o, the wording of config errors (qemu-io
// prints the bare message, with no file name or line), and the events raw announces on it.
import { requireQemu } from './qemu.js';
import { cmds, describeParity, type ImageSpec, type Session } from './io-parity-harness.js';

const qemu = requireQemu();

const RAW: ImageSpec = { name: 'img.raw', fmt: 'raw', size: '1M', setup: ['write -P 0x5a 0 4k'] };

/** Bad rule files: each is opened as blkdebug:NAME:img.raw and must fail as QEMU's does. */
const BAD_CONFIGS: Record<string, string> = {
  'missing-event.cfg': '[inject-error]\nerrno = "5"\n',
  'unknown-event.cfg': '[inject-error]\nevent = "nosuch"\n',
  'bad-errno.cfg': '[inject-error]\nevent = "read_aio"\nerrno = "abc"\n',
  'unknown-group.cfg': '[foo]\nevent = "read_aio"\n',
  'unknown-key.cfg': '[inject-error]\nevent = "read_aio"\nbogus = "1"\n',
  'no-group.cfg': 'garbage\n',
  'bad-sector.cfg': '[inject-error]\nevent = "read_aio"\nsector = "x"\n',
  'bad-iotype.cfg': '[inject-error]\nevent = "read_aio"\niotype = "foo"\n',
  'bad-bool.cfg': '[inject-error]\nevent = "read_aio"\nonce = "maybe"\n',
  'unquoted.cfg': '[inject-error]\nevent = read_aio\n',
  'no-blanks.cfg': '[inject-error]\nevent="read_aio"\n',
  'indented-comment.cfg': '  # comment\n[inject-error]\nevent = "read_aio"\n',
  'bad-id.cfg': '[inject-error "1x"]\nevent = "read_aio"\n',
  'duplicate-id.cfg': '[inject-error "a"]\nevent = "read_aio"\n[inject-error "a"]\nevent = "read_aio"\n',
  'set-state-first.cfg': '[set-state]\nnew_state = "2"\n[inject-error]\nevent = "nosuch"\n',
  'parse-before-rules.cfg': '[inject-error]\nevent = "nosuch"\n[inject-error]\nerrno = "x"\n',
  'open-bracket.cfg': '[foo\nevent = "x"\n',
  // QEMU 7.2 has no dotted spellings of event names any more.
  'dotted-event.cfg': '[inject-error]\nevent = "l2_alloc.write"\n',
  // Numbers are read as u64 (a sign allowed); only a magnitude past 64 bits is refused.
  'huge-errno.cfg': '[inject-error]\nevent = "read_aio"\nerrno = "-18446744073709551616"\n',
  'huge-sector.cfg': '[inject-error]\nevent = "read_aio"\nsector = "0x10000000000000000"\n',
  'huge-state.cfg': '[set-state]\nevent = "read_aio"\nnew_state = "99999999999999999999999"\n',
  'blank-after-sign.cfg': '[inject-error]\nevent = "read_aio"\nerrno = "- 5"\n',
};

/** Rule files with numbers QEMU wraps or has no errno name for: raw over blkdebug:NAME:img.raw. */
const NUMBER_CONFIGS: Record<string, string> = {
  // Any errno is injected; the failure reports its strerror().
  'errno-8.cfg': '[inject-error]\nevent = "read_aio"\nerrno = "8"\n',
  'errno-4000.cfg': '[inject-error]\nevent = "write_aio"\nerrno = "4000"\n',
  'errno-133.cfg': '[inject-error]\nevent = "read_aio"\nerrno = "133"\n',
  // A negative errno: the request "succeeds" without any I/O (no write lands, a read leaves
  // the buffer as qemu-io filled it).
  'errno-neg-write.cfg': '[inject-error]\nevent = "write_aio"\nerrno = "-5"\n',
  'errno-neg-read.cfg': '[inject-error]\nevent = "read_aio"\nerrno = " -0x5"\nonce = "on"\n',
  // errno is a C int: the low 32 bits of the u64 (4294967301 is 5, -18446744073709551615 is 1).
  'errno-wrap.cfg': '[inject-error]\nevent = "read_aio"\nerrno = "4294967301"\n',
  'errno-wrap-neg.cfg': '[inject-error]\nevent = "write_aio"\nerrno = "-18446744073709551615"\n',
  // sector -1 (or 2^64-1) is any offset; other negative sectors never match; sector*512 wraps.
  'sector-neg1.cfg': '[inject-error]\nevent = "read_aio"\nsector = "-1"\n',
  'sector-u64max.cfg': '[inject-error]\nevent = "read_aio"\nsector = "18446744073709551615"\n',
  'sector-neg2.cfg': '[inject-error]\nevent = "read_aio"\nsector = "-2"\n',
  'sector-wrap.cfg': '[inject-error]\nevent = "read_aio"\nsector = "36028797018963969"\n',
  // state and new_state are C ints too: -1 and 2^32+2 (= 2) are reachable states.
  'state-neg.cfg': '[set-state]\nevent = "write_aio"\nnew_state = "-1"\n[inject-error]\nevent = "read_aio"\nstate = "-1"\n',
  'state-wrap.cfg': '[set-state]\nevent = "write_aio"\nnew_state = "4294967298"\n[inject-error]\nevent = "read_aio"\nstate = "2"\n',
};

const sessions: Session[] = [
  {
    name: '-f blkdebug with a plain image name',
    args: ['-f', 'blkdebug', ...cmds('read -P 0x5a 0 4k', 'write -P 3 4k 512', 'read -P 3 4k 512', 'length', 'map'), 'img.raw'],
    images: [RAW],
    compareImages: true,
  },
  // info names a protocol driver twice (format and protocol name) and has no cluster size.
  { name: 'info of a filter and of a protocol node', args: [...cmds('info', 'close', 'open -o driver=file img.raw', 'info'), '-f', 'blkdebug', 'img.raw'], images: [RAW] },
  { name: '-f file info', args: ['-f', 'file', ...cmds('info'), 'img.raw'], images: [RAW] },
  { name: '-f blkdebug with a file: name', args: ['-f', 'blkdebug', ...cmds('read -P 0x5a 0 4k', 'length'), 'file:img.raw'], images: [RAW] },
  { name: '-f blkdebug with a missing image', args: ['-f', 'blkdebug', ...cmds('read 0 512'), 'nonexist.raw'] },
  { name: '-f blkdebug read-only', args: ['-r', '-f', 'blkdebug', ...cmds('write 0 512', 'read -P 0x5a 0 512'), 'img.raw'], images: [RAW] },
  {
    name: 'open -o driver=blkdebug with config=',
    args: cmds(
      'open -o driver=blkdebug img.raw',
      'read -P 0x5a 0 512',
      'close',
      'open -o driver=blkdebug,config=rules.cfg img.raw',
      'read -P 0x5a 0 512',
      'close',
      'open -o driver=blkdebug,config=rules.cfg blkdebug::img.raw',
      'close',
      'open -o driver=blkdebug,config=nonexist.cfg img.raw',
      'open -o driver=blkdebug,config= img.raw',
      // A config in the filename wins over the option.
      'open -o driver=blkdebug,config=rules.cfg blkdebug:bad-errno.cfg:img.raw',
      'open -o driver=blkdebug,config=bad-errno.cfg blkdebug:rules.cfg:img.raw',
      'close',
      'open -o driver=blkdebug,config=missing-event.cfg img.raw',
      'open -o driver=raw,config=rules.cfg img.raw',
      'open -o driver=blkdebug,config=rules.cfg,foo=1 img.raw',
      'open -o driver=file,foo=1 img.raw',
    ),
    images: [RAW],
  },
  // raw announces read_aio / write_aio on its file, as QEMU's raw does.
  {
    name: 'raw over blkdebug: read_aio rule',
    args: ['-f', 'raw', ...cmds('read 0 512', 'aio_read 0 512', 'aio_flush', 'readv 0 512', 'write -P 1 0 512', 'read -P 1 0 512'), 'blkdebug:read.cfg:img.raw'],
    images: [RAW],
    compareImages: true,
  },
  {
    name: 'raw over blkdebug: write_aio rule, probed raw (guarded head) and past it',
    args: [...cmds('write -P 1 0 512', 'write -P 1 64k 512', 'read -P 0x5a 0 512', 'aio_write 8k 512', 'aio_flush'), 'blkdebug:write.cfg:img.raw'],
    images: [RAW],
    compareImages: true,
  },
  // break parses event names as the rule files do: the dotted spelling is unknown.
  { name: 'break with a dotted event name', args: ['-f', 'raw', ...cmds('break l2_alloc.write a', 'break read_aio b', 'remove_break b', 'remove_break a'), 'blkdebug:rules.cfg:img.raw'], images: [RAW] },
  ...Object.keys(NUMBER_CONFIGS).map(
    (name): Session => ({
      name: `config numbers: ${name}`,
      args: [
        '-f',
        'raw',
        ...cmds('read -P 0x5a 0 512', 'read -v 512 16', 'write -P 7 0 512', 'read -P 7 0 512', 'read -P 0x5a 512 512', 'aio_write -P 8 1k 512', 'aio_flush', 'read -v 1k 16'),
        `blkdebug:${name}:img.raw`,
      ],
      images: [RAW],
      compareImages: true,
    }),
  ),
  ...Object.keys(BAD_CONFIGS).map(
    (name): Session => ({ name: `config error: ${name}`, args: ['-f', 'raw', ...cmds('read 0 512'), `blkdebug:${name}:img.raw`], images: [RAW] }),
  ),
];

describeParity('blk-io parity with qemu-io 7.2: blkdebug names, config option and config errors', qemu?.qemuIo ?? null, sessions, {
  files: {
    // Rules that no request here triggers (a filter opened as the image has no format above
    // it to announce events): only whether the file parses matters.
    'rules.cfg': '[inject-error]\nevent = "l2_update"\nerrno = "5"\n',
    'read.cfg': '[inject-error]\nevent = "read_aio"\nerrno = "5"\nonce = "on"\n',
    'write.cfg': '[inject-error]\nevent = "write_aio"\nerrno = "28"\n',
    ...BAD_CONFIGS,
    ...NUMBER_CONFIGS,
  },
});
