// blk-io's reopen and aio_flush against qemu-io 7.2: both drain the image, which for QED runs
// the pending need-check job at once (a dirty image whose allocating writes are done is marked
// clean), and reopen keeps the nodes, so blkdebug rules armed before it still fire after it.
// The drain shows in two ways: in the NEED_CHECK bit an `abort` right after leaves on disk
// (a spawned process, as in io-parity-crash), and in where an error armed by the job's flushes
// lands (in-process sessions through blkdebug rules).
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, requireQemu, runQemuImg } from './qemu.js';
import { cmds, describeParity, type ImageSpec, type Session } from './io-parity-harness.js';

const qemu = requireQemu();

const ROOT = resolve(import.meta.dirname, '../..');
const LAUNCHER = join(ROOT, 'test/interop/io-parity-launcher.ts');
const TSX = pathToFileURL(join(ROOT, 'node_modules/tsx/dist/loader.mjs')).href;

/** Rule files: an error armed by one flush event fails the next request once. */
const RULES: Record<string, string> = {
  'disk.cfg': '[inject-error]\nevent = "flush_to_disk"\nerrno = "5"\nonce = "on"\n',
  'os.cfg': '[inject-error]\nevent = "flush_to_os"\nerrno = "5"\nonce = "on"\n',
  // After the first flush to disk, every write to the header sector fails.
  'hdr.cfg': '[set-state]\nevent = "flush_to_disk"\nstate = "1"\nnew_state = "2"\n[inject-error]\nstate = "2"\nevent = "pwritev"\nsector = "0"\nerrno = "5"\n',
};

const QED: ImageSpec = { name: 'img.qed', fmt: 'qed', size: '1M' };
const RAW: ImageSpec = { name: 'img.raw', fmt: 'raw', size: '1M' };

const qed = (cfg: string, opts: string[], list: string[]): string[] => [...opts, '-f', 'qed', ...cmds(...list), `blkdebug:${cfg}:img.qed`];
const raw = (cfg: string, opts: string[], list: string[]): string[] => [...opts, '-f', 'raw', ...cmds(...list), `blkdebug:${cfg}:img.raw`];

const WORK: { name: string; opts: string[]; list: string[] }[] = [
  {
    name: 'reopen -r then -w after an allocating write',
    opts: ['-t', 'writeback'],
    list: ['write -P 1 0 4k', 'reopen -r', 'read -P 1 0 4k', 'read -P 1 0 4k', 'write 0 1', 'reopen -w', 'write -P 2 4k 4k', 'read -P 2 4k 4k', 'read -P 2 4k 4k'],
  },
  { name: 'reopen -w on a read-write image', opts: ['-t', 'writeback'], list: ['write -P 1 0 4k', 'reopen -w', 'read -P 1 0 4k', 'read -P 1 0 4k'] },
  { name: 'aio_flush drains', opts: ['-t', 'writeback'], list: ['write -P 1 0 4k', 'aio_flush', 'read -P 1 0 4k', 'read -P 1 0 4k'] },
  {
    name: 'aio_write then reopen -r',
    opts: ['-t', 'writeback'],
    list: ['aio_write -P 3 64k 4k', 'reopen -r', 'read -P 3 64k 4k', 'read -P 3 64k 4k'],
  },
  { name: 'a refused reopen still drained', opts: [], list: ['write -P 1 0 4k', 'reopen -o foo=bar', 'read -P 1 0 4k', 'read -P 1 0 4k'] },
  { name: 'read-only conflict after -r drained', opts: [], list: ['write -P 1 0 4k', 'reopen -r -o read-only=on', 'read -P 1 0 4k', 'read -P 1 0 4k'] },
  { name: 'cache conflict, no drain', opts: [], list: ['write -P 1 0 4k', 'reopen -c none -o cache.direct=on', 'read -P 1 0 4k', 'read -P 1 0 4k'] },
  {
    name: 'cache modes in place',
    opts: [],
    list: ['write -P 1 0 4k', 'reopen -c unsafe', 'write -P 2 64k 4k', 'flush', 'reopen -c writeback', 'read -P 2 64k 4k', 'write -P 3 128k 4k', 'reopen -c none', 'read -P 3 128k 4k', 'read 0 4k'],
  },
  { name: 'read-only image made writable', opts: ['-r'], list: ['reopen -w', 'write -P 1 0 4k', 'flush', 'read -P 1 0 4k', 'reopen -r', 'write 0 1', 'read 0 1', 'read 0 1'] },
];

