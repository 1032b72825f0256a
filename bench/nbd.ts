// NBD throughput: the same image served read-only by qemu-nbd and by blk-nbd, copied out by
// nbdcopy (to null:, so the client's disk does not count), by `qemu-img convert -O raw` and by
// `blk-img convert -O raw` (our client driver); `npm run bench` has the same copies as its
// rows 13.x. Each copy runs RUNS times against a fresh server; the medians and blk-nbd /
// qemu-nbd ratios are printed as a markdown table. Needs `npm run build` (bin/blk-nbd.js).
//
//   npx tsx bench/nbd.ts [size-MiB] [runs]
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fmtSeconds, measure, median, REPO } from './lib.js';
import { makeNbdSource, nbdServerCommand, nbdUri, withNbdServer, type NbdServerName } from './nbd-server.js';

const SIZE_MIB = Number(process.argv[2] ?? 256);
const RUNS = Number(process.argv[3] ?? 3);

async function main(): Promise<void> {
  if (!existsSync(join(REPO, 'dist', 'src', 'tools', 'nbd', 'nbd.js'))) throw new Error('build first: npm run build');
  const tmp = mkdtempSync(join(os.tmpdir(), 'bench-nbd-'));
  try {
    const img = join(tmp, 'src.raw');
    // Three quarters data in 1 MiB runs, one quarter holes: both kinds of chunk go over the wire.
    makeNbdSource(img, SIZE_MIB);
    const servers: NbdServerName[] = ['qemu-nbd', 'blk-nbd'];
    const clients: Record<string, (uri: string) => string[]> = {
      'nbdcopy to null:': (uri) => ['nbdcopy', uri, 'null:'],
      'qemu-img convert -O raw': (uri) => ['qemu-img', 'convert', '-O', 'raw', uri, join(tmp, 'out.raw')],
      // Our client driver on the other end.
      'blk-img convert -O raw': (uri) => [process.execPath, join(REPO, 'bin', 'blk-img.js'), 'convert', '-O', 'raw', uri, join(tmp, 'out.raw')],
    };
    const results: Record<string, Record<string, number>> = {};
    for (const [client, clientCmd] of Object.entries(clients)) {
      results[client] = {};
      for (const server of servers) {
        const times: number[] = [];
        for (let i = 0; i < RUNS; i++) {
          const sock = join(tmp, `${server}.sock`);
          const t = await withNbdServer(nbdServerCommand(server, img, sock), sock, () => measure(clientCmd(nbdUri(sock)), tmp).wall);
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
