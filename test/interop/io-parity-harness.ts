// Harness of the blk-io parity suite: run one scripted session through the real qemu-io (spawned)
// and through blk-io (in process, under the program name "qemu-io" so that prompts and
// messages carry the same name), each on fresh identical images, with stdout and stderr
// apart and once more sharing one pipe (the stdio buffering order). Only timing figures are
// masked before comparing.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main, maskTimings } from '../../src/tools/io/main.js';
import { routeDriverMessages } from './img-parity-harness.js';
import { makeTempDir, removeTempDir, runQemuImg } from './qemu.js';

export interface ImageSpec {
  /** File name inside the case directory. */
  name: string;
  fmt: 'qed' | 'raw' | 'qcow2';
  size: string;
  /** Extra qemu-img create options (-o ...). */
  opts?: string[];
  /** qemu-io commands run on the template once, before any session (content set-up). */
  setup?: string[];
}

export interface Session {
  /** Test title. */
  name: string;
  /** Arguments after the program name. */
  args: string[];
  /** Text on stdin (commands when no -c is given). */
  stdin?: string;
  /** Images (re)created before each run. */
  images?: ImageSpec[];
  /** Compare the images' final contents too (qemu-img compare). */
  compareImages?: boolean;
}

export interface RunOutput {
  stdout: string;
  stderr: string;
  merged: string;
  status: number | null;
}

export class ParityRunner {
  private readonly templates = new Map<string, string>();
  private n = 0;
  /** The directory of the last run: its images are blk-io's (the merged-pipe run's) results. */
  lastCaseDir = '';
  /** Called with each fresh case directory (shared input files). */
  beforeRun: ((caseDir: string) => void) | null = null;

  constructor(
    readonly dir: string,
    readonly qemuIo: string,
  ) {}

  /** A template image made once by qemu-img (and qemu-io for its content). */
  private template(img: ImageSpec): string {
    const key = JSON.stringify(img);
    let path = this.templates.get(key);
    if (path !== undefined) return path;
    path = join(this.dir, `template-${this.templates.size}.${img.fmt}`);
    const r = runQemuImg(['create', '-q', '-f', img.fmt, ...(img.opts ?? []), path, img.size]);
    if (r.status !== 0) throw new Error(`qemu-img create failed: ${r.stderr}`);
    if (img.setup !== undefined && img.setup.length > 0) {
      const args = ['-f', img.fmt];
      for (const c of img.setup) args.push('-c', c);
      const s = spawnSync(this.qemuIo, [...args, path], { encoding: 'utf8' });
      if (s.status !== 0) throw new Error(`qemu-io setup failed: ${s.stdout}${s.stderr}`);
    }
    this.templates.set(key, path);
    return path;
  }

  private prepare(caseDir: string, images: ImageSpec[]): void {
    for (const img of images) {
      const dst = join(caseDir, img.name);
      if (existsSync(dst)) rmSync(dst);
      copyFileSync(this.template(img), dst);
    }
  }

  private runQemu(caseDir: string, s: Session, merged: boolean): { stdout: string; stderr: string; status: number | null } {
    // argv[0] "qemu-io": getopt's messages name the program as it was invoked.
    const args = merged ? ['-c', 'exec -a qemu-io "$0" "$@" 2>&1', this.qemuIo, ...s.args] : s.args;
    const r = spawnSync(merged ? '/bin/bash' : this.qemuIo, args, {
      argv0: merged ? 'bash' : 'qemu-io',
      cwd: caseDir,
      input: s.stdin ?? '',
      encoding: 'utf8',
      timeout: 30_000,
    });
    return { stdout: String(r.stdout), stderr: String(r.stderr), status: r.status };
  }

  private async runBlk(caseDir: string, s: Session, merged: boolean): Promise<{ stdout: string; stderr: string; status: number }> {
    let out = '';
    let err = '';
    const stdout = { write: (t: string) => (out += t) };
    const stderr = merged ? stdout : { write: (t: string) => (err += t) };
    // Relative names as with qemu-io: run in the case directory (vitest's pool is 'forks', so
    // the worker is a process and may change its directory).
    const cwd = process.cwd();
    process.chdir(caseDir);
    const restore = routeDriverMessages((t) => stderr.write(t));
    try {
      const status = await main(['node', 'qemu-io', ...s.args], {
        stdout,
        stderr,
        stdin: s.stdin ?? '',
        abort: () => undefined,
        raise: () => undefined,
      });
      return { stdout: out, stderr: err, status };
    } finally {
      restore();
      process.chdir(cwd);
    }
  }