const sessions: Session[] = [];
for (const w of WORK) {
  for (const cfg of ['disk.cfg', 'os.cfg']) {
    sessions.push({ name: `qed, ${w.name}, rule on ${cfg}`, args: qed(cfg, w.opts, w.list), images: [QED], compareImages: true });
  }
}
sessions.push(
  {
    // The drain's need-check job cannot write the header: the bit stays, in memory and on disk.
    name: 'qed: the header write of the drain\'s job fails',
    args: qed('hdr.cfg', ['-t', 'writeback'], ['write -P 1 0 4k', 'flush', 'write -P 1 64k 4k', 'reopen -r', 'read -P 1 0 4k', 'reopen -w', 'write -P 2 4k 4k', 'aio_flush', 'read -P 2 4k 4k']),
    images: [QED],
    compareImages: true,
  },
  {
    name: 'raw: rules armed before reopen fire after it',
    args: raw('os.cfg', [], ['write -P 1 0 4k', 'reopen -r', 'read -P 1 0 4k', 'reopen -w', 'write -P 2 4k 4k', 'read -P 2 4k 4k']),
    images: [RAW],
    compareImages: true,
  },
  {
    name: 'qed without blkdebug: reopen round trips keep the data',
    args: ['-f', 'qed', ...cmds('write -P 1 0 64k', 'reopen -r', 'reopen -w', 'write -P 2 64k 64k', 'reopen -c none', 'reopen -o cache.no-flush=on', 'read -P 1 0 64k', 'read -P 2 64k 64k', 'map'), 'img.qed'],
    images: [QED],
    compareImages: true,
  },
);

// read-only=on through -o keeps the BlockBackend's write permission (taken at a read-write
// open or by a write command, given up by a reopen to read-only), which refuses the change and
// names the node: "#block" + QEMU's node counter + two random digits (masked).
const QO = (...c: string[]): string[] => ['-f', 'qed', ...cmds(...c), 'img.qed'];
sessions.push(
  {
    name: 'read-only=on refused while the write permission is held',
    args: QO('reopen -o read-only=on', 'write -P 1 0 1', 'reopen -r', 'reopen -w', 'reopen -o read-only=on', 'write 0 1', 'reopen -o read-only=off', 'write -P 2 0 1', 'reopen -o read-only=on', 'read -P 2 0 1'),
    images: [QED],
    compareImages: true,
  },
  {
    name: 'write commands take the permission, reads and flush do not',
    args: QO('reopen -r', 'reopen -w', 'read 0 1', 'flush', 'map', 'reopen -o read-only=on', 'reopen -w', 'truncate 2M', 'reopen -o read-only=on', 'reopen -r', 'reopen -w', 'aio_write 0 512', 'aio_flush', 'reopen -o read-only=on', 'reopen -r', 'reopen -w', 'write -z 0 4k', 'reopen -o read-only=on', 'reopen -r', 'reopen -w', 'discard 0 64k', 'reopen -o read-only=on'),
    images: [QED],
    compareImages: true,
  },
  {
    name: 'node names count every node opened in the run',
    args: QO('close', 'open -r img.qed', 'reopen -o read-only=on', 'close', 'open img.qed', 'reopen -o read-only=on', 'close', 'open -f raw blkdebug::img.qed', 'reopen -o read-only=on', 'close', 'open -f file img.qed', 'reopen -o read-only=on', 'close', 'open over.qed', 'reopen -o read-only=on'),
    images: [QED, { name: 'over.qed', fmt: 'qed', size: '1M', opts: ['-u', '-b', 'img.qed', '-F', 'qed'] }],
    compareImages: true,
  },
  {
    name: '-f file: the protocol node reopens its file in place',
    args: ['-f', 'file', ...cmds('reopen -r', 'write 0 1', 'reopen -w', 'write -P 3 0 1', 'read -P 3 0 1', 'reopen -o read-only=on', 'reopen -r', 'read -P 3 0 1', 'reopen -c writeback', 'map'), 'img.raw'],
    images: [RAW],
    compareImages: true,
  },
  {
    name: '-f raw -r made writable, -f blkdebug names its filter node first',
    args: ['-f', 'raw', '-r', ...cmds('reopen -w', 'write -P 4 512 512', 'reopen -c none', 'read -P 4 512 512', 'close', 'open -r -o driver=blkdebug blkdebug::img.raw', 'reopen -w', 'write -P 5 0 1', 'reopen -o read-only=on', 'read -P 5 0 1'), 'img.raw'],
    images: [RAW],
    compareImages: true,
  },
  {
    name: 'reopen -o: values checked after the drain, what names the current nodes accepted',
    args: QO(
      'write -P 1 0 4k',
      'reopen -o detect-zeroes=off',
      'reopen -o detect-zeroes=bogus',
      'reopen -o discard=unmap',
      'reopen -o discard=bogus',
      'reopen -o auto-read-only=on',
      'reopen -o auto-read-only=bogus',
      'reopen -o read-only=ON',
      'reopen -o read-only=no',
      'reopen -o cache.direct=yes',
      'reopen -o cache.no-flush=bogus',
      'reopen -o driver=qed',
      'reopen -o driver=raw',
      'reopen -o node-name=foo',
      'reopen -o file.driver=file',
      'reopen -o file.driver=raw',
      'reopen -o file.filename=img.qed',
      'reopen -o file.filename=./img.qed',
      'reopen -o file.aio=native,foo=1',
      'reopen -o foo=1,read-only=bogus',
      'reopen -o discard=bogus,detect-zeroes=bogus',
      'reopen -o driver=qed,file.filename=img.qed,file.driver=file',
      'reopen -o file.cache.direct=on',
      'reopen -o read-only=yes',
      'reopen -r',
      'reopen -o read-only=n',
      'write -P 2 4k 4k',
      'read -P 1 0 4k',
      'read -P 2 4k 4k',
    ),
    images: [QED],
    compareImages: true,
  },
  {
    name: 'a read-only image refuses writes without taking the permission',
    args: ['-r', ...QO('write 0 1', 'reopen -o read-only=on', 'reopen -o read-only=off', 'reopen -o read-only=on', 'write 0 1')],
    images: [QED],
    compareImages: true,
  },
);

