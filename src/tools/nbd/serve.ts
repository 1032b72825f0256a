// blk-nbd's server mode: open the image (with -s a temporary overlay, with -o a window from
// an offset), export it through NbdServer, listen (TCP, Unix socket or an inherited socket),
// and exit 0 after the last client that reached transmission, unless -t. Unlike qemu-nbd the
// image is opened before the socket exists, so a failed open leaves no stale socket behind.
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  BlockBackend,
  BlockDriverState,
  bdrvCreate,
  bufferIsZero,
  bdrvOpenOptions,
  findAuthz,
  findTlsCreds,
  QEMU_IMG_IMAGE_OPTS,
  getDefaultRegistry,
  NbdServer,
  serverTlsOptions,
  type BlockStatus,
  type WriteFlags,
  type WriteZeroesFlags,
} from '../../index.js';
import { printOpenWarning } from '../shared/open.js';
import { errorMessage, ToolExit, type ToolOutput } from '../shared/output.js';
import { parseOptsNoisily } from '../shared/image-opts.js';
import type { NbdToolOptions } from './options.js';

/** The listen backlog qemu-nbd uses for unlimited clients. */
const SOMAXCONN = 4096;

/** How the export treats writes (qemu-nbd's --discard, --detect-zeroes, --cache). */
export interface ExportWriteMode {
  /** --discard=unmap: TRIM reaches the image and zeroing may unmap (BDRV_O_UNMAP). */
  unmap: boolean;
  /** --detect-zeroes: a write of zeros becomes a zeroing (which may unmap with 'unmap'). */
  detectZeroes: 'off' | 'on' | 'unmap';
  /** --cache=writethrough/directsync: every write is made durable before it is answered. */
  writethrough: boolean;
}

/**
 * The image as the export sees it, a BlockBackend on the opened node: `-o` moves the start,
 * `--discard=ignore` (the default) makes TRIM a no-op and zeroing never unmap, as QEMU without
 * BDRV_O_UNMAP; `--detect-zeroes` and writethrough caching act on writes.
 */
export class ExportBackend extends BlockBackend {
  constructor(
    bs: BlockDriverState,
    private readonly offset: number,
    private readonly mode: ExportWriteMode,
  ) {
    super({ perm: { write: !bs.readOnly, resize: false } });
    this.attach(bs);
  }

  override async getLength(): Promise<number> {
    return Math.max(0, (await super.getLength()) - this.offset);
  }

  override pread(offset: number, buf: Uint8Array): Promise<void> {
    return super.pread(this.offset + offset, buf);
  }

  override pwrite(offset: number, buf: Uint8Array, flags: WriteFlags = {}): Promise<void> {
    const fua = flags.fua === true || this.mode.writethrough;
    if (this.mode.detectZeroes !== 'off' && bufferIsZero(buf)) {
      return this.writeZeroes(offset, buf.length, { mayUnmap: this.mode.detectZeroes === 'unmap', fua });
    }
    return super.pwrite(this.offset + offset, buf, { ...flags, fua });
  }

  override writeZeroes(offset: number, bytes: number, flags: WriteZeroesFlags = {}): Promise<void> {
    const fua = flags.fua === true || this.mode.writethrough;
    return super.writeZeroes(this.offset + offset, bytes, { ...flags, fua, mayUnmap: this.mode.unmap && flags.mayUnmap === true });
  }

  override async discard(offset: number, bytes: number): Promise<void> {
    if (this.mode.unmap) await super.discard(this.offset + offset, bytes);
  }

  override blockStatus(offset: number, bytes: number): Promise<BlockStatus> {
    return super.blockStatus(this.offset + offset, bytes);
  }

  override blockStatusAbove(offset: number, bytes: number): Promise<BlockStatus & { depth: number }> {
    return super.blockStatusAbove(this.offset + offset, bytes);
  }
}

export interface OpenedImage {
  bs: BlockDriverState;
  /** Files to remove at exit (the -s overlay). */
  temporary: string[];
}

