/**
 * The `nbd` protocol driver: a block node whose storage is an export of an NBD server
 * (QEMU's block/nbd.c). Filenames and options: config.ts; handshake: handshake.ts; requests
 * on the wire: session.ts. This file maps block-layer hooks to NBD commands with QEMU's limits:
 *
 * - request alignment = the server's minimum block size, or, without one, 1 when block status
 *   is available or the size is not sector-aligned, else 512 (nbd_refresh_limits);
 * - READ/WRITE and WRITE_ZEROES split at min(32 MiB, server maximum), TRIM at INT_MAX;
 * - block status asks with REQ_ONE for one extent and maps HOLE -> no data, ZERO -> zero;
 * - FUA, TRIM, WRITE_ZEROES, FAST_ZERO, FLUSH used only when the server offers them;
 * - with reconnect-delay, requests that find the connection lost wait for a new one (send).
 */
import type { BlockDriver, BlockStatus, OpenOptions, WriteFlags, WriteZeroesFlags } from '../../block/driver.js';
import { BlockError } from '../../block/errors.js';
import type { IOVector } from '../../block/iovec.js';
import type { BlockDriverState } from '../../block/node.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_MAX_BUFFER_SIZE,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from '../../nbd/protocol.js';
import { NBD_RUNTIME_OPTS, nbdCanonicalName, nbdConfig, nbdParseFilenameInto, type NbdConfig } from './config.js';
import { nbdEstablishConnection } from './connect.js';
import type { HandshakeRequest } from './handshake.js';
import { NbdSession, type NbdReply, type RequestOptions } from './session.js';
import { nbdClientTls } from './tls.js';
import { findTlsCreds } from './tls-objects.js';

const INT_MAX = 0x7fffffff;

interface NbdState {
  cfg: NbdConfig;
  /** The STARTTLS upgrade, kept for reconnecting. */
  tls: HandshakeRequest['startTls'];
  /** The current connection; replaced when reconnect-delay brings a lost one back. */
  session: NbdSession;
  /** When the connection was found lost (ms), while it is not back. */
  lostAt: number | null;
  /** The reconnect in progress, shared by the requests that wait for it. */
  reconnecting: Promise<void> | null;
  /** Largest READ/WRITE/WRITE_ZEROES we send. */
  maxTransfer: number;
  /** Largest TRIM and BLOCK_STATUS length. */
  maxDiscard: number;
}

function state(bs: BlockDriverState): NbdState {
  const s = bs.opaque as NbdState | null;
  if (s === null) throw new BlockError('EBADF', `'${bs.filename}' is not open`, { op: 'nbd', path: bs.filename });
  return s;
}

function roundDown(n: number, align: number): number {
  return n - (n % align);
}

function has(s: NbdState, flag: number): boolean {
  return (s.session.info.flags & flag) !== 0;
}

/** nbd_refresh_limits: the alignment and the largest requests, from what the server said. */
function limits(info: NbdSession['info']): { align: number; maxTransfer: number; maxDiscard: number } {
  let align = info.minBlock;
  if (align === 0) align = info.size % 512 !== 0 || info.contextId !== null ? 1 : 512;
  const max = Math.min(NBD_MAX_BUFFER_SIZE, info.maxBlock === 0 ? NBD_MAX_BUFFER_SIZE : info.maxBlock);
  return { align, maxTransfer: Math.max(align, roundDown(max, align)), maxDiscard: roundDown(INT_MAX, align) };
}

async function nbdOpen(bs: BlockDriverState, options: OpenOptions): Promise<void> {
  const cfg = nbdConfig(bs.filename, options.driverOptions ?? {});
  const creds = cfg.tlsCreds === undefined ? undefined : findTlsCreds(options.objects, cfg.tlsCreds, 'client', 'driver');
  const tls = creds === undefined ? undefined : nbdClientTls(creds, cfg.tlsHostname);
  const conn = await nbdEstablishConnection(cfg, tls);
  const session = new NbdSession(conn.sock, conn.reader, conn.info, conn.route);
  // A read-only export opened for writing fails the open, as bdrv_apply_auto_read_only does.
  if ((conn.info.flags & NBD_FLAG_READ_ONLY) !== 0 && !bs.readOnly) {
    await session.disconnect();
    throw new BlockError('EACCES', 'NBD export is read-only', { op: 'open', path: bs.filename });
  }
  const lim = limits(conn.info);
  bs.requestAlignment = lim.align;
  // Shown by info as QEMU shows it (nbd_refresh_filename), whatever spelling opened it;
  // an address without a URI spelling leaves the node shown by its options.
  bs.exactFilename = nbdCanonicalName(cfg);
  bs.opaque = {
    cfg,
    tls,
    session,
    lostAt: null,
    reconnecting: null,
    maxTransfer: lim.maxTransfer,
    maxDiscard: lim.maxDiscard,
  } satisfies NbdState;
}

