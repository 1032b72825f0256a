/**
 * QEMU's QDict as the block layer's options (qobject/qdict.c, block-qdict.c): one flat map
 * from dotted keys (`file.filename`, `backing.file.driver`) to values, the form every
 * option source is turned into before a node opens: `-o` / `--image-opts` strings, `json:`
 * filenames (flattened), and nested objects from library callers (flattened the same way).
 *
 * A driver takes the keys it knows; `file.*` and `backing.*` go to the children; whatever is
 * left is an error that names the first leftover key, and "first" means QEMU's hash-table
 * order (qdictOrder), which is what makes the message the same as QEMU's when several are left.
 */
import { BlockError } from './errors.js';
import type { QValue } from './qjson.js';

export type { QValue } from './qjson.js';

/** A flat QDict: dotted keys in insertion order. Values are scalars, or empty objects/lists. */
export type FlatQDict = Map<string, QValue>;

/** A nested options object as library callers write it (`{ driver: 'qed', file: { filename } }`). */
export interface QDictInput {
  [key: string]: QValue | undefined;
}

function isDict(v: QValue | undefined): v is { [key: string]: QValue } {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * qdict_flatten: nested objects and lists become dotted keys (`file.filename`, `x.0`);
 * empty ones stay as they are (and are then refused as unknown options, as in QEMU). A nested
 * value wins over a dotted key spelt out beside it.
 */
export function qdictFlatten(input: QDictInput | FlatQDict, out: FlatQDict = new Map()): FlatQDict {
  const entries = input instanceof Map ? [...input.entries()] : Object.entries(input);
  const nested: Array<[string, QValue]> = [];
  const walk = (prefix: string, v: QValue): void => {
    if (isDict(v) && Object.keys(v).length > 0) {
      for (const [k, x] of Object.entries(v)) walk(`${prefix}.${k}`, x);
    } else if (Array.isArray(v) && v.length > 0) {
      v.forEach((x, i) => walk(`${prefix}.${i}`, x));
    } else nested.push([prefix, v]);
  };
  for (const [k, v] of entries) {
    if (v === undefined) continue;
    if ((isDict(v) && Object.keys(v).length > 0) || (Array.isArray(v) && v.length > 0)) walk(k, v);
    else if (!out.has(k)) out.set(k, v);
  }
  for (const [k, v] of nested) out.set(k, v);
  return out;
}

/** qdict_extract_subqdict: move the `prefix`ed keys out of `src`, without the prefix. */
export function qdictExtract(src: FlatQDict, prefix: string): FlatQDict {
  const out: FlatQDict = new Map();
  for (const [k, v] of [...src]) {
    if (k.startsWith(prefix)) {
      out.set(k.slice(prefix.length), v);
      src.delete(k);
    }
  }
  return out;
}

/** qdict_array_split's test: does any key start with `prefix`? */
export function qdictHasPrefix(src: FlatQDict, prefix: string): boolean {
  for (const k of src.keys()) if (k.startsWith(prefix)) return true;
  return false;
}

/**
 * The reverse of flattening for display (json: filenames): dotted keys become nested
 * objects. A key that is both a value and a prefix keeps the value.
 */
export function qdictCrumple(flat: FlatQDict): { [key: string]: QValue } {
  const root: { [key: string]: QValue } = {};
  for (const [key, v] of flat) {
    const parts = key.split('.');
    let node = root;
    let ok = true;
    for (const p of parts.slice(0, -1)) {
      const next = node[p];
      if (next === undefined) {
        const created: { [key: string]: QValue } = {};
        node[p] = created;
        node = created;
      } else if (isDict(next)) node = next;
      else {
        ok = false;
        break;
      }
    }
    if (ok) node[parts[parts.length - 1]] = v;
  }
  return root;
}

/** QEMU's QDICT_BUCKET_MAX. */
const QDICT_BUCKETS = 512;

/** tdb_hash over the key's UTF-8 bytes, in unsigned 32-bit arithmetic as in C. */
function tdbHash(key: string): number {
  const bytes = new TextEncoder().encode(key);
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    value = (value + ((bytes[i] << ((i * 5) % 24)) >>> 0)) >>> 0;
  }
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/**
 * The order QEMU iterates a QDict whose keys were inserted in `keys` order (qdict_first /
 * qdict_next): by hash bucket, and within a bucket the latest insertion first.
 */
export function qdictOrder(keys: readonly string[]): string[] {
  const indexed = keys.map((k, i) => ({ k, i, b: tdbHash(k) % QDICT_BUCKETS }));
  indexed.sort((x, y) => x.b - y.b || y.i - x.i);
  return indexed.map((e) => e.k);
}

/** qdict_first: the key QEMU names when it refuses leftover options. */
export function qdictFirstKey(d: FlatQDict): string | undefined {
  return qdictOrder([...d.keys()])[0];
}

/**
 * A value as a QemuOpts string (qemu_opts_absorb_qdict): numbers in decimal (floats as %.17g),
 * booleans as on/off. Objects, lists and null have no string form: null is returned.
 */
export function qvalueToOptString(v: QValue, formatFloat: (x: number) => string): string | null {
  if (typeof v === 'string') return v;
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : formatFloat(v);
  if (typeof v === 'boolean') return v ? 'on' : 'off';
  return null;
}

/** qdict_get_try_str: the value if it is a string. */
export function qdictGetStr(d: FlatQDict, key: string): string | undefined {
  const v = d.get(key);
  return typeof v === 'string' ? v : undefined;
}

/** Refuse a non-string where QEMU's QAPI wants one ("Invalid parameter type for 'driver', expected: string"). */
export function qdictRequireStr(d: FlatQDict, key: string): string | undefined {
  const v = d.get(key);
  if (v === undefined || typeof v === 'string') return v;
  throw new BlockError('EINVAL', `Invalid parameter type for '${key}', expected: string`, { op: 'open' });
}