/** blk_new_open for the export, -s overlay included; exits 1 with qemu-nbd's message. */
export async function openExportImage(o: ToolOutput, opts: NbdToolOptions): Promise<OpenedImage> {
  const file = opts.file ?? '';
  const fail = (e: unknown): never => {
    o.error(`Failed to blk_new_open '${file}': ${errorMessage(e)}`);
    throw new ToolExit(1);
  };
  let qdict: Map<string, string> | null = null;
  if (opts.imageOpts) {
    if (opts.format !== undefined) {
      o.error('--image-opts and -f are mutually exclusive');
      throw new ToolExit(1);
    }
    // qemu-nbd parses FILE as qemu-img does: a leading bare value is `file`.
    qdict = parseOptsNoisily(o, file, QEMU_IMG_IMAGE_OPTS);
    if (qdict === null) throw new ToolExit(1);
  }
  const noFlush = opts.cache === 'unsafe';
  // blk_new_open: from the options when --image-opts gave them, else from the name.
  const open = (readOnly: boolean): Promise<BlockDriverState> => {
    const base = { readOnly, noFlush, objects: opts.objects };
    return qdict === null ? BlockDriverState.open(file, { ...base, format: opts.format }) : bdrvOpenOptions(new Map(qdict), base);
  };
  if (!opts.snapshot) {
    try {
      const bs = await open(opts.readOnly);
      printOpenWarning(o, bs);
      if (opts.loadSnapshot !== undefined) {
        // No format here can load an internal snapshot for a while (bdrv_snapshot_load_tmp).
        await bs.close();
        o.error(
          `Failed to load snapshot: Block format '${bs.driver.formatName}' used by device '' does not support temporarily loading internal snapshots`,
        );
        throw new ToolExit(1);
      }
      return { bs, temporary: [] };
    } catch (e) {
      if (e instanceof ToolExit) throw e;
      return fail(e);
    }
  }
  // -s: writes go to a temporary overlay whose backing file is FILE, dropped at exit: qcow2 as
  // in qemu-nbd when that driver is there, else QED.
  const overlayFormat = getDefaultRegistry().find('qcow2') !== undefined ? 'qcow2' : 'qed';
  const overlay = join(tmpdir(), `blk-nbd-snapshot-${process.pid}-${randomBytes(4).toString('hex')}.${overlayFormat}`);
  let base: BlockDriverState;
  try {
    base = await open(true);
  } catch (e) {
    return fail(e);
  }
  const format = base.driver.formatName;
  // A host file is named by its absolute path; options are named by what they opened.
  const backingFile = qdict === null ? resolve(file) : base.filename;
  const size = await base.getLength();
  await base.close();
  try {
    await bdrvCreate(overlay, {
      format: overlayFormat,
      options: { size, backingFile, backingFmt: format },
    });
    const bs = await BlockDriverState.open(overlay, { format: overlayFormat, readOnly: opts.readOnly, noFlush, objects: opts.objects });
    return { bs, temporary: [overlay] };
  } catch (e) {
    rmSync(overlay, { force: true });
    return fail(e);
  }
}

/** The NbdServer for the export, TLS and authorization included. */
export function makeServer(opts: NbdToolOptions, backend: ExportBackend): NbdServer {
  let tls;
  if (opts.tlsCreds !== undefined) {
    const creds = findTlsCreds(opts.objects, opts.tlsCreds, 'server');
    const allowed = opts.tlsAuthz === undefined ? undefined : findAuthz(opts.objects, opts.tlsAuthz).identity;
    tls = {
      options: serverTlsOptions(creds),
      authorize: allowed === undefined ? undefined : (peer: { dn: string | null }) => peer.dn === allowed,
    };
  }
  return new NbdServer({
    exports: [
      {
        name: opts.exportName ?? '',
        backend,
        description: opts.description,
        readOnly: opts.readOnly,
        allocationDepth: opts.allocationDepth,
        bitmaps: opts.bitmaps.length > 0 ? opts.bitmaps : undefined,
        maxClients: opts.shared,
      },
    ],
    maxClients: opts.shared,
    tls,
  });
}

