// Steps on two copies of one qcow2 image with internal snapshots: one copy changed by the real
// qemu-img, the other by blk-img. The snapshot dates come from the wall clock, so files are
// compared with the date fields of their snapshot tables zeroed, and printed dates masked.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { stripSnapshotExtraData } from '../property/snapshot-powerloss.js';
import { runOurs, runTheirs, type Outcome } from './img-parity-harness.js';
import { runQemuImg, runQemuIo } from './qemu.js';

export function ok(r: { status: number | null; stderr: string }): void {
  if (r.status !== 0) throw new Error(r.stderr);
}

/** The file with the date fields of its snapshot table zeroed (they come from the clock). */
export function maskDates(img: Buffer): Buffer {
  const out = Buffer.from(img);
  const nb = out.readUInt32BE(60);
  let pos = Number(out.readBigUInt64BE(64));
  for (let i = 0; i < nb; i++) {
    pos = Math.ceil(pos / 8) * 8;
    out.fill(0, pos + 16, pos + 24);
    pos += 40 + out.readUInt32BE(pos + 36) + out.readUInt16BE(pos + 12) + out.readUInt16BE(pos + 14);
  }
  return out;
}

/** Where two files differ once dates are masked (null: nowhere), and their sizes. */
export function firstDiff(a: string, b: string): { at: number; sizes: number[] } | null {
  const x = maskDates(readFileSync(a));
  const y = maskDates(readFileSync(b));
  if (x.equals(y)) return null;
  let at = 0;
  while (at < Math.min(x.length, y.length) && x[at] === y[at]) at++;
  return { at, sizes: [x.length, y.length] };
}

/** Printed snapshot dates (`snapshot -l`, `info`) masked: each tool read its own clock. */
const maskDateText = (o: Outcome): Outcome => ({ ...o, stdout: o.stdout.replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, '<date>').replace(/"date-n?sec": \d+/g, '"date-sec": <n>') });

/**
 * A step: ['io', command] runs qemu-io on both copies; ['both', ...args] runs the real
 * qemu-img on both; ['strip', n] leaves n bytes of extra data in each snapshot entry of both (what older
 * QEMUs wrote); anything else is a qemu-img
 * command line compared between the tools, with '@' standing for the image (appended when
 * absent).
 */
export type SnapshotStep = string[];

export interface StepsOptions {
  /** Compare the files after every compared step (QEMU's result is deterministic there). */
  identical: boolean;
  /**
   * Stop comparing files after the first step that fails: QEMU 7.2 leaves the increments of
   * a snapshot that overflowed behind, where we refuse before writing.
   */
  untilFailure?: boolean;
}

/** Two fresh directories under `root` for one case: qemu-img's copy, then blk-img's. */
export function pairDirs(root: string, tag: string): [string, string] {
  const dirs: [string, string] = [join(root, `q${tag}`), join(root, `b${tag}`)];
  for (const d of dirs) mkdirSync(d);
  return dirs;
}

/** Run the steps in dq (qemu-img) and db (blk-img), both holding img.qcow2. */
export async function runSnapshotSteps(dq: string, db: string, steps: readonly SnapshotStep[], opts: StepsOptions): Promise<void> {
  let compareFiles = opts.identical;
  for (const step of steps) {
    const [kind, ...rest] = step;
    if (kind === 'io' || kind === 'both' || kind === 'strip') {
      for (const d of [dq, db]) {
        if (kind === 'io') ok(runQemuIo(['-c', rest[0], 'img.qcow2'], { cwd: d }));
        else if (kind === 'both') ok(runQemuImg(rest, { cwd: d }));
        else {
          const img = readFileSync(join(d, 'img.qcow2'));
          stripSnapshotExtraData(img, Number(rest[0]));
          writeFileSync(join(d, 'img.qcow2'), img);
        }
      }
      continue;
    }
    const args = step.includes('@') ? step.map((a) => (a === '@' ? 'img.qcow2' : a)) : [...step, 'img.qcow2'];
    const theirs = maskDateText(runTheirs(args, dq, false));
    const ours = maskDateText(await runOurs(args, db, false));
    expect({ step: args.join(' '), ...ours }).toEqual({ step: args.join(' '), ...theirs });
    if (opts.untilFailure === true && ours.status !== 0) compareFiles = false;
    if (compareFiles) expect({ step: args.join(' '), diff: firstDiff(join(db, 'img.qcow2'), join(dq, 'img.qcow2')) }).toEqual({ step: args.join(' '), diff: null });
  }
}
