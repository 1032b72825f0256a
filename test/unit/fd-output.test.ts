// blk-img's stdout and stderr written on descriptors 1 and 2 (src/tools/shared/fd-output.ts):
// the whole output arrives in order through a pipe that is slow to be read, also when the
// descriptor is non-blocking (shared with a Node parent that made it so: write(2) then fails
// with EAGAIN and the process's stream takes over, whose output the exit then waits for), a
// done tool exits at once with its status, and a reader that went away ends the tool with
// SIGPIPE's status.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

const REPO = resolve(import.meta.dirname, '../..');
const BIN = join(REPO, 'bin/blk-img.js');

function env(): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env };
  delete e.NODE_OPTIONS;
  return e;
}

/** Run `node args`, reading its stdout only after `delayMs`; its status and stdout. */
function runSlowlyRead(args: string[], delayMs: number): Promise<{ status: number | null; stdout: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, args, { env: env(), stdio: ['ignore', 'pipe', 'inherit'] });
    const chunks: Buffer[] = [];
    child.stdout.pause();
    setTimeout(() => child.stdout.resume(), delayMs);
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.on('error', fail);
    child.on('close', (status) => done({ status, stdout: Buffer.concat(chunks).toString('utf8') }));
  });
}

describe('blk-img output on the descriptors', () => {
  let dir = '';
  let img = '';
  let expected = '';

  beforeAll(() => {
    if (!existsSync(join(REPO, 'dist/bin/img.cjs'))) throw new Error('dist/bin is missing: run `npm run build` first');
    dir = makeTempDir('blk-fd-output');
    img = join(dir, 'sparse.qcow2');
    // Every other 64 KiB cluster written: map prints a line per cluster, some 400 KiB in all.
    const run = (args: string[]): string => {
      const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: env(), maxBuffer: 1 << 26 });
      if (r.status !== 0) throw new Error(`blk-img ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    run(['create', '-q', '-f', 'qcow2', img, '512M']);
    run(['bench', '-q', '-w', '-f', 'qcow2', '-t', 'unsafe', '-d', '16', '-s', '4k', '-S', '128k', '-c', '4096', img]);
    expected = run(['map', '--output=json', img]);
  }, 120_000);

  afterAll(() => {
    if (dir !== '') removeTempDir(dir);
  });

  it('writes everything through a pipe read late', async () => {
    expect(expected.length).toBeGreaterThan(256 * 1024);
    const r = await runSlowlyRead([BIN, 'map', '--output=json', img], 300);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(expected);
  });

  it('writes everything through a non-blocking pipe read late (EAGAIN)', async () => {
    // Node's process.stdout on a pipe sets O_NONBLOCK on it (a child Node would clear it again):
    // made first, in the tool's own process, before the launcher runs.
    const first = `process.stdout.write(''); process.argv.splice(1, 0, ${JSON.stringify(BIN)}); require(${JSON.stringify(BIN)});`;
    const r = await runSlowlyRead(['-e', first, '--', 'map', '--output=json', img], 300);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(expected);
  });

  it("loads neither Node's net nor its streams (a piped stdout's)", () => {
    // Making process.stdout on a pipe loads them: some 4 ms of every run.
    const hook = join(dir, 'modules.cjs');
    writeFileSync(hook, "process.on('exit', () => require('node:fs').writeSync(2, `MODULES ${process.moduleLoadList.join('|')}\\n`));");
    const r = spawnSync(process.execPath, ['--require', hook, BIN, 'check', img], { encoding: 'utf8', env: env() });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^No errors were found on the image\.$/m);
    const loaded = /MODULES (.*)/.exec(r.stderr)?.[1].split('|') ?? [];
    expect(loaded).toContain('NativeModule fs');
    for (const m of ['net', 'stream', 'tty']) expect(loaded).not.toContain(`NativeModule ${m}`);
  });

  it('takes /dev/null for no terminal without node:tty', () => {
    // A character device, but /dev/null: asking node:tty would load net and the streams.
    const hook = join(dir, 'modules.cjs');
    writeFileSync(hook, "process.on('exit', () => require('node:fs').writeSync(2, `MODULES ${process.moduleLoadList.join('|')}\\n`));");
    const devNull = openSync('/dev/null', 'w');
    try {
      const r = spawnSync(process.execPath, ['--require', hook, BIN, 'check', img], { encoding: 'utf8', env: env(), stdio: ['ignore', devNull, 'pipe'] });
      expect(r.status).toBe(0);
      const loaded = /MODULES (.*)/.exec(r.stderr)?.[1].split('|') ?? [];
      expect(loaded).toContain('NativeModule fs');
      for (const m of ['net', 'stream', 'tty']) expect(loaded).not.toContain(`NativeModule ${m}`);
    } finally {
      closeSync(devNull);
    }
  });

  it('exits at once when done, with the status, without running the loop dry', () => {
    // 'beforeExit' comes only when the loop runs dry: exitWhenDone leaves before that.
    const hook = join(dir, 'before-exit.cjs');
    writeFileSync(hook, "process.on('beforeExit', () => require('node:fs').writeSync(2, 'RAN DRY\\n'));");
    const ok = spawnSync(process.execPath, ['--require', hook, BIN, 'check', img], { encoding: 'utf8', env: env() });
    expect(ok.status).toBe(0);
    expect(ok.stderr).not.toContain('RAN DRY');
    const bad = spawnSync(process.execPath, ['--require', hook, BIN, 'check', join(dir, 'missing.qcow2')], { encoding: 'utf8', env: env() });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^blk-img: Could not open/);
    expect(bad.stderr).not.toContain('RAN DRY');
  });

  it('leaves with status 141 when the reader went away', () => {
    const st = spawnSync('bash', ['-c', `"${process.execPath}" "${BIN}" map --output=json "${img}" | head -c 10 >/dev/null; echo "\${PIPESTATUS[0]}"`], { env: env(), encoding: 'utf8' });
    expect(st.stdout.trim()).toBe('141');
  });
});
