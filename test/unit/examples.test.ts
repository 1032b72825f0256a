// The code a new user reads first must run: the README's tour of the API (examples/tour.ts,
// type-checked with the rest, shown verbatim in the README) and examples/demo.ts.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

const REPO = join(import.meta.dirname, '../..');

/** The ```ts blocks of one README section, joined. */
function readmeCode(section: string): string {
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
  const start = readme.indexOf(`\n## ${section}\n`);
  expect(start).toBeGreaterThanOrEqual(0);
  const end = readme.indexOf('\n## ', start + 1);
  const body = readme.slice(start, end < 0 ? undefined : end);
  const blocks = [...body.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  expect(blocks.length).toBeGreaterThan(0);
  return blocks.join('\n');
}

/** tsx's loader, resolved here: a script in a temp dir could not find it by name. */
const TSX = import.meta.resolve('tsx');

/** Run a TypeScript module with tsx in `cwd`; returns its output, failing on a non-zero exit. */
function runTs(file: string, cwd: string): string {
  const r = spawnSync(process.execPath, ['--import', TSX, file], { cwd, encoding: 'utf8', timeout: 50_000 });
  expect(r.error).toBeUndefined();
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return r.stdout;
}

let dir = '';
afterEach(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
  dir = '';
});

describe('examples', () => {
  it("the README's tour of the API is examples/tour.ts, and it runs", () => {
    // The README shows the example's code, with the package name for the import path.
    const example = readFileSync(join(REPO, 'examples/tour.ts'), 'utf8').split('\n');
    const body = example.slice(example.findIndex((l) => !l.startsWith('//'))).join('\n');
    const shown = body.replace("from '../src/index.js'", "from 'blocklayer'");
    expect(shown).not.toBe(body);
    expect(readmeCode('A short tour of the API')).toBe(shown);

    dir = mkdtempSync(join(tmpdir(), 'blocklayer-tour-'));
    const out = runTs(join(REPO, 'examples/tour.ts'), dir).split('\n');
    expect(out.slice(0, 3)).toEqual(['true 65536', 'true', 'qed file']);
    expect(out.join('\n')).toMatch(/corruptions: 0,\s+leaks: 0,/);
    expect(existsSync(join(dir, 'disk.qed'))).toBe(true);
  });

  it('examples/demo.ts runs and ends with a clean check', () => {
    const out = runTs(join(REPO, 'examples/demo.ts'), REPO);
    expect(out).toContain('No errors were found on the image.');
  });
});
