/**
 * User-creatable objects (`--object TYPE,id=ID,...`, QEMU's qom/object_interfaces.c): a table
 * the tools fill from their command line and drivers look objects up in by id. Object types are
 * registered (`secret` here; the Node entry adds TLS credentials and authz-simple), each with
 * its properties and a constructor that validates them, so a bad definition is refused before
 * anything opens.
 *
 * Pure: a type that reads a file (secret's `file=`) gets the bytes through the context the tool
 * supplies; no `node:` import here.
 */
import { BlockError } from './errors.js';
import { badIdError, idWellformed, parseOptBool } from './options.js';
import { parseQemuJson, type QValue } from './qjson.js';

/** What object constructors may use: reading a host file (the tools give Node's). */
export interface ObjectContext {
  /**
   * The file's bytes; throws a BlockError whose errnoMessage says why. Synchronous, as QEMU
   * reads it while it parses the command line (an error stops the parse where it stands).
   */
  readFile?(path: string): Uint8Array;
  /** Objects defined so far (a secret's keyid names another secret). */
  table: ObjectTable;
}

export interface ObjectPropertySpec {
  name: string;
  /** The type name `TYPE,help` prints (`string`, `QCryptoSecretFormat`). */
  type: string;
  /** Allowed values, for enumerations. */
  values?: readonly string[];
}

export interface UserObjectType {
  readonly typeName: string;
  readonly properties: readonly ObjectPropertySpec[];
  /** Build the object from checked property values (strings), or throw QEMU's message. */
  create(id: string, props: Map<string, string>, ctx: ObjectContext): unknown;
}

/** keyval_parse with the implied key `qom-type`: `secret,id=s,data=a,,b`. */
export function parseObjectKeyval(text: string): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  let first = true;
  while (i < text.length) {
    const m = /[=,]/.exec(text.slice(i));
    const len = m === null ? text.length - i : m.index;
    let key: string;
    const word = text.slice(i, i + len);
    if (text[i + len] !== '=' && !first && (word === 'help' || word === '?')) {
      // `TYPE,help` asks for the type's properties (keyval_parse's help request).
      out.set('help', 'on');
      i += len + 1;
      continue;
    }
    if (text[i + len] !== '=') {
      if (!first) throw new BlockError('EINVAL', `Expected '=' after parameter '${word}'`, { op: 'object' });
      key = 'qom-type';
    } else {
      key = text.slice(i, i + len);
      if (!/^[A-Za-z0-9_\-.]+$/.test(key)) throw new BlockError('EINVAL', `Invalid parameter '${key}'`, { op: 'object' });
      i += len + 1;
    }
    let value = '';
    while (i < text.length) {
      if (text[i] === ',') {
        if (text[i + 1] !== ',') break;
        i++;
      }
      value += text[i++];
    }
    i++;
    first = false;
    out.set(key, value);
  }
  return out;
}

/** An --object argument: keyval text, or a JSON object when it starts with '{'. */
export function parseObjectDefinition(text: string): Map<string, string> {
  if (!text.startsWith('{')) return parseObjectKeyval(text);
  const v = parseQemuJson(text);
  if (typeof v !== 'object' || v === null || Array.isArray(v) || typeof v === 'bigint') {
    throw new BlockError('EINVAL', 'Invalid JSON object given', { op: 'object' });
  }
  const out = new Map<string, string>();
  for (const [k, x] of Object.entries(v)) {
    const s = scalarString(x);
    if (s === null) throw new BlockError('EINVAL', `Invalid parameter type for '${k}', expected: string`, { op: 'object' });
    out.set(k, s);
  }
  return out;
}

function scalarString(v: QValue): string | null {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  return null;
}

/** The types every new ObjectTable knows (QEMU's type_init): secret, and what entries add. */
const defaultObjectTypes: UserObjectType[] = [];

/**
 * Make `t` known to every ObjectTable created from now on. The Node entry adds the TLS
 * credentials and authz-simple this way, as QEMU registers its QOM types at start-up.
 */
export function registerObjectType(t: UserObjectType): void {
  const i = defaultObjectTypes.findIndex((x) => x.typeName === t.typeName);
  if (i >= 0) defaultObjectTypes[i] = t;
  else defaultObjectTypes.push(t);
}

/** The objects of one program run, by id (QEMU's /objects container). */
export class ObjectTable {
  private readonly types = new Map<string, UserObjectType>();
  private readonly objects = new Map<string, { type: string; value: unknown }>();

  constructor(types: readonly UserObjectType[] = defaultObjectTypes) {
    for (const t of types) this.registerType(t);
  }

  registerType(t: UserObjectType): this {
    this.types.set(t.typeName, t);
    return this;
  }

  /** Type names, sorted (what `--object help` lists). */
  typeNames(): string[] {
    return [...this.types.keys()].sort();
  }

