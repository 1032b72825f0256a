// JSON as QEMU prints it: QDict iteration order (hash buckets), 4-space pretty printing
// (qobject_to_json_pretty), so that --output=json matches qemu-img byte for byte. The order
// and the string quoting are the block layer's (json: filenames print the same way).
import { qdictOrder as qdictKeyOrder, quoteJsonString } from '../../index.js';

/** Entries in the order a QDict built by inserting `entries` in order would iterate them. */
export function qdictOrder<T>(entries: Array<[string, T]>): Array<[string, T]> {
  const byKey = new Map(entries);
  return qdictKeyOrder(entries.map(([k]) => k)).map((k) => [k, byKey.get(k) as T]);
}

export type JsonValue = string | number | bigint | boolean | JsonValue[] | JsonObject;
/** An object whose keys are printed in QDict order (insertion order = QAPI field order). */
export interface JsonObject {
  readonly qdict: Array<[string, JsonValue]>;
}

export function jsonObject(entries: Array<[string, JsonValue | undefined]>): JsonObject {
  return { qdict: entries.filter((e): e is [string, JsonValue] => e[1] !== undefined) };
}

/** qobject_to_json_pretty. */
export function toJsonPretty(v: JsonValue, level = 0): string {
  const ind = (n: number): string => '    '.repeat(n);
  if (typeof v === 'string') return quoteJsonString(v);
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (Array.isArray(v)) {
    if (v.length === 0) return '[\n' + ind(level) + ']';
    return `[\n${v.map((x) => ind(level + 1) + toJsonPretty(x, level + 1)).join(',\n')}\n${ind(level)}]`;
  }
  const entries = qdictOrder(v.qdict);
  if (entries.length === 0) return '{\n' + ind(level) + '}';
  return `{\n${entries.map(([k, x]) => `${ind(level + 1)}${quoteJsonString(k)}: ${toJsonPretty(x, level + 1)}`).join(',\n')}\n${ind(level)}}`;
}
