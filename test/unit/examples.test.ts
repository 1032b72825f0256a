// The code a new user reads first must run: the README's tour of the API (taken from the README
// itself, so the page cannot drift from the library) and examples/demo.ts.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
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
  it("the README's tour of the API runs as written", () => {
    dir = mkdtempSync(join(tmpdir(), 'blocklayer-readme-'));
    const code = readmeCode('A short tour of the API');
    // The package name resolves to this checkout's sources; everything else is the README's.
    const entry = pathToFileURL(join(REPO, 'src/index.ts')).href;
    const script = code.replaceAll("from 'blocklayer'", `from '${entry}'`);
    expect(script).not.toBe(code);
    writeFileSync(join(dir, 'tour.mts'), script);
    const out = runTs(join(dir, 'tour.mts'), dir);
    expect(out).toMatch(/corruptions: 0/);
    expect(out).toMatch(/leaks: 0/);
    expect(existsSync(join(dir, 'disk.qed'))).toBe(true);
  });

  it('examples/demo.ts runs and ends with a clean check', () => {
    const out = runTs(join(REPO, 'examples/demo.ts'), REPO);
    expect(out).toContain('No errors were found on the image.');
  });
});
