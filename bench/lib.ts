// Helpers of the benchmark scripts: running a tool as a child process and measuring it,
// statistics, machine description. Both tools always run as child processes so that the
// comparison is fair (process start, image open and close are the same kind of work).
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';

export const REPO = join(import.meta.dirname, '..');
export const TIME_BIN = '/usr/bin/time';

export interface Measured {
  /** Seconds the tool reported ("Run completed in X seconds."), or null for tools without. */
  reported: number | null;
  /** Wall-clock seconds of the whole child process (start, open, run, close, exit). */
  wall: number;
  /** Peak resident set size in KiB (GNU time %M), or null when /usr/bin/time is missing. */
  maxRssKiB: number | null;
  /**
   * CPU seconds of the child, user + system (GNU time %U %S), or null without /usr/bin/time:
   * a loaded machine disturbs it far less than the wall time.
   */
  cpu?: number | null;
  stdout: string;
  stderr: string;
}

export class CommandFailed extends Error {
  constructor(
    readonly cmd: string[],
    readonly status: number | null,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(`${cmd.join(' ')} exited with ${status}: ${stderr.trim() || stdout.trim()}`);
  }
}

/** Run a command to completion; throws CommandFailed on a non-zero exit. */
export function run(
  cmd: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): { stdout: string; stderr: string } {
  const r = spawnSync(cmd[0], cmd.slice(1), {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    timeout: opts.timeoutMs,
    killSignal: 'SIGKILL',
  });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new CommandFailed(cmd, r.status, r.stdout, r.stderr);
  return { stdout: r.stdout, stderr: r.stderr };
}

/** No measured command may run longer than this (a hung tool fails its row, not the session). */
const MEASURE_TIMEOUT_MS = 600_000;

const RUN_LINE = /Run completed in (\d+\.\d+) seconds\./;

/**
 * Run one measured command. With GNU time present, it wraps the child and writes the peak RSS
 * to a side file (so the tool's own stderr stays untouched).
 */
export function measure(cmd: string[], tmp: string, env?: NodeJS.ProcessEnv): Measured {
  const haveTime = existsSync(TIME_BIN);
  const timeFile = join(tmp, `.time-${process.pid}`);
  const full = haveTime ? [TIME_BIN, '-f', '%M %U %S', '-o', timeFile, ...cmd] : cmd;
  const t0 = process.hrtime.bigint();
  const { stdout, stderr } = run(full, { env, timeoutMs: MEASURE_TIMEOUT_MS });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  let maxRssKiB: number | null = null;
  let cpu: number | null = null;
  if (haveTime) {
    const [rss, user, sys] = (readFileSync(timeFile, 'utf8').trim().split('\n').pop() ?? '').split(' ').map(Number);
    maxRssKiB = Number.isFinite(rss) ? rss : null;
    cpu = Number.isFinite(user) && Number.isFinite(sys) ? user + sys : null;
    rmSync(timeFile, { force: true });
  }
  const m = RUN_LINE.exec(stdout);
  return { reported: m ? Number(m[1]) : null, wall, maxRssKiB, cpu, stdout, stderr };
}

/** Whether two files hold the same bytes (read in chunks: outputs of a GiB and more). */
export function sameBytes(a: string, b: string): boolean {
  if (statSync(a).size !== statSync(b).size) return false;
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    const ba = Buffer.alloc(4 << 20);
    const bb = Buffer.alloc(4 << 20);
    for (;;) {
      const na = readSync(fa, ba);
      const nb = readSync(fb, bb);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      if (na === 0) return true;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export interface Machine {
  nproc: number;
  model: string;
  memGiB: number;
  node: string;
  qemuImg: string;
  loadavg: string;
  uvThreadpool: string;
}

export function describeMachine(qemuImg: string, uvThreadpool: string | undefined): Machine {
  let model = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) model = m[1];
  } catch {
    // Not Linux: os.cpus() is the best we have.
  }
  let qemuVersion = 'not installed';
  try {
    qemuVersion = run([qemuImg, '--version']).stdout.split('\n')[0];
  } catch {
    // Reported as missing in the table header.
  }
  return {
    nproc: os.availableParallelism(),
    model,
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    qemuImg: qemuVersion,
    loadavg: os.loadavg().map((x) => x.toFixed(2)).join(' '),
    uvThreadpool: uvThreadpool ?? launcherThreadpoolDefault(),
  };
}