  /** `TYPE,help`: the properties of a type, or undefined for an unknown type. */
  typeProperties(name: string): readonly ObjectPropertySpec[] | undefined {
    return this.types.get(name)?.properties;
  }

  /**
   * user_creatable_add_qapi: check the definition against its type and add the object.
   * Messages are QEMU's.
   */
  add(def: Map<string, string>, ctx: Omit<ObjectContext, 'table'> = {}): void {
    const typeName = def.get('qom-type');
    if (typeName === undefined) throw new BlockError('EINVAL', "Parameter 'qom-type' is missing", { op: 'object' });
    const type = this.types.get(typeName);
    if (type === undefined) {
      throw new BlockError('EINVAL', `Parameter 'qom-type' does not accept value '${typeName}'`, { op: 'object' });
    }
    const id = def.get('id');
    if (id === undefined) throw new BlockError('EINVAL', "Parameter 'id' is missing", { op: 'object' });
    if (!idWellformed(id)) throw badIdError();
    const props = new Map<string, string>();
    for (const [k, v] of def) {
      if (k === 'qom-type' || k === 'id') continue;
      const spec = type.properties.find((p) => p.name === k);
      if (spec === undefined) throw new BlockError('EINVAL', `Parameter '${k}' is unexpected`, { op: 'object' });
      if (spec.values !== undefined && !spec.values.includes(v)) {
        throw new BlockError('EINVAL', `Parameter '${k}' does not accept value '${v}'`, { op: 'object' });
      }
      if (spec.type === 'bool') parseOptBool(k, v);
      props.set(k, v);
    }
    const value = type.create(id, props, { ...ctx, table: this });
    if (this.objects.has(id)) {
      throw new BlockError('EEXIST', `attempt to add duplicate property '${id}' to object (type 'container')`, { op: 'object' });
    }
    this.objects.set(id, { type: typeName, value });
  }

  /** The object `id` if it is of type `typeName`. */
  get<T>(id: string, typeName: string): T | undefined {
    const o = this.objects.get(id);
    return o !== undefined && o.type === typeName ? (o.value as T) : undefined;
  }
}

/** A secret: its bytes, as `data=` or `file=` gave them (decoded from base64 if so). */
export interface SecretObject {
  readonly id: string;
  readonly data: Uint8Array;
}

/** g_base64_decode: lenient, skipping what is not base64, stopping at padding. */
function base64Decode(s: string): Uint8Array {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const out: number[] = [];
  let acc = 0;
  let bits = 0;
  for (const ch of s) {
    if (ch === '=') break;
    const v = alphabet.indexOf(ch);
    if (v < 0) continue;
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
  }
  return Uint8Array.from(out);
}

/** The `secret` type (crypto/secret.c): data= or file=, format=raw|base64, keyid/iv. */
export const secretObjectType: UserObjectType = {
  typeName: 'secret',
  properties: [
    { name: 'data', type: 'string' },
    { name: 'file', type: 'string' },
    { name: 'format', type: 'QCryptoSecretFormat', values: ['raw', 'base64'] },
    { name: 'iv', type: 'string' },
    { name: 'keyid', type: 'string' },
  ],
  create(id, props, ctx): SecretObject {
    const data = props.get('data');
    const file = props.get('file');
    if (data !== undefined && file !== undefined) {
      throw new BlockError('EINVAL', "'file' and 'data' are mutually exclusive", { op: 'object' });
    }
    let bytes: Uint8Array;
    if (data !== undefined) bytes = new TextEncoder().encode(data);
    else if (file !== undefined) {
      if (!ctx.readFile) throw new BlockError('ENOTSUP', `Unable to read ${file}: no host files here`, { op: 'object', path: file });
      try {
        bytes = ctx.readFile(file);
      } catch (e) {
        const why = e instanceof BlockError ? e.errnoMessage : String(e);
        throw new BlockError('ENOENT', `Unable to read ${file}: Failed to open file \u201c${file}\u201d: ${why}`, { op: 'object', path: file, cause: e });
      }
    } else throw new BlockError('EINVAL', "Either 'file' or 'data' must be provided", { op: 'object' });
    const keyid = props.get('keyid');
    if (keyid !== undefined) {
      if (ctx.table.get<SecretObject>(keyid, 'secret') === undefined) {
        throw new BlockError('ENOENT', `No secret with id '${keyid}'`, { op: 'object' });
      }
      // Decrypting with another secret (AES-256-CBC) needs a cipher the core does not carry.
      throw new BlockError('ENOTSUP', `Secret '${id}': decryption with keyid is not supported`, { op: 'object' });
    }
    if (props.get('format') === 'base64') bytes = base64Decode(new TextDecoder().decode(bytes));
    return { id, data: bytes };
  },
};

registerObjectType(secretObjectType);
