// Harness of the blk-img parity suite. A session is a set-up (run with the real qemu-img /
// qemu-io in two fresh directories, so both start from identical files) and a list of
// qemu-img command lines, each run once through the real qemu-img (spawned, in the first
// directory) and once through blk-img's main() in process (in the second directory, under
// the program name "qemu-img"). stdout, stderr and the exit status are compared after masking
// host-allocation figures (disk size / actual-size), timings (bench) and generated node names, and, for commit only,
// collapsing progress meters. Commands
// marked `merged` are also compared with stdout and stderr sharing one pipe (stdio ordering).
// At the end, the images a session names are inspected with the real qemu-img in both
// directories: same map, same info, same content.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '../../src/tools/img/main.js';
import { main as blkIoMain, maskTimings } from '../../src/tools/io/main.js';
import { runQemuImg, runQemuIo } from './qemu.js';

export interface Step {
  args: string[];
  /**
   * Also compare the interleaving of stdout and stderr on one pipe. QEMU is run a second time
   * for it, so only for commands that change nothing (or fail before changing anything).
   */
  merged?: boolean;
  /** Collapse progress meters before comparing (commit's job loop prints a different count). */
  maskProgress?: boolean;
}

export interface Session {
  name: string;
  /** Set-up commands: ['qemu-img', ...] / ['qemu-io', ...] / ['sh', script], run in both directories. */
  setup?: string[][];
  steps: Array<string[] | Step>;
  /** Images whose final state is compared with the real qemu-img (map, info, content). */
  images?: string[];
  /** Run after the steps even when one throws (same form as setup). */
  teardown?: string[][];
  /** Images compared by content and check only (their host layout may legitimately differ). */
  contentOnly?: string[];
  /** Images that must also be byte-identical files (QEMU's result is deterministic). */
  identical?: string[];
}

export interface Outcome {
  stdout: string;
  stderr: string;
  status: number | null;
  merged?: string;
}

