// blk-io against qemu-io 7.2 in each cache mode, seen through blkdebug rules on the flush
// events. In qemu-io's default (writethrough) and directsync every write carries FUA, which
// neither raw, QED nor the file protocol support natively: the generic layer flushes the node
// after each write, and that flush announces flush_to_os (and flush_to_disk when earlier writes
// went through the node) on blkdebug. writeback and none flush only when asked; unsafe
// announces flush_to_os but never flush_to_disk. A rule armed by those events fails the next
// request, so where the error shows up tells which flushes ran. Also reopen -c, which changes
// the mode of the same nodes (armed rules survive) after flushing them.
import { join } from 'node:path';
import { expect } from 'vitest';
import { requireQemu, runQemuImg } from './qemu.js';
import { cmds, describeParity, type ImageSpec, type Session } from './io-parity-harness.js';

const qemu = requireQemu();

const RAW: ImageSpec = { name: 'img.raw', fmt: 'raw', size: '1M' };
const QED: ImageSpec = { name: 'img.qed', fmt: 'qed', size: '1M', opts: ['-o', 'cluster_size=4096'] };

/** The rule files: an error armed by one flush event, failing the next request once. */
const RULES: Record<string, string> = {
  'disk.cfg': '[inject-error]\nevent = "flush_to_disk"\nerrno = "5"\nonce = "on"\n',
  'os.cfg': '[inject-error]\nevent = "flush_to_os"\nerrno = "5"\nonce = "on"\n',
};

const MODES: { name: string; opts: string[] }[] = [
  { name: 'default (writethrough)', opts: [] },
  { name: '-t writethrough', opts: ['-t', 'writethrough'] },
  { name: '-t writeback', opts: ['-t', 'writeback'] },
  { name: '-t unsafe', opts: ['-t', 'unsafe'] },
  { name: '-t none', opts: ['-t', 'none'] },
  { name: '-t directsync', opts: ['-t', 'directsync'] },
  { name: '-n', opts: ['-n'] },
];

/** Every kind of write blk-io issues, with reads and flushes in between to show the errors. */
const RAW_WORK = [
  'write -P 1 0 4k',
  'write -P 2 4k 4k',
  'read -P 1 0 4k',
  'write -z 8k 4k',
  'flush',
  'read -P 2 4k 4k',
  'aio_write -P 5 12k 4k',
  'aio_flush',
  'writev -P 6 16k 4k 4k',
  'write -z 100 5000',
  'write -z -u 64k 64k',
  'write -f -P 7 128k 512',
  'read -P 6 16k 8k',
];

const raw = (cfg: string, opts: string[], list: string[]): string[] => [...opts, '-f', 'raw', ...cmds(...list), `blkdebug:${cfg}:img.raw`];
const qed = (cfg: string, opts: string[], list: string[]): string[] => [...opts, '-f', 'qed', ...cmds(...list), `blkdebug:${cfg}:img.qed`];

const sessions: (Session & { check?: boolean })[] = [];
for (const m of MODES) {
  for (const cfg of Object.keys(RULES)) {
    sessions.push({ name: `raw, ${m.name}, rule on ${cfg}`, args: raw(cfg, m.opts, RAW_WORK), images: [RAW], compareImages: true });
  }
  // QED allocates (data, L2, L1 writes and the flush after a new L2) below the FUA flushes.
  sessions.push({
    name: `qed, ${m.name}, rule on flush_to_disk`,
    args: qed('disk.cfg', m.opts, ['write -P 1 0 4k', 'write -P 2 4k 4k', 'read -P 1 0 4k', 'write -P 3 64k 4k', 'flush', 'read -P 2 4k 4k', 'writev -P 4 8k 512 512', 'aio_write -P 5 12k 4k', 'aio_flush', 'write -z 16k 4k', 'read -P 5 12k 4k']),
    images: [QED],
    compareImages: true,
    check: true,
  });
}
sessions.push(
  {
    name: 'reopen -c keeps the nodes: an armed rule survives, the new mode applies',
    args: raw('disk.cfg', [], ['write -P 1 0 4k', 'reopen -c writeback', 'write -P 2 4k 4k', 'write -P 3 8k 4k', 'reopen -w', 'write -P 4 0 4k', 'reopen -c writethrough', 'write 0 4k', 'write 0 4k', 'read -P 3 8k 4k']),
    images: [RAW],
    compareImages: true,
  },
  {
    name: 'reopen flushes first: a failed flush is reported and the reopen refused',
    args: raw('disk.cfg', ['-t', 'writeback'], ['write -P 1 0 4k', 'reopen -r', 'reopen -w', 'write -P 2 4k 4k', 'write -P 3 8k 4k', 'reopen -c directsync', 'write -P 4 0 4k', 'write 0 4k', 'read -P 2 4k 4k']),
    images: [RAW],
    compareImages: true,
  },
  {
    name: 'reopen -c unsafe and back',
    args: raw('disk.cfg', [], ['write -P 1 0 4k', 'reopen -c unsafe', 'write -P 2 4k 4k', 'flush', 'write -P 3 8k 4k', 'reopen -c writeback', 'write 0 4k', 'flush', 'read -P 2 4k 4k']),
    images: [RAW],
    compareImages: true,
  },
  {
    name: 'reopen -o cache.no-flush / cache.direct',
    args: raw('os.cfg', [], ['write -P 1 0 4k', 'reopen -o cache.no-flush=on', 'write -P 2 4k 4k', 'flush', 'reopen -o cache.direct=on', 'write 0 4k', 'flush', 'read -P 2 4k 4k']),
    images: [RAW],
    compareImages: true,
  },
  {
    name: 'open -t / -n / default in one session',
    args: cmds('open -t writeback -f raw blkdebug:disk.cfg:img.raw', 'write 0 4k', 'write 0 4k', 'write 0 4k', 'close', 'open -f raw blkdebug:disk.cfg:img.raw', 'write 0 4k', 'write 0 4k', 'write 0 4k', 'close', 'open -n -f raw blkdebug:disk.cfg:img.raw', 'write 0 4k', 'write 0 4k', 'flush', 'read 0 4k'),
    images: [RAW],
    compareImages: true,
  },
);

describeParity('blk-io cache modes: parity with qemu-io 7.2 through blkdebug flush rules', qemu?.qemuIo ?? null, sessions, {
  files: RULES,
  imagesAlways: true,
  extra: (s, _res, runner) => {
    if (s.check !== true) return;
    // What blk-io left (after errors in the middle of allocations) is a clean image.
    const c = runQemuImg(['check', '-f', 'qed', join(runner.lastCaseDir, 'img.qed')]);
    expect(c.stdout + c.stderr).toContain('No errors were found on the image.');
    expect(c.status).toBe(0);
  },
});
