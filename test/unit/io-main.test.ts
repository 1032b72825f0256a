// blk-io in process on in-memory images: prompts, stdin handling, stdio ordering, exit codes,
// abort/sigraise hooks and the order AIO completions are reported in.
import { describe, expect, it } from 'vitest';
import { BlockDriverState, bdrvCreate } from '../../src/index.js';
import { main, maskTimings } from '../../src/tools/io/main.js';

let n = 0;
async function memQed(size = 1 << 20): Promise<string> {
  const name = `mem:io-main-${process.pid}-${n++}`;
  await bdrvCreate(name, { format: 'qed', options: { size } });
  return name;
}

interface Run {
  out: string;
  err: string;
  status: number;
}

async function run(args: string[], opts: { stdin?: string | AsyncIterable<string>; merged?: boolean; prog?: string; tty?: boolean; abort?: () => void; raise?: (sig: number) => void } = {}): Promise<Run & { chunks: string[] }> {
  let out = '';
  let err = '';
  const chunks: string[] = [];
  const stdout = {
    write: (s: string) => {
      chunks.push(s);
      out += s;
    },
  };
  const stderr = opts.merged === true ? stdout : { write: (s: string) => (err += s) };
  const status = await main(['node', opts.prog ?? 'blk-io', ...args], {
    stdout,
    stderr,
    stdin: opts.stdin,
    stdoutIsTTY: opts.tty,
    abort: opts.abort,
    raise: opts.raise,
  });
  return { out: maskTimings(out), err, status, chunks };
}