/** Listen where the options say: an inherited socket (fd 3), a Unix socket or TCP. */
export async function listen(o: ToolOutput, opts: NbdToolOptions, server: NbdServer): Promise<void> {
  const backlog = opts.persistent || opts.shared === 0 ? SOMAXCONN : Math.min(opts.shared, SOMAXCONN);
  try {
    if (opts.socketActivation > 0) await server.listen({ fd: 3 });
    else if (opts.socket !== undefined) await server.listen({ path: opts.socket, backlog });
    else await server.listen({ host: opts.bind, port: Number(opts.port), backlog });
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (opts.socketActivation > 0) o.error(`Failed to use socket activation: ${errorMessage(e)}`);
    else if (opts.socket !== undefined) {
      o.error(`Failed to bind socket to ${opts.socket}: ${code === 'EADDRINUSE' ? 'Address already in use' : errorMessage(e)}`);
    } else if (code === 'EADDRINUSE') o.error('Failed to find an available port: Address already in use');
    else o.error(`Failed to bind socket: ${errorMessage(e)}`);
    throw new ToolExit(1);
  }
}

/** The pid file qemu-nbd writes ("PID\n", mode 0600). */
export function writePidFile(o: ToolOutput, path: string): void {
  try {
    writeFileSync(path, `${process.pid}\n`, { mode: 0o600 });
  } catch (e) {
    o.error(`Failed to write PID file '${path}': ${errorMessage(e)}`);
    throw new ToolExit(1);
  }
}

/** Remove what we created: the Unix socket, the pid file, the -s overlay. */
export function cleanUp(created: (string | undefined)[]): void {
  for (const p of created) {
    if (p !== undefined && existsSync(p)) {
      try {
        unlinkSync(p);
      } catch {
        // Already gone or not ours to remove: nothing to do at exit.
      }
    }
  }
}

/**
 * Serve until the last negotiated client leaves (or forever with -t) or a signal arrives.
 * `ready` runs once the socket listens (the pid file, --fork's parent release).
 */
export async function serve(o: ToolOutput, opts: NbdToolOptions, ready: () => void): Promise<number> {
  const { bs, temporary } = await openExportImage(o, opts);
  const backend = new ExportBackend(bs, opts.offset, {
    unmap: opts.discard === 'unmap',
    detectZeroes: opts.detectZeroes,
    writethrough: opts.cache === 'writethrough' || opts.cache === 'directsync',
  });
  let server: NbdServer;
  try {
    server = makeServer(opts, backend);
  } catch (e) {
    await backend.close().catch(() => undefined);
    await bs.close().catch(() => undefined);
    cleanUp(temporary);
    o.error(errorMessage(e));
    throw new ToolExit(1);
  }
  // Only what we made goes at exit: a socket we failed to bind may be another server's.
  const created: (string | undefined)[] = [...temporary];
  server.on('error', (c) => o.error(c.message));
  let stop = (): void => undefined;
  const finished = new Promise<void>((resolveDone) => {
    stop = resolveDone;
    server.on('disconnect', (c) => {
      if (c.negotiated && c.clients === 0 && !opts.persistent) resolveDone();
    });
  });
  const signals = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;
  for (const sig of signals) process.on(sig, stop);
  try {
    await listen(o, opts, server);
    created.push(opts.socket);
    if (opts.pidFile !== undefined) {
      writePidFile(o, opts.pidFile);
      created.push(opts.pidFile);
    }
    ready();
    await finished;
    await server.close();
    return 0;
  } finally {
    for (const sig of signals) process.off(sig, stop);
    await server.close().catch(() => undefined);
    // The backend lets go of the node; the node is ours to close.
    await backend.close().catch(() => undefined);
    await bs.close().catch(() => undefined);
    cleanUp(created);
  }
}