/** What bin/blk-img.js sets UV_THREADPOOL_SIZE to when the environment leaves it unset. */
function launcherThreadpoolDefault(): string {
  try {
    const m = /UV_THREADPOOL_SIZE\s*=\s*'(\d+)'/.exec(readFileSync(join(REPO, 'bin/blk-img.js'), 'utf8'));
    if (m) return `${m[1]} (bin/blk-img.js default)`;
  } catch {
    // No launcher: libuv's own default.
  }
  return "libuv's default (4)";
}

export function fmtSeconds(s: number): string {
  if (!Number.isFinite(s)) return 'n/a';
  return s < 10 ? s.toFixed(3) : s.toFixed(2);
}

export function fmtMiB(kib: number | null): string {
  return kib === null ? 'n/a' : `${(kib / 1024).toFixed(1)} MiB`;
}

// ---------------------------------------------------------------------------------------------
// How to run our side

/** The blk-img launcher (imports dist/src/tools/img/main.js and runs its main). */
export const BLK_IMG = join(REPO, 'bin/blk-img.js');
const BENCH_JS = join(REPO, 'dist/src/tools/img/bench.js');

/**
 * Our command lines: the real CLI (bin/blk-img.js over dist/) when it dispatches `bench`,
 * otherwise a one-line launcher of the compiled imgBench (before the blk-img entry point existed).
 * `nodeFlags` go before the script (e.g. --cpu-prof).
 */
export interface Ours {
  bench(nodeFlags?: string[]): string[];
  convert: ((nodeFlags?: string[]) => string[]) | null;
  /** blk-img itself, the subcommand to follow (null where the launcher is not there yet). */
  img: ((nodeFlags?: string[]) => string[]) | null;
  note: string;
}

export function findOurs(tmp: string, qemuImg: string): Ours {
  const probeImg = join(tmp, 'probe.raw');
  run([qemuImg, 'create', '-q', '-f', 'raw', probeImg, '1M']);
  try {
    if (existsSync(BLK_IMG)) {
      let dispatches = false;
      try {
        dispatches = run([process.execPath, BLK_IMG, 'bench', '-c', '0', '-f', 'raw', probeImg]).stdout.startsWith('Sending 0 read requests');
      } catch {
        // Not dispatched (yet): the launcher below.
      }
      if (dispatches) {
        let convert: Ours['convert'] = (flags = []) => [process.execPath, ...flags, BLK_IMG, 'convert'];
        let note = '';
        const dst = join(tmp, 'probe.qed');
        try {
          run([...convert(), '-f', 'raw', '-O', 'qed', probeImg, dst]);
          run([qemuImg, 'check', '-q', dst]);
        } catch (e) {
          convert = null;
          note = `blk-img convert did not work (${e instanceof Error ? e.message.split('\n')[0] : String(e)}): workload 7 skipped.`;
        }
        rmSync(dst, { force: true });
        return {
          bench: (flags = []) => [process.execPath, ...flags, BLK_IMG, 'bench'],
          convert,
          img: (flags = []) => [process.execPath, ...flags, BLK_IMG],
          note,
        };
      }
    }
  } finally {
    rmSync(probeImg, { force: true });
  }
  if (!existsSync(BENCH_JS)) throw new Error(`${BENCH_JS} is missing: build first (npm run build)`);
  const launcher =
    `import { imgBench } from ${JSON.stringify(BENCH_JS)};` +
    'process.exitCode = await imgBench(process.argv.slice(1), ' +
    '{ stdout: (s) => process.stdout.write(s), stderr: (s) => process.stderr.write(s) }, "blk-img");';
  return {
    bench: (flags = []) => [process.execPath, ...flags, '--input-type=module', '-e', launcher, '--'],
    convert: null,
    img: null,
    note:
      'bin/blk-img.js did not dispatch `bench` yet: our side ran through a launcher of ' +
      'dist/src/tools/img/bench.js; blk-img convert unavailable, workload 7 skipped.',
  };
}
