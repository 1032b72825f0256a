/**
 * The QOM object types NBD uses, for `--object` and the ObjectTable: tls-creds-x509 and
 * tls-creds-psk (a directory of credentials, checked when the object is made, as QEMU loads
 * them then) and authz-simple (the one client DN a server lets in). The Node entry registers
 * them (registerObjectType); nodes and servers find them by id in the table they were given.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BlockError } from '../../block/errors.js';
import { parseOptBool } from '../../block/options.js';
import type { ObjectPropertySpec, ObjectTable, UserObjectType } from '../../block/objects.js';

export interface TlsCredsObject {
  id: string;
  type: 'tls-creds-x509' | 'tls-creds-psk';
  dir: string;
  endpoint: 'client' | 'server';
  /** x509: check the peer's certificate (default on). */
  verifyPeer: boolean;
  /** PSK: the client's identity (default "qemu"). */
  username: string;
}

/** An authz-simple object: the identity (certificate DN) it allows. */
export interface AuthzSimpleObject {
  id: string;
  identity: string;
}

function requireFile(dir: string, name: string): void {
  const path = join(dir, name);
  if (!existsSync(path)) throw new BlockError('ENOENT', `Unable to access credentials ${path}: No such file or directory`, { op: 'object', path });
}

const ENDPOINTS = ['client', 'server'] as const;

function tlsCredsType(type: TlsCredsObject['type']): UserObjectType {
  const common: ObjectPropertySpec[] = [
    { name: 'dir', type: 'string' },
    { name: 'endpoint', type: 'QCryptoTLSCredsEndpoint', values: ENDPOINTS },
  ];
  const own: ObjectPropertySpec[] =
    type === 'tls-creds-psk'
      ? [{ name: 'priority', type: 'string' }, { name: 'username', type: 'string' }, { name: 'verify-peer', type: 'bool' }]
      : [
          { name: 'passwordid', type: 'string' },
          { name: 'priority', type: 'string' },
          { name: 'sanity-check', type: 'bool' },
          { name: 'verify-peer', type: 'bool' },
        ];
  return {
    typeName: type,
    properties: [...common, ...own],
    create(id, props): TlsCredsObject {
      const endpoint = (props.get('endpoint') ?? 'client') as TlsCredsObject['endpoint'];
      const dir = props.get('dir') ?? '';
      const verify = props.get('verify-peer');
      // The files are checked now, as QEMU loads credentials when the object is completed.
      if (type === 'tls-creds-psk') requireFile(dir, 'keys.psk');
      else {
        requireFile(dir, 'ca-cert.pem');
        if (endpoint === 'server') {
          requireFile(dir, 'server-cert.pem');
          requireFile(dir, 'server-key.pem');
        }
      }
      return {
        id,
        type,
        dir,
        endpoint,
        verifyPeer: verify === undefined ? true : parseOptBool('verify-peer', verify),
        username: props.get('username') ?? 'qemu',
      };
    },
  };
}

export const tlsCredsX509Type: UserObjectType = tlsCredsType('tls-creds-x509');
export const tlsCredsPskType: UserObjectType = tlsCredsType('tls-creds-psk');

export const authzSimpleType: UserObjectType = {
  typeName: 'authz-simple',
  properties: [{ name: 'identity', type: 'string' }],
  create(id, props): AuthzSimpleObject {
    const identity = props.get('identity');
    if (identity === undefined) throw new BlockError('EINVAL', "Parameter 'identity' is missing", { op: 'object' });
    return { id, identity };
  },
};

/**
 * The TLS credentials `id` in `objects` for `endpoint`, with QEMU's messages when they do not
 * fit. qemu-nbd and the nbd block driver word a wrong endpoint differently: `by` says whose
 * words to use.
 */
export function findTlsCreds(
  objects: ObjectTable | undefined,
  id: string,
  endpoint: 'client' | 'server',
  by: 'qemu-nbd' | 'driver' = 'qemu-nbd',
): TlsCredsObject {
  const obj = objects?.get<TlsCredsObject>(id, 'tls-creds-x509') ?? objects?.get<TlsCredsObject>(id, 'tls-creds-psk');
  if (obj === undefined) throw new BlockError('EINVAL', `No TLS credentials with id '${id}'`, { op: 'open' });
  if (obj.endpoint !== endpoint) {
    const msg = by === 'driver' ? `Expected TLS credentials for a ${endpoint} endpoint` : `Expecting TLS credentials with a ${endpoint} endpoint`;
    throw new BlockError('EINVAL', msg, { op: 'open' });
  }
  return obj;
}

/** The authz-simple object `id`, with qemu-nbd's message for an unknown one. */
export function findAuthz(objects: ObjectTable | undefined, id: string): AuthzSimpleObject {
  const obj = objects?.get<AuthzSimpleObject>(id, 'authz-simple');
  if (obj === undefined) throw new BlockError('ENOENT', `Cannot find authorization object '${id}'`, { op: 'object' });
  return obj;
}