describe('blk-io main', () => {
  it('prompts with the program name and reads commands from stdin', async () => {
    const img = await memQed();
    const r = await run(['-f', 'qed', img], { stdin: 'length\nbogus\nquit\nlength\n', prog: '/usr/local/bin/my-io' });
    expect(r.out).toBe('my-io> 1 MiB\nmy-io> my-io> ');
    expect(r.err).toBe('command "bogus" not found\n');
    expect(r.status).toBe(1);
  });

  it('joins commands split across stdin chunks and splits lines at 1023 bytes', async () => {
    const img = await memQed();
    async function* chunks(): AsyncGenerator<string> {
      yield 'len';
      yield 'gth\nwrite -P 3 0';
      yield ' 512\nread -P 3 0 512';
    }
    const r = await run(['-f', 'qed', img], { stdin: chunks() });
    expect(r.out).toBe(
      'blk-io> 1 MiB\nblk-io> wrote 512/512 bytes at offset 0\n512 bytes, 1 ops; TIME (RATE)\n' +
        'blk-io> read 512/512 bytes at offset 0\n512 bytes, 1 ops; TIME (RATE)\nblk-io> ',
    );
    const long = await run(['-f', 'qed', img], { stdin: `${'x'.repeat(1030)}\n` });
    expect(long.err).toBe(`command "${'x'.repeat(1023)}" not found\ncommand "xxxxxxx" not found\n`);
  });

  it('keeps stdout in 4 KiB blocks on a pipe, lines on a terminal', async () => {
    const img = await memQed();
    const piped = await run(['-f', 'qed', '-c', 'read -v 0 8k', '-c', 'bogus', img], { merged: true });
    // stderr overtakes the buffered part of stdout
    const [blocks, err, tail] = piped.chunks;
    expect(blocks.length % 4096).toBe(0);
    expect(err).toBe('command "bogus" not found\n');
    expect(piped.chunks).toHaveLength(3);
    expect(tail.length).toBeLessThan(4096);
    const tty = await run(['-f', 'qed', '-c', 'length', '-c', 'bogus', img], { merged: true, tty: true });
    expect(tty.out).toBe('1 MiB\ncommand "bogus" not found\n');
  });

  it('abort skips every close: the buffered output is lost and NEED_CHECK stays', async () => {
    const img = await memQed();
    let aborted = 0;
    const r = await run(['-f', 'qed', '-c', 'write -P 1 0 64k', '-c', 'abort', '-c', 'length', img], {
      abort: () => aborted++,
    });
    expect(aborted).toBe(1);
    expect(r.status).toBe(134);
    expect(r.out).toBe('');
    const raw = await BlockDriverState.open(img, { format: 'raw', readOnly: true });
    const hdr = new Uint8Array(64);
    await raw.pread(0, hdr);
    await raw.close();
    expect(hdr[16] & 2).toBe(2);
    // A read-write open repairs and clears it.
    const bs = await BlockDriverState.open(img, { format: 'qed' });
    await bs.close();
    const raw2 = await BlockDriverState.open(img, { format: 'raw', readOnly: true });
    await raw2.pread(0, hdr);
    await raw2.close();
    expect(hdr[16] & 2).toBe(0);
  });

  it('sigraise flushes stdout first and passes the signal on', async () => {
    const img = await memQed();
    const seen: number[] = [];
    let outAtRaise = '';
    let out = '';
    await main(['node', 'blk-io', '-f', 'qed', '-c', 'length', '-c', 'sigraise 15', img], {
      stdout: { write: (s: string) => (out += s) },
      stderr: { write: () => undefined },
      raise: (sig) => {
        seen.push(sig);
        outAtRaise = out;
      },
    });
    expect(seen).toEqual([15]);
    expect(outAtRaise).toBe('1 MiB\n');
  });

  it('reports AIO completions at the next main-loop point, newest first', async () => {
    const img = await memQed();
    const r = await run(['-f', 'qed', '-c', 'aio_read 0 2M', '-c', 'aio_write 1M 1', '-c', 'length', '-c', 'aio_flush', '-c', 'aio_write -P 5 0 512', '-c', 'length', img]);
    expect(r.out).toBe(
      '1 MiB\naio_write failed: Input/output error\nreadv failed: Input/output error\n1 MiB\n' +
        'wrote 512/512 bytes at offset 0\n512 bytes, 1 ops; TIME (RATE)\n',
    );
    expect(r.status).toBe(0);
  });

  it('exit status is 1 when any command failed, 0 otherwise', async () => {
    const img = await memQed();
    expect((await run(['-f', 'qed', '-c', 'read 0 2M', '-c', 'length', img])).status).toBe(1);
    expect((await run(['-f', 'qed', '-c', 'length', '-c', 'aio_read -P 9 0 512', img])).status).toBe(0);
    expect((await run(['-f', 'qed', '-c', 'help bogus', img])).status).toBe(1);
    expect((await run(['-f', 'qed', '-c', 'write -n 0 1', img])).status).toBe(1);
  });

  it('refuses NO_FALLBACK zeroing on QED even when aligned', async () => {
    const img = await memQed();
    const r = await run(['-f', 'qed', '-c', 'write -zn 0 64k', '-c', 'write -z 0 64k', '-c', 'map', img]);
    expect(r.out).toBe(
      'write failed: Operation not supported\nwrote 65536/65536 bytes at offset 0\n64 KiB, 1 ops; TIME (RATE)\n' +
        '64 KiB (0x10000) bytes     allocated at offset 0 bytes (0x0)\n960 KiB (0xf0000) bytes not allocated at offset 64 KiB (0x10000)\n',
    );
  });

  it('reopen changes the mode of the same image', async () => {
    const img = await memQed();
    const r = await run(['-f', 'qed', '-c', 'reopen -r', '-c', 'write 0 1', '-c', 'reopen -w', '-c', 'write -P 6 0 1', '-c', 'read -P 6 0 1', img]);
    expect(r.err).toBe('blk-io: Block node is read-only\n');
    expect(r.out).toContain('read 1/1 bytes at offset 0\n');
  });

  it('-T prints matching trace points on stderr', async () => {
    const img = await memQed();
    const r = await run(['-T', 'qed_aio_setup', '-T', 'enable=qed_aio_comp*', '-f', 'qed', '-c', 'read 0 512', img]);
    expect(r.err).toMatch(/^qed_aio_setup s 0x[0-9a-f]+ acb 0x[0-9a-f]+ sector_num 0 nb_sectors 1 .*\nqed_aio_complete s 0x[0-9a-f]+ acb 0x[0-9a-f]+ ret 0\n$/);
    expect(r.out).toBe('read 512/512 bytes at offset 0\n512 bytes, 1 ops; TIME (RATE)\n');
  });

  it('-s keeps writes in a temporary overlay, also across reopen', async () => {
    const img = await memQed();
    const r = await run(['-s', '-f', 'qed', '-c', 'write -P 7 0 4k', '-c', 'reopen -r', '-c', 'write 0 1', '-c', 'reopen -w', '-c', 'read -P 7 0 4k', img]);
    expect(r.err).toBe('blk-io: Block node is read-only\n');
    expect(r.out).toContain('read 4096/4096 bytes at offset 0\n');
    const after = await run(['-f', 'qed', '-c', 'read -P 0 0 4k', '-c', 'map', img]);
    expect(after.out).toContain('1 MiB (0x100000) bytes not allocated at offset 0 bytes (0x0)\n');
    expect(after.status).toBe(0);
  });
});