/** Mask what depends on the host's allocation and timing, collapse progress meters. */
export function mask(s: string, maskProgress = false): string {
  const m = s
    .replace(/disk size: .*/g, 'disk size: <masked>')
    .replace(/"actual-size": \d+/g, '"actual-size": <masked>')
    .replace(/Run completed in \d+\.\d+ seconds\./g, 'Run completed in <masked> seconds.')
    // Generated node names end in two random digits (QEMU's id_generate).
    .replace(/#block\d+/g, '#block<masked>');
  return maskProgress ? m.replace(/(?: {4}\(\d+\.\d\d\/100%\)\r)+/g, '<progress>') : m;
}

function runSetup(cmd: string[], cwd: string): void {
  const [tool, ...args] = cmd;
  let r;
  if (tool === 'qemu-img') r = runQemuImg(args, { cwd });
  else if (tool === 'qemu-io') r = runQemuIo(args, { cwd });
  else r = spawnSync('/bin/sh', ['-c', args.join(' ')], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`set-up ${cmd.join(' ')} failed: ${String(r.stderr)}`);
}

export function runTheirs(args: string[], cwd: string, merged: boolean, mp = false): Outcome {
  const r = runQemuImg(args, { cwd });
  const out: Outcome = { stdout: mask(r.stdout, mp), stderr: mask(r.stderr, mp), status: r.status };
  if (merged) {
    const m = spawnSync('/bin/sh', ['-c', 'exec "$@" 2>&1', 'sh', 'qemu-img', ...args], { cwd, encoding: 'utf8' });
    out.merged = mask(String(m.stdout), mp);
  }
  return out;
}

/**
 * Send what drivers print with console.error (qcow2's corruption messages) to `write` until
 * the returned function is called: run as a program, they share the tool's stderr.
 */
export function routeDriverMessages(write: (s: string) => void): () => void {
  const orig = console.error;
  console.error = (...a: unknown[]) => write(`${a.map(String).join(' ')}\n`);
  return () => {
    console.error = orig;
  };
}

/**
 * blk-io's main() in process, in `cwd` (file names, data file names included, are relative to
 * it), under the program name "qemu-io"; the driver's messages go to its stderr, as QEMU's
 * do. Timings in stdout are masked.
 */
export async function runOursIo(args: string[], cwd: string): Promise<Outcome> {
  let stdout = '';
  let stderr = '';
  const old = process.cwd();
  process.chdir(cwd);
  const restore = routeDriverMessages((t) => (stderr += t));
  try {
    const status = await blkIoMain(['node', 'qemu-io', ...args], {
      stdout: { write: (t: string) => (stdout += t) },
      stderr: { write: (t: string) => (stderr += t) },
      stdin: '',
      abort: () => undefined,
      raise: () => undefined,
    });
    return { stdout: maskTimings(stdout), stderr, status };
  } finally {
    restore();
    process.chdir(old);
  }
}

export async function runOurs(args: string[], cwd: string, merged: boolean, mp = false): Promise<Outcome> {
  let stdout = '';
  let stderr = '';
  let all = '';
  const old = process.cwd();
  process.chdir(cwd);
  let status: number;
  const restore = routeDriverMessages((s) => {
    stderr += s;
    all += s;
  });
  try {
    status = await main(['node', '/usr/bin/qemu-img', ...args], {
      stdout: {
        write: (s: string) => {
          stdout += s;
          all += s;
        },
      },
      stderr: {
        write: (s: string) => {
          stderr += s;
          all += s;
        },
      },
    });
  } finally {
    restore();
    process.chdir(old);
  }
  const out: Outcome = { stdout: mask(stdout, mp), stderr: mask(stderr, mp), status };
  if (merged) out.merged = mask(all, mp);
  return out;
}

/**
 * The set-up most sessions start from: a.qed (1 MiB: data at 0 and 256k, a zeroed cluster at
 * 512k) and r.raw (1 MiB of 0x11), written by the real qemu-img / qemu-io.
 */
export const DATA_IMAGES: string[][] = [
  ['qemu-img', 'create', '-q', '-f', 'qed', 'a.qed', '1M'],
  ['qemu-io', '-f', 'qed', '-c', 'write -P 0xab 0 64k', '-c', 'write -P 0xcd 256k 100k', '-c', 'write -z 512k 64k', 'a.qed'],
  ['qemu-img', 'create', '-q', '-f', 'raw', 'r.raw', '1M'],
  ['qemu-io', '-f', 'raw', '-c', 'write -P 0x11 0 1M', 'r.raw'],
];

export interface StepResult {
  label: string;
  theirs: Outcome;
  ours: Outcome;
}

let counter = 0;

/** Run a session; returns every step's outcomes plus the final image inspections. */
export async function runSession(root: string, s: Session): Promise<StepResult[]> {
  const id = `${counter++}`;
  const dq = join(root, `q${id}`);
  const db = join(root, `b${id}`);
  mkdirSync(dq);
  mkdirSync(db);
  for (const cmd of s.setup ?? []) {
    runSetup(cmd, dq);
    runSetup(cmd, db);
  }
  const results: StepResult[] = [];
  try {
    for (const raw of s.steps) {
      const step: Step = Array.isArray(raw) ? { args: raw } : raw;
      const merged = step.merged === true;
      const mp = step.maskProgress === true;
      const theirs = runTheirs(step.args, dq, merged, mp);
      const ours = await runOurs(step.args, db, merged, mp);
      results.push({ label: `qemu-img ${step.args.join(' ')}`, theirs, ours });
    }
  } finally {
    for (const cmd of s.teardown ?? []) {
      runSetup(cmd, dq);
      runSetup(cmd, db);
    }
  }
  const all = [...(s.images ?? []).map((i) => ({ img: i, full: true })), ...(s.contentOnly ?? []).map((i) => ({ img: i, full: false }))];
  for (const { img, full } of all) {
    const inspect = full
      ? [
          ['info', '--output=json', img],
          ['map', '--output=json', img],
          ['check', img],
        ]
      : [['check', '-q', img]];
    for (const args of inspect) {
      const a = runQemuImg(args, { cwd: dq });
      const b = runQemuImg(args, { cwd: db });
      results.push({
        label: `final state: qemu-img ${args.join(' ')}`,
        theirs: { stdout: mask(a.stdout), stderr: mask(a.stderr), status: a.status },
        ours: { stdout: mask(b.stdout), stderr: mask(b.stderr), status: b.status },
      });
    }
    const c = runQemuImg(['compare', join(dq, img), join(db, img)]);
    results.push({
      label: `final state: content of ${img}`,
      theirs: { stdout: 'Images are identical.\n', stderr: '', status: 0 },
      ours: { stdout: c.stdout, stderr: c.stderr, status: c.status },
    });
  }
  for (const img of s.identical ?? []) {
    const same = readFileSync(join(dq, img)).equals(readFileSync(join(db, img)));
    results.push({
      label: `final state: bytes of ${img}`,
      theirs: { stdout: 'identical', stderr: '', status: 0 },
      ours: { stdout: same ? 'identical' : `different ${spawnSync('cmp', [join(dq, img), join(db, img)]).stdout.toString()}`, stderr: '', status: 0 },
    });
  }
  return results;
}

/** Run a session; returns the steps and final inspections whose outcomes differ (none: parity). */
export async function sessionDiffs(root: string, s: Session): Promise<StepResult[]> {
  const results = await runSession(root, s);
  const diffs = results.filter((r) => JSON.stringify(r.ours) !== JSON.stringify(r.theirs));
  return diffs.map((r) => ({ label: r.label, ours: r.ours, theirs: r.theirs }));
}