/**
 * Bring a lost connection back (reconnect-delay): new connections are tried every second
 * until `reconnect-delay` seconds after the loss; the export must still have its size. Shared
 * by every request that finds the connection gone.
 */
function reconnect(s: NbdState): Promise<void> {
  s.lostAt ??= Date.now();
  const deadline = s.lostAt + s.cfg.reconnectDelay * 1000;
  s.reconnecting ??= (async () => {
    for (;;) {
      try {
        const conn = await nbdEstablishConnection({ ...s.cfg, openTimeout: 0 }, s.tls);
        if (conn.info.size !== s.session.info.size) {
          conn.sock.destroy();
          throw new BlockError('EIO', 'Cannot reconnect: the export size changed', { op: 'nbd' });
        }
        s.session = new NbdSession(conn.sock, conn.reader, conn.info, conn.route);
        s.lostAt = null;
        return;
      } catch (e) {
        if (Date.now() + 1000 > deadline) {
          throw new BlockError('EIO', `NBD reconnect failed: ${e instanceof Error ? e.message : String(e)}`, { op: 'nbd', cause: e });
        }
        await new Promise<void>((resolve) => setTimeout(resolve, 1000).unref());
      }
    }
  })().finally(() => {
    s.reconnecting = null;
  });
  return s.reconnecting;
}

/**
 * One request on the current connection. When the connection is gone and reconnect-delay is
 * set, the request waits for a new one and is sent again (as QEMU resends what was in flight);
 * otherwise it fails with the connection's EIO.
 */
async function send(s: NbdState, cmd: number, offset: number, len: number, opts: RequestOptions = {}): Promise<NbdReply> {
  try {
    return await s.session.request(cmd, offset, len, opts);
  } catch (e) {
    if (s.session.alive || s.cfg.reconnectDelay === 0) throw e;
    await reconnect(s);
    return s.session.request(cmd, offset, len, opts);
  }
}

async function nbdClose(bs: BlockDriverState): Promise<void> {
  const s = bs.opaque as NbdState | null;
  bs.opaque = null;
  if (s !== null) await s.session.disconnect();
}

