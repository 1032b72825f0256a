// JSON as QEMU prints it: QDict iteration order (hash buckets), 4-space pretty printing
// (qobject_to_json_pretty), so that --output=json matches qemu-img byte for byte.

/** QEMU's qdict hash (tdb_hash); keys come out in bucket order, newest first inside a bucket. */
function tdbHash(name: string): number {
  let value = Math.imul(0x238f13af, name.length) >>> 0;
  for (let i = 0; i < name.length; i++) value = (value + ((name.charCodeAt(i) << ((i * 5) % 24)) >>> 0)) >>> 0;
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

const QDICT_BUCKET_MAX = 512;

/** Entries in the order a QDict built by inserting `entries` in order would iterate them. */
export function qdictOrder<T>(entries: Array<[string, T]>): Array<[string, T]> {
  const indexed = entries.map((e, i) => ({ e, i, b: tdbHash(e[0]) % QDICT_BUCKET_MAX }));
  indexed.sort((x, y) => x.b - y.b || y.i - x.i);
  return indexed.map((x) => x.e);
}

export type JsonValue = string | number | boolean | JsonValue[] | JsonObject;
/** An object whose keys are printed in QDict order (insertion order = QAPI field order). */
export interface JsonObject {
  readonly qdict: Array<[string, JsonValue]>;
}

export function jsonObject(entries: Array<[string, JsonValue | undefined]>): JsonObject {
  return { qdict: entries.filter((e): e is [string, JsonValue] => e[1] !== undefined) };
}

function jsonString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0) ?? 0;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20 || c === 0x7f) out += `\\u${c.toString(16).toUpperCase().padStart(4, '0')}`;
    else if (c > 0xffff) {
      const v = c - 0x10000;
      out += `\\u${(0xd800 + (v >> 10)).toString(16).toUpperCase()}\\u${(0xdc00 + (v & 0x3ff)).toString(16).toUpperCase()}`;
    } else if (c >= 0x80) out += `\\u${c.toString(16).toUpperCase().padStart(4, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}

/** qobject_to_json_pretty. */
export function toJsonPretty(v: JsonValue, level = 0): string {
  const ind = (n: number): string => '    '.repeat(n);
  if (typeof v === 'string') return jsonString(v);
  if (typeof v === 'number') return String(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (Array.isArray(v)) {
    if (v.length === 0) return '[\n' + ind(level) + ']';
    return `[\n${v.map((x) => ind(level + 1) + toJsonPretty(x, level + 1)).join(',\n')}\n${ind(level)}]`;
  }
  const entries = qdictOrder(v.qdict);
  if (entries.length === 0) return '{\n' + ind(level) + '}';
  return `{\n${entries.map(([k, x]) => `${ind(level + 1)}${jsonString(k)}: ${toJsonPretty(x, level + 1)}`).join(',\n')}\n${ind(level)}}`;
}
