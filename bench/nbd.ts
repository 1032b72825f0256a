// NBD throughput: the same image served read-only by qemu-nbd and by blk-nbd, copied out by
// nbdcopy (to null:, so the client's disk does not count), by `qemu-img convert -O raw` and by
// `blk-img convert -O raw` (our client driver).
// Each copy runs RUNS times against a fresh server; the medians and blk-nbd / qemu-nbd ratios
// are printed as a markdown table. Needs `npm run build` (bin/blk-nbd.js over dist/).
//
//   npx tsx bench/nbd.ts [size-MiB] [runs]
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fmtSeconds, measure, median, REPO, run } from './lib.js';

const SIZE_MIB = Number(process.argv[2] ?? 256);
const RUNS = Number(process.argv[3] ?? 3);
const BLK_NBD = join(REPO, 'bin', 'blk-nbd.js');

async function waitForSocket(path: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!existsSync(path)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`server did not listen on ${path}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function withServer<T>(cmd: string[], sock: string, fn: () => T): Promise<T> {
  const child = spawn(cmd[0], cmd.slice(1), { stdio: 'ignore' });
  try {
    await waitForSocket(sock, child);
    // A probe connection must not count as the client: -t keeps the server up anyway.
    await new Promise((r) => setTimeout(r, 200));
    return fn();
  } finally {
    const exited = new Promise((r) => child.once('exit', r));
    if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGTERM');
    await exited;
  }
}

async function main(): Promise<void> {
  if (!existsSync(join(REPO, 'dist', 'src', 'tools', 'nbd', 'nbd.js'))) throw new Error('build first: npm run build');
  const tmp = mkdtempSync(join(os.tmpdir(), 'bench-nbd-'));
  try {
    const img = join(tmp, 'src.raw');
    // Three quarters data in 1 MiB runs, one quarter holes: both kinds of chunk go over the wire.
    run(['qemu-img', 'create', '-q', '-f', 'raw', img, `${SIZE_MIB}M`]);
    const cmds: string[] = [];
    for (let m = 0; m < SIZE_MIB; m++) if (m % 4 !== 3) cmds.push('-c', `write -P ${(m % 250) + 1} ${m}M 1M`);
    run(['qemu-io', '-f', 'raw', ...cmds, img]);

    const servers: Record<string, (sock: string) => string[]> = {
      'qemu-nbd': (sock) => ['qemu-nbd', '-r', '-t', '-f', 'raw', '-k', sock, img],
      'blk-nbd': (sock) => [process.execPath, BLK_NBD, '-r', '-t', '-f', 'raw', '-k', sock, img],
    };
    const clients: Record<string, (uri: string) => string[]> = {
      'nbdcopy to null:': (uri) => ['nbdcopy', uri, 'null:'],
      'qemu-img convert -O raw': (uri) => ['qemu-img', 'convert', '-O', 'raw', uri, join(tmp, 'out.raw')],
      // Our client driver on the other end.
      'blk-img convert -O raw': (uri) => [process.execPath, join(REPO, 'bin', 'blk-img.js'), 'convert', '-O', 'raw', uri, join(tmp, 'out.raw')],
    };
    const results: Record<string, Record<string, number>> = {};
    for (const [client, clientCmd] of Object.entries(clients)) {
      results[client] = {};
      for (const [server, serverCmd] of Object.entries(servers)) {
        const times: number[] = [];
        for (let i = 0; i < RUNS; i++) {
          const sock = join(tmp, `${server}.sock`);
          const t = await withServer(serverCmd(sock), sock, () => measure(clientCmd(`nbd+unix:///?socket=${sock}`), tmp).wall);
          times.push(t);
          rmSync(join(tmp, 'out.raw'), { force: true });
        }
        results[client][server] = median(times);
      }
    }
    console.log(`NBD copy of a ${SIZE_MIB} MiB raw image (3/4 data), median of ${RUNS} runs, ${os.cpus().length} CPUs\n`);
    console.log('| client | qemu-nbd | blk-nbd | blk-nbd / qemu-nbd |');
    console.log('|---|---|---|---|');
    for (const [client, r] of Object.entries(results)) {
      const ratio = r['blk-nbd'] / r['qemu-nbd'];
      console.log(`| ${client} | ${fmtSeconds(r['qemu-nbd'])} | ${fmtSeconds(r['blk-nbd'])} | ${ratio.toFixed(2)} |`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