/** The variants whose drain (or not) shows in the NEED_CHECK bit an abort leaves behind. */
const ABORT_CASES: string[][] = [
  ['reopen -r'],
  ['reopen'],
  ['reopen -w'],
  ['reopen -c none'],
  ['reopen -c unsafe'],
  ['reopen -o cache.no-flush=on'],
  ['reopen -o foo=bar'],
  ['reopen -r -o read-only=on'],
  ['reopen -r -w'],
  ['reopen -x'],
  ['reopen -c bogus'],
  ['reopen -c none -o cache.direct=on'],
  ['reopen -o read-only=bogus'],
  ['reopen -o discard=bogus'],
  ['reopen -o detect-zeroes=bogus'],
  ['reopen -o driver=qed,file.driver=file'],
  ['aio_flush'],
  ['flush'],
  ['aio_write -P 2 128k 64k', 'reopen -r'],
  ['reopen -r', 'reopen -w', 'write -P 3 256k 4k'],
];

/** QEMU's automatic node names end in two random digits. */
function maskNodeNames(t: string): string {
  return t.replace(/'#block(\d*)\d\d'/g, "'#block$1??'");
}

function features(path: string): bigint {
  return readFileSync(path).readBigUInt64LE(16);
}

describeParity('blk-io reopen / aio_flush drain like qemu-io 7.2', qemu?.qemuIo ?? null, sessions, {
  files: RULES,
  mask: maskNodeNames,
  imagesAlways: true,
  extra: (s, _res, runner) => {
    const img = s.images?.[0];
    if (img?.fmt !== 'qed') return;
    // Whatever an error in the middle left (leaks, not corruption), both left the same.
    const ours = runQemuImg(['check', '-f', 'qed', join(runner.lastCaseDir, img.name)]);
    const theirs = runQemuImg(['check', '-f', 'qed', join(runner.lastCaseDir, `${img.name}.qemu`)]);
    expect(ours.stdout.replaceAll('.qed.qemu', '.qed')).toBe(theirs.stdout.replaceAll('.qed.qemu', '.qed'));
    expect(ours.status).toBe(theirs.status);
    expect(features(join(runner.lastCaseDir, img.name))).toBe(features(join(runner.lastCaseDir, `${img.name}.qemu`)));
    expect([0, 3]).toContain(ours.status);
  },
});

describe.skipIf(!qemu)('blk-io reopen / aio_flush before abort like qemu-io 7.2', () => {
  let dir = '';
  beforeAll(() => {
    dir = makeTempDir('blk-io-reopen');
  });
  afterAll(() => removeTempDir(dir));

  it.each(ABORT_CASES.map((c) => [c.join(' ; '), c]))('write, %s, abort: same NEED_CHECK bit and messages', (_label, list) => {
    const fresh = join(dir, 'fresh.qed');
    expect(runQemuImg(['create', '-q', '-f', 'qed', fresh, '1M']).status).toBe(0);
    const ours = join(dir, 'ours.qed');
    const theirs = join(dir, 'theirs.qed');
    copyFileSync(fresh, ours);
    copyFileSync(fresh, theirs);
    const args = cmds('write -P 1 0 64k', ...list, 'abort');
    const b = spawnSync(process.execPath, ['--import', TSX, LAUNCHER, ...args, ours], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
    const q = spawnSync(qemu?.qemuIo ?? 'qemu-io', [...args, theirs], { cwd: dir, encoding: 'utf8', argv0: 'blk-io', timeout: 60_000 });
    expect(b.signal).toBe('SIGABRT');
    expect(q.signal).toBe('SIGABRT');
    expect(b.stderr).toBe(q.stderr);
    expect(b.stdout).toBe(q.stdout);
    expect(features(ours)).toBe(features(theirs));
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
  });
});