  /** Both tools, both stream set-ups; returns the masked outputs. */
  async run(s: Session): Promise<{ qemu: RunOutput; blk: RunOutput; imagesEqual: boolean | null }> {
    const caseDir = join(this.dir, `case-${this.n++}`);
    mkdirSync(caseDir, { recursive: true });
    this.lastCaseDir = caseDir;
    this.beforeRun?.(caseDir);
    const images = s.images ?? [];
    this.prepare(caseDir, images);
    const q1 = this.runQemu(caseDir, s, false);
    // Keep QEMU's resulting images for the content comparison.
    const saved = new Map<string, string>();
    if (s.compareImages === true) {
      for (const img of images) {
        const keep = join(caseDir, `${img.name}.qemu`);
        copyFileSync(join(caseDir, img.name), keep);
        saved.set(img.name, keep);
      }
    }
    this.prepare(caseDir, images);
    const q2 = this.runQemu(caseDir, s, true);
    this.prepare(caseDir, images);
    const b1 = await this.runBlk(caseDir, s, false);
    let imagesEqual: boolean | null = null;
    if (s.compareImages === true) {
      imagesEqual = true;
      for (const img of images) {
        const ours = join(caseDir, img.name);
        const theirs = saved.get(img.name) ?? '';
        const c = runQemuImg(['compare', '-q', '-f', img.fmt, '-F', img.fmt, theirs, ours]);
        if (c.status !== 0) imagesEqual = false;
        if (img.fmt === 'raw' && !readFileSync(ours).equals(readFileSync(theirs))) imagesEqual = false;
      }
    }
    this.prepare(caseDir, images);
    const b2 = await this.runBlk(caseDir, s, true);
    return {
      qemu: { stdout: maskTimings(q1.stdout), stderr: q1.stderr, merged: maskTimings(q2.stdout), status: q1.status },
      blk: { stdout: maskTimings(b1.stdout), stderr: b1.stderr, merged: maskTimings(b2.stdout), status: b1.status },
      imagesEqual,
    };
  }
}

/** `-c` arguments for a list of commands. */
export function cmds(...list: string[]): string[] {
  return list.flatMap((c) => ['-c', c]);
}

export type ParityResult = Awaited<ReturnType<ParityRunner['run']>>;

export interface ParitySuite<S extends Session> {
  /** Files written into every case directory (rules, patterns...). */
  files?: Record<string, string | Buffer>;
  /** Applied to stderr and the merged output of both sides before comparing. */
  mask?: (text: string) => string;
  /** The images must have been compared (and be equal) in every session, not only when asked. */
  imagesAlways?: boolean;
  /** More checks on a session's result (its files are in runner.lastCaseDir). */
  extra?: (s: S, res: ParityResult, runner: ParityRunner) => void;
}

/**
 * A describe block of parity sessions: each runs through qemu-io and blk-io, and stdout, stderr,
 * their interleaving on one pipe, the exit status and the images must be the same.
 */
export function describeParity<S extends Session>(
  title: string,
  qemuIo: string | null,
  sessions: readonly S[],
  suite: ParitySuite<S> = {},
): void {
  describe.skipIf(qemuIo === null)(title, () => {
    let dir = '';
    let runner: ParityRunner;

    beforeAll(() => {
      dir = makeTempDir('blk-io-parity');
      runner = new ParityRunner(dir, qemuIo ?? 'qemu-io');
      runner.beforeRun = (caseDir: string) => {
        for (const [name, content] of Object.entries(suite.files ?? {})) writeFileSync(join(caseDir, name), content);
      };
    });
    afterAll(() => removeTempDir(dir));

    for (const s of sessions) {
      it(s.name, async () => {
        const res = await runner.run(s);
        const mask = suite.mask;
        if (mask !== undefined) {
          for (const out of [res.blk, res.qemu]) {
            out.stderr = mask(out.stderr);
            out.merged = mask(out.merged);
          }
        }
        expect(res.blk.stderr, 'stderr').toBe(res.qemu.stderr);
        expect(res.blk.stdout, 'stdout').toBe(res.qemu.stdout);
        expect(res.blk.merged, 'stdout+stderr on one pipe').toBe(res.qemu.merged);
        expect(res.blk.status, 'exit status').toBe(res.qemu.status);
        if (suite.imagesAlways === true || res.imagesEqual !== null) expect(res.imagesEqual, 'image contents').toBe(true);
        suite.extra?.(s, res, runner);
      });
    }
  });
}
