/**
 * Opening a connection to an NBD server: the socket (TCP or Unix), retried until
 * `open-timeout` runs out, then the handshake. QEMU's texts for connect failures.
 */
import type { Socket } from 'node:net';
import { BlockError, type BlockErrorCode } from '../../block/errors.js';
import type { NbdConfig, NbdServerAddress } from './config.js';
import { nbdReceiveNegotiate, type HandshakeRequest, type NbdExportInfo } from './handshake.js';
import { OptionChannel } from './options.js';
import { SocketReader } from '../../nbd/reader.js';
import { OnreadRoute } from './onread.js';

/** Socket errno names Node reports, with Linux's numbers and texts. */
const SOCKET_ERRNO: Record<string, { errno: number; text: string; code: BlockErrorCode }> = {
  ECONNREFUSED: { errno: 111, text: 'Connection refused', code: 'EIO' },
  ECONNRESET: { errno: 104, text: 'Connection reset by peer', code: 'EIO' },
  ETIMEDOUT: { errno: 110, text: 'Connection timed out', code: 'EIO' },
  EHOSTUNREACH: { errno: 113, text: 'No route to host', code: 'EIO' },
  ENETUNREACH: { errno: 101, text: 'Network is unreachable', code: 'EIO' },
  EADDRNOTAVAIL: { errno: 99, text: 'Cannot assign requested address', code: 'EIO' },
  ENOENT: { errno: 2, text: 'No such file or directory', code: 'ENOENT' },
  EACCES: { errno: 13, text: 'Permission denied', code: 'EACCES' },
  ENOTSOCK: { errno: 88, text: 'Socket operation on non-socket', code: 'EIO' },
  EPIPE: { errno: 32, text: 'Broken pipe', code: 'EIO' },
};

/** 'host:port' or the socket path, as QEMU names the address in messages. */
export function addressLabel(addr: NbdServerAddress): string {
  return addr.type === 'unix' ? addr.path : `${addr.host}:${addr.port}`;
}

/** "Failed to connect to 'ADDR': <strerror>" with the errno kept. */
export function connectError(addr: NbdServerAddress, e: unknown): BlockError {
  const sys = (e as { code?: unknown } | null)?.code;
  if (sys === 'ENOTFOUND' || sys === 'EAI_AGAIN') {
    const a = addr as { host: string; port: string };
    return new BlockError('EIO', `address resolution failed for ${a.host}:${a.port}: Name or service not known`, { op: 'open', cause: e });
  }
  const known = typeof sys === 'string' ? SOCKET_ERRNO[sys] : undefined;
  const text = known?.text ?? (e instanceof Error ? e.message : String(e));
  return new BlockError(known?.code ?? 'EIO', `Failed to connect to '${addressLabel(addr)}': ${text}`, {
    op: 'open',
    cause: e,
    errno: known?.errno,
    errnoText: known?.text,
  });
}

type Onread = OnreadRoute['onread'];

/** One connection attempt: a connected socket or a BlockError. */
export async function connectSocket(addr: NbdServerAddress, onread?: Onread): Promise<Socket> {
  // Loaded on the first connection: a tool that opens no NBD image never pays for node:net.
  const { connect: netConnect } = await import('node:net');
  return new Promise<Socket>((resolve, reject) => {
    // An abstract socket's name starts with a NUL byte (Linux). A port above 65535 keeps its
    // low 16 bits, as getaddrinfo's numeric service does for QEMU.
    const sock =
      addr.type === 'unix'
        ? netConnect({ path: addr.abstract === true ? `\0${addr.path}` : addr.path, onread })
        : netConnect({ host: addr.host, port: Number(addr.port) % 65536, family: addr.family, onread });
    const onError = (e: Error): void => {
      sock.destroy();
      reject(connectError(addr, e));
    };
    sock.once('error', onError);
    sock.once('connect', () => {
      sock.off('error', onError);
      sock.setNoDelay(true);
      if (addr.type === 'inet' && addr.keepAlive === true) sock.setKeepAlive(true);
      resolve(sock);
    });
  });
}

/** Connect, retrying every second while `openTimeout` seconds have not passed. */
async function connectWithRetry(addr: NbdServerAddress, openTimeout: number, onread?: Onread): Promise<Socket> {
  const deadline = Date.now() + openTimeout * 1000;
  for (;;) {
    try {
      return await connectSocket(addr, onread);
    } catch (e) {
      if (Date.now() + 1000 > deadline) throw e;
      await new Promise<void>((resolve) => setTimeout(resolve, 1000).unref());
    }
  }
}

export interface NbdConnection {
  sock: Socket;
  reader: SocketReader;
  info: NbdExportInfo;
  /** Where the socket reads into (no TLS): the session takes it over. */
  route: OnreadRoute | undefined;
}

/**
 * A connection in transmission phase for `cfg`. On a failed handshake the socket is closed and
 * the error says why in QEMU's words.
 */
export async function nbdEstablishConnection(
  cfg: NbdConfig,
  startTls?: HandshakeRequest['startTls'],
): Promise<NbdConnection> {
  // Without TLS the socket reads into buffers we choose (onread.ts); a TLS layer reads the
  // raw socket itself, so there the socket keeps Node's own buffers.
  const route = startTls === undefined ? new OnreadRoute() : undefined;
  const sock = await connectWithRetry(cfg.server, cfg.openTimeout, route?.onread);
  const reader = new SocketReader(sock);
  route?.toReader(reader);
  const ch = new OptionChannel(sock, reader);
  try {
    const info = await nbdReceiveNegotiate(ch, {
      exportName: cfg.export,
      structuredReply: true,
      metaContext: cfg.dirtyBitmap ?? 'base:allocation',
      startTls,
    });
    return { sock: ch.sock as Socket, reader: ch.reader, info, route };
  } catch (e) {
    ch.sock.destroy();
    sock.destroy();
    throw e;
  }
}