/** Run `fn` over [offset, offset+bytes) in pieces of at most `max`, all in flight together. */
async function split(
  offset: number,
  bytes: number,
  max: number,
  fn: (off: number, len: number, rel: number) => Promise<unknown>,
): Promise<void> {
  if (bytes <= max) {
    await fn(offset, bytes, 0);
    return;
  }
  const parts: Promise<unknown>[] = [];
  for (let rel = 0; rel < bytes; rel += max) parts.push(fn(offset + rel, Math.min(max, bytes - rel), rel));
  // Every piece settles before we report, so no request outlives the call.
  const results = await Promise.allSettled(parts);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

async function nbdCoPreadv(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector): Promise<void> {
  const s = state(bs);
  await split(offset, bytes, s.maxTransfer, (off, len, rel) =>
    send(s, NBD_CMD_READ, off, len, { into: qiov.slice(rel, len) }),
  );
}

async function nbdCoPwritev(bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector, flags: WriteFlags): Promise<void> {
  const s = state(bs);
  const fua = flags.fua === true && has(s, NBD_FLAG_SEND_FUA);
  await split(offset, bytes, s.maxTransfer, (off, len, rel) =>
    send(s, NBD_CMD_WRITE, off, len, { payload: qiov.slice(rel, len), flags: fua ? NBD_CMD_FLAG_FUA : 0 }),
  );
  // A server without FUA: a flush gives the durability the caller asked for.
  if (flags.fua === true && !fua) await nbdCoFlush(bs);
}

async function nbdCoFlush(bs: BlockDriverState): Promise<void> {
  const s = state(bs);
  // Without SEND_FLUSH the server has nothing to flush (its writes are durable), as QEMU assumes.
  if (!has(s, NBD_FLAG_SEND_FLUSH)) return;
  await send(s, NBD_CMD_FLUSH, 0, 0);
}

async function nbdCoWriteZeroes(bs: BlockDriverState, offset: number, bytes: number, flags: WriteZeroesFlags): Promise<void> {
  const s = state(bs);
  if (!has(s, NBD_FLAG_SEND_WRITE_ZEROES)) {
    throw new BlockError('ENOTSUP', 'NBD server does not support write zeroes', { op: 'write_zeroes', offset });
  }
  let cmdFlags = flags.mayUnmap === true ? 0 : NBD_CMD_FLAG_NO_HOLE;
  if (flags.noFallback === true) {
    if (!has(s, NBD_FLAG_SEND_FAST_ZERO)) {
      throw new BlockError('ENOTSUP', 'NBD server does not support fast zeroing', { op: 'write_zeroes', offset });
    }
    cmdFlags |= NBD_CMD_FLAG_FAST_ZERO;
  }
  await split(offset, bytes, s.maxTransfer, (off, len) => send(s, NBD_CMD_WRITE_ZEROES, off, len, { flags: cmdFlags }));
}

async function nbdCoDiscard(bs: BlockDriverState, offset: number, bytes: number): Promise<void> {
  const s = state(bs);
  // TRIM is a hint: a server that does not take it leaves the data, which is allowed.
  if (!has(s, NBD_FLAG_SEND_TRIM)) return;
  await split(offset, bytes, s.maxDiscard, (off, len) => send(s, NBD_CMD_TRIM, off, len));
}

async function nbdCoBlockStatus(bs: BlockDriverState, offset: number, bytes: number): Promise<BlockStatus> {
  const s = state(bs);
  const { info } = s.session;
  // Without a context the server cannot tell: everything is data, as QEMU reports.
  if (info.contextId === null) return { pnum: bytes, allocated: true, data: true, zero: false, offset, file: bs };
  const len = Math.min(bytes, info.size - offset, s.maxDiscard);
  const p = await send(s, NBD_CMD_BLOCK_STATUS, offset, len, { flags: NBD_CMD_FLAG_REQ_ONE });
  const extent = p.extent;
  if (extent === null) throw new BlockError('EIO', 'Protocol error: no block status received', { op: 'block_status', offset });
  // A descriptor past the request is clipped; one shorter than the alignment is rounded up
  // to it, since the generic layer only asks aligned questions.
  let pnum = Math.min(extent.length, len);
  if (pnum < bs.requestAlignment) pnum = Math.min(len, bs.requestAlignment);
  const data = (extent.flags & NBD_STATE_HOLE) === 0;
  const zero = (extent.flags & NBD_STATE_ZERO) !== 0;
  // Neither data nor zero (a dirty range under x-dirty-bitmap) is not allocated, as in QEMU,
  // where only DATA or ZERO makes a protocol's answer ALLOCATED.
  return { pnum, allocated: data || zero, data, zero, offset, file: bs };
}

function nbdGetLength(bs: BlockDriverState): number {
  return state(bs).session.info.size;
}

/** NBD cannot resize; asking for the size it has is fine (nbd_co_truncate). */
async function nbdTruncate(bs: BlockDriverState, size: number): Promise<void> {
  const cur = state(bs).session.info.size;
  if (size > cur) throw new BlockError('EINVAL', 'Cannot grow NBD nodes', { op: 'truncate', offset: size });
  if (size !== cur) throw new BlockError('ENOTSUP', 'Cannot resize NBD nodes', { op: 'truncate', offset: size });
}

export const nbdDriver: BlockDriver = {
  formatName: 'nbd',
  protocolName: 'nbd',
  protocolAliases: ['nbd+tcp', 'nbd+unix'],
  isProtocol: true,
  // server.* and export say where to connect: a node opened from options has no filename.
  needsFilename: false,
  runtimeOptions: NBD_RUNTIME_OPTS,
  parseFilename: nbdParseFilenameInto,
  supportsFua: true,
  requestAlignment: 1,
  open: nbdOpen,
  close: nbdClose,
  coPreadv: nbdCoPreadv,
  coPwritev: nbdCoPwritev,
  coFlush: nbdCoFlush,
  coWriteZeroes: nbdCoWriteZeroes,
  coDiscard: nbdCoDiscard,
  coBlockStatus: nbdCoBlockStatus,
  getLength: nbdGetLength,
  truncate: nbdTruncate,
};
