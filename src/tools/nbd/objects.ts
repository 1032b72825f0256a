// --object for blk-nbd: the QOM types qemu-nbd users pass (tls-creds-x509, tls-creds-psk,
// authz-simple, secret), parsed as QEMU's keyval (`type,key=value,...`, a doubled comma is a
// literal comma) and created at once: TLS credentials check their files when created, as
// QEMU's do, so a missing file is reported before anything else happens.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { addTlsCreds, removeTlsCreds, type TlsCredsObject } from '../../index.js';
import { splitOptionList } from '../img/create-options.js';

/** authz-simple objects by id: the one client certificate DN they allow. */
const authzObjects = new Map<string, string>();
const ids = new Set<string>();

function parseBool(key: string, v: string): boolean {
  if (['on', 'yes', 'true'].includes(v)) return true;
  if (['off', 'no', 'false'].includes(v)) return false;
  throw new Error(`Parameter '${key}' expects 'on' or 'off'`);
}

function requireFile(dir: string, name: string): void {
  const path = join(dir, name);
  if (!existsSync(path)) throw new Error(`Unable to access credentials ${path}: No such file or directory`);
}

const PROPS: Record<string, readonly string[]> = {
  'tls-creds-x509': ['id', 'dir', 'endpoint', 'verify-peer', 'priority', 'sanity-check', 'passwordid'],
  'tls-creds-psk': ['id', 'dir', 'endpoint', 'username', 'priority'],
  'authz-simple': ['id', 'identity'],
  secret: ['id', 'data', 'file', 'format', 'keyid', 'iv'],
};

/** Create the object `spec` describes (user_creatable_process_cmdline); throws with QEMU's text. */
export function addObject(spec: string): void {
  const [[type], ...rest] = splitOptionList(spec);
  const props: Record<string, string> = {};
  for (const [k, v] of rest) props[k] = v ?? 'on';
  const known = PROPS[type];
  if (known === undefined) throw new Error(`Parameter 'qom-type' does not accept value '${type}'`);
  const id = props.id;
  if (id === undefined) throw new Error("Parameter 'id' is missing");
  for (const k of Object.keys(props)) {
    if (!known.includes(k)) throw new Error(`Property '${type}.${k}' not found`);
  }
  if (ids.has(id)) throw new Error(`attempt to add duplicate property '${id}' to object (type 'container')`);

  if (type === 'tls-creds-x509' || type === 'tls-creds-psk') {
    const endpoint = props.endpoint ?? 'client';
    if (endpoint !== 'client' && endpoint !== 'server') {
      throw new Error(`Parameter 'endpoint' does not accept value '${endpoint}'`);
    }
    const dir = props.dir ?? '';
    const creds: TlsCredsObject = {
      id,
      type,
      dir,
      endpoint,
      verifyPeer: props['verify-peer'] === undefined ? true : parseBool('verify-peer', props['verify-peer']),
      username: props.username ?? 'qemu',
    };
    // The files are checked now, as QEMU loads credentials when the object is completed.
    if (type === 'tls-creds-psk') {
      requireFile(dir, 'keys.psk');
    } else {
      requireFile(dir, 'ca-cert.pem');
      if (endpoint === 'server') {
        requireFile(dir, 'server-cert.pem');
        requireFile(dir, 'server-key.pem');
      }
    }
    addTlsCreds(creds);
  } else if (type === 'authz-simple') {
    if (props.identity === undefined) throw new Error("Parameter 'identity' is missing");
    authzObjects.set(id, props.identity);
  }
  ids.add(id);
}

/** The DN an authz-simple object allows, with qemu-nbd's message for an unknown id. */
export function findAuthz(id: string): string {
  const dn = authzObjects.get(id);
  if (dn === undefined) throw new Error(`Cannot find authorization object '${id}'`);
  return dn;
}

/** Forget every object (tests run several command lines in one process). */
export function resetObjects(): void {
  for (const id of ids) {
    authzObjects.delete(id);
    removeTlsCreds(id);
  }
  ids.clear();
}
