// nbdsh (libnbd's Python shell) scripts against our NbdServer and against qemu-nbd serving the
// same image: option haggling, structured reads with holes, block status, limits, read-only
// enforcement and multi-conn. Each script prints what it saw; the outputs must match.
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir } from './qemu.js';
import { haveNbdTools, killTools, runTool, serveImage, startQemuNbd, type Served, type ToolResult } from './nbd-server-tools.js';

const enabled = haveNbdTools();

function ok(r: ToolResult): string {
  if (r.status !== 0) throw new Error(`exit ${String(r.status)}: ${r.stderr}`);
  return r.stdout;
}

/** Run a Python script in nbdsh with URI bound to `uri`. */
async function nbdsh(script: string, uri: string): Promise<string> {
  return ok(await runTool('nbdsh', ['-c', `URI = ${JSON.stringify(uri)}\n${script}`]));
}

const HAGGLE = `
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(URI)
names = []
def on_list(name, desc):
    names.append((name, desc))
    return 0
print('list', h.opt_list(on_list), names)
h.set_export_name('nope')
try:
    h.opt_info()
    print('info nope: accepted')
except nbd.Error as e:
    print('info nope: refused')
h.set_export_name('')
h.opt_info()
print('size', h.get_size(), 'ro', h.is_read_only(), 'multi', h.can_multi_conn())
print('blocks', h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM))
print('flags', h.can_flush(), h.can_fua(), h.can_trim(), h.can_zero(), h.can_fast_zero(), h.can_df(), h.can_cache())
ctx = []
def on_ctx(name):
    ctx.append(name)
    return 0
h.opt_list_meta_context(on_ctx)
print('contexts', sorted(ctx))
h.add_meta_context('base:allocation')
h.opt_go()
print('go', h.can_meta_context('base:allocation'), h.get_structured_replies_negotiated())
h.shutdown()
`;

const STRUCTURED_READ = `
h = nbd.NBD()
h.add_meta_context('base:allocation')
h.connect_uri(URI)
seen = []
def chunk(buf, offset, status, err):
    seen.append((status, offset, len(buf), sum(buf)))
    return 0
for off, n in [(0, 4194304), (60000, 100000), (2621440, 4096)]:
    seen = []
    h.pread_structured(n, off, chunk)
    print('read', off, n, seen)
    seen = []
    h.pread_structured(n, off, chunk, nbd.CMD_FLAG_DF)
    print('read df', off, n, [(s, o, l) for (s, o, l, _) in seen])
ext = []
def extent(ctx, offset, entries, err):
    ext.append((ctx, offset, list(entries)))
    return 0
h.block_status(4194304, 0, extent)
h.block_status(100000, 60000, extent)
h.block_status(100000, 60000, extent, nbd.CMD_FLAG_REQ_ONE)
for e in ext:
    print('status', e)
h.shutdown()
`;

const LIMITS_AND_RO = `
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(URI)
def attempt(what, fn):
    try:
        fn()
        print(what, 'ok')
    except nbd.Error as e:
        print(what, 'errno', e.errno)
attempt('write', lambda: h.pwrite(b'x' * 512, 0))
attempt('trim', lambda: h.trim(512, 0))
attempt('zero', lambda: h.zero(512, 0))
attempt('read past end', lambda: h.pread(1024, 4194304 - 512))
attempt('read too big', lambda: h.pread(33554433, 0))
attempt('read ok', lambda: h.pread(512, 0))
attempt('cache', lambda: h.cache(65536, 0))
attempt('flush', lambda: h.flush())
h.shutdown()
`;

const MULTI_CONN = `
hs = [nbd.NBD() for i in range(3)]
for x in hs:
    x.connect_uri(URI)
print('multi', [x.can_multi_conn() for x in hs])
data = bytes([0xab]) * 4096
hs[0].pwrite(data, 8192)
hs[1].flush()
print('visible', hs[2].pread(4096, 8192) == data)
hs[0].zero(4096, 8192, nbd.CMD_FLAG_FUA)
print('zeroed', hs[1].pread(4096, 8192) == bytes(4096))
for x in hs:
    x.shutdown()
`;

describe.skipIf(!enabled)('NbdServer with nbdsh (libnbd)', () => {
  let dir = '';
  let raw = '';
  const cleanups: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    dir = makeTempDir('nbd-server-libnbd');
    raw = join(dir, 'sparse.raw');
    ok(await runTool('qemu-img', ['create', '-f', 'raw', raw, '4M']));
    ok(await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 64k 5', '-c', 'write -P 0x11 2560k 128k', raw]));
  });

  afterAll(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    killTools();
    removeTempDir(dir);
  });

  async function both(file: string, opts: Parameters<typeof serveImage>[2], qemuArgs: string[]): Promise<[Served, string]> {
    const s = await serveImage(file, dir, opts);
    cleanups.push(() => s.close());
    const q = await startQemuNbd(file, dir, qemuArgs);
    cleanups.push(() => q.stop());
    return [s, q.unix];
  }

  it('option haggling: list, info, limits, flags and contexts as qemu-nbd', async () => {
    const [s, q] = await both(raw, { format: 'raw', readOnly: true, maxClients: 1 }, ['-f', 'raw', '-r']);
    const mine = await nbdsh(HAGGLE, s.unix);
    expect(mine).toBe(await nbdsh(HAGGLE, q));
    expect(mine).toContain("list 1 [('', '')]");
    expect(mine).toContain('info nope: refused');
    expect(mine).toContain('blocks 1 4096 33554432');
    expect(await nbdsh(HAGGLE, s.tcp)).toBe(mine);
  });

  it('structured reads send holes as OFFSET_HOLE; block status merges and clips as qemu-nbd', async () => {
    const [s, q] = await both(raw, { format: 'raw', readOnly: true }, ['-f', 'raw', '-r', '-e', '0']);
    const mine = await nbdsh(STRUCTURED_READ, s.tcp);
    expect(mine).toBe(await nbdsh(STRUCTURED_READ, q));
    expect(mine).toContain('(2, 4096, 61440, 0)');
  });

  it('read-only export and request limits: same errno values as qemu-nbd, connection kept', async () => {
    const [s, q] = await both(raw, { format: 'raw', readOnly: true }, ['-f', 'raw', '-r']);
    const mine = await nbdsh(LIMITS_AND_RO, s.unix);
    expect(mine).toBe(await nbdsh(LIMITS_AND_RO, q));
    expect(mine).toContain('write errno EINVAL');
    expect(mine).toContain('read too big errno EINVAL');
    expect(mine).toContain('read ok ok');
  });

  it('multi-conn: a write on one connection, flush on another, read on a third', async () => {
    const copy = join(dir, 'multi.raw');
    copyFileSync(raw, copy);
    const s = await serveImage(copy, dir, { format: 'raw' });
    cleanups.push(() => s.close());
    const out = await nbdsh(MULTI_CONN, s.tcp);
    expect(out).toBe('multi [True, True, True]\nvisible True\nzeroed True\n');
  });
});
