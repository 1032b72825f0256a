/**
 * TLS from credentials objects (tls-objects.ts): Node's TLS options for either end, and the
 * client side of STARTTLS. An object names a directory: x509 reads ca-cert.pem and
 * client-cert.pem/client-key.pem (or server-*.pem); PSK reads keys.psk (`user:hexkey` lines).
 */
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket, type TlsOptions } from 'node:tls';
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

/** Node's TLS options for a client using `creds` towards `hostname`. */
export function clientTlsOptions(creds: TlsCredsObject, hostname: string | undefined): ConnectionOptions {
  if (creds.type === 'tls-creds-psk') {
    const key = pskKey(creds.dir, creds.username);
    if (key === null) throw new BlockError('EINVAL', `Unable to find PSK for username ${creds.username}`);
    return {
      ciphers: 'PSK',
      pskCallback: () => ({ psk: key, identity: creds.username }),
      checkServerIdentity: () => undefined,
    };
  }
  const opts: ConnectionOptions = {
    ca: readCredsFile(creds.dir, 'ca-cert.pem', true),
    cert: readCredsFile(creds.dir, 'client-cert.pem', false),
    key: readCredsFile(creds.dir, 'client-key.pem', false),
    rejectUnauthorized: creds.verifyPeer,
    minVersion: 'TLSv1.2',
  };
  // The certificate is checked against the host dialled or tls-hostname. SNI takes names, not
  // addresses: an IP is checked without being sent. Without verify-peer nothing is checked.
  if (!creds.verifyPeer) opts.checkServerIdentity = () => undefined;
  else if (hostname !== undefined && isIP(hostname) !== 0) opts.host = hostname;
  else if (hostname !== undefined) opts.servername = hostname;
  return opts;
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
  const options = clientTlsOptions(creds, hostname);
  return async (ch) => {
    // Over a Unix socket there is no host to check the certificate against: QEMU refuses.
    if (creds.type === 'tls-creds-x509' && creds.verifyPeer && hostname === undefined) {
      throw new BlockError('EINVAL', 'No hostname for certificate validation', { op: 'nbd-tls' });
    }
    ch.reader.detach();
    const tlsSock = await new Promise<TLSSocket>((resolve, reject) => {
      const s = tlsConnect({ ...options, socket: ch.sock });
      s.once('secureConnect', () => resolve(s));
      s.once('error', (e: Error) => reject(new BlockError('EIO', e.message, { op: 'nbd-tls', cause: e })));
    });
    ch.sock = tlsSock;
    ch.reader.attach(tlsSock);
  };
}
