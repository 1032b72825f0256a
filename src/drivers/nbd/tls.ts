/**
 * TLS from credentials objects (tls-objects.ts): Node's TLS options for either end, and the
 * client side of STARTTLS. An object names a directory: x509 reads ca-cert.pem and
 * client-cert.pem/client-key.pem (or server-*.pem); PSK reads keys.psk (`user:hexkey` lines).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ConnectionOptions, TLSSocket, TlsOptions } from 'node:tls';
import { BlockError } from '../../block/errors.js';
import type { OptionChannel } from './options.js';
import type { TlsCredsObject } from './tls-objects.js';

function readCredsFile(dir: string, name: string, required: boolean): Buffer | undefined {
  const path = join(dir, name);
  if (!existsSync(path)) {
    if (!required) return undefined;
    throw new BlockError('ENOENT', `Unable to access credentials ${path}: No such file or directory`);
  }
  return readFileSync(path);
}

/** `user:hexkey` lines of keys.psk: the key of `user`. */
export function pskKey(dir: string, user: string): Buffer | null {
  const text = readCredsFile(dir, 'keys.psk', true)?.toString('utf8') ?? '';
  for (const line of text.split('\n')) {
    const c = line.indexOf(':');
    if (c > 0 && line.slice(0, c) === user) return Buffer.from(line.slice(c + 1).trim(), 'hex');
  }
  return null;
}

/** Node's TLS options for a client using `creds`, but for the peer's name (peerOptions). */
export function clientTlsOptions(creds: TlsCredsObject): ConnectionOptions {
  if (creds.type === 'tls-creds-psk') {
    const key = pskKey(creds.dir, creds.username);
    if (key === null) throw new BlockError('EINVAL', `Unable to find PSK for username ${creds.username}`);
    return {
      ciphers: 'PSK',
      pskCallback: () => ({ psk: key, identity: creds.username }),
      checkServerIdentity: () => undefined,
    };
  }
  return {
    ca: readCredsFile(creds.dir, 'ca-cert.pem', true),
    cert: readCredsFile(creds.dir, 'client-cert.pem', false),
    key: readCredsFile(creds.dir, 'client-key.pem', false),
    rejectUnauthorized: creds.verifyPeer,
    minVersion: 'TLSv1.2',
  };
}

/**
 * The x509 certificate is checked against the host dialled or tls-hostname. SNI takes names,
 * not addresses: an IP is checked without being sent. Without verify-peer nothing is checked.
 * `isIP` is node:net's.
 */
function peerOptions(creds: TlsCredsObject, hostname: string | undefined, isIP: (host: string) => number): ConnectionOptions {
  if (creds.type === 'tls-creds-psk') return {};
  if (!creds.verifyPeer) return { checkServerIdentity: () => undefined };
  if (hostname === undefined) return {};
  return isIP(hostname) !== 0 ? { host: hostname } : { servername: hostname };
}

/**
 * Node's TLS options for a server using `creds`: x509 asks for (and with verify-peer checks)
 * a client certificate; PSK looks the client's identity up in keys.psk on every handshake.
 */
export function serverTlsOptions(creds: TlsCredsObject): TlsOptions {
  if (creds.type === 'tls-creds-psk') {
    return {
      ciphers: 'PSK',
      pskCallback: (_socket, identity) => pskKey(creds.dir, identity),
    };
  }
  return {
    ca: readCredsFile(creds.dir, 'ca-cert.pem', true),
    cert: readCredsFile(creds.dir, 'server-cert.pem', true),
    key: readCredsFile(creds.dir, 'server-key.pem', true),
    requestCert: creds.verifyPeer,
    rejectUnauthorized: creds.verifyPeer,
    minVersion: 'TLSv1.2',
  };
}

/**
 * The STARTTLS upgrade for a client with `creds`: the channel's socket becomes a TLS socket
 * once the handshake has succeeded.
 */
export function nbdClientTls(creds: TlsCredsObject, hostname: string | undefined): (ch: OptionChannel) => Promise<void> {
  // The credentials are read now: a missing file fails the open before anything is dialled.
  const options = clientTlsOptions(creds);
  return async (ch) => {
    // Over a Unix socket there is no host to check the certificate against: QEMU refuses.
    if (creds.type === 'tls-creds-x509' && creds.verifyPeer && hostname === undefined) {
      throw new BlockError('EINVAL', 'No hostname for certificate validation', { op: 'nbd-tls' });
    }
    // node:tls and node:net (with node:crypto) are loaded for a connection that asks for TLS
    // only: loading them took ~10 ms of every tool's start.
    const [tls, net] = await Promise.all([import('node:tls'), import('node:net')]);
    ch.reader.detach();
    const tlsSock = await new Promise<TLSSocket>((resolve, reject) => {
      const s = tls.connect({ ...options, ...peerOptions(creds, hostname, net.isIP), socket: ch.sock });
      s.once('secureConnect', () => resolve(s));
      s.once('error', (e: Error) => reject(new BlockError('EIO', e.message, { op: 'nbd-tls', cause: e })));
    });
    ch.sock = tlsSock;
    ch.reader.attach(tlsSock);
  };
}
