/**
 * Reading the qcow2 tables made of variable-length, 8-byte aligned entries (the snapshot table
 * and the bitmap directory): a fixed big-endian header described field by field, then extra
 * data and names whose sizes the header gives.
 */

/** A header field: its width and byte offset. u64 reads as a number; b64/i64 stay bigint. */
export type FieldSpec = readonly ['u8' | 'u16' | 'u32' | 'u64' | 'b64' | 'i64', number];

type FieldValue<F extends FieldSpec> = F[0] extends 'b64' | 'i64' ? bigint : number;

/** Read the fields of `layout` from the header at `pos`. */
export function readFields<L extends Record<string, FieldSpec>>(v: DataView, pos: number, layout: L): { [K in keyof L]: FieldValue<L[K]> } {
  const out: Record<string, number | bigint> = {};
  for (const [name, [kind, at]] of Object.entries(layout)) {
    const p = pos + at;
    switch (kind) {
      case 'u8':
        out[name] = v.getUint8(p);
        break;
      case 'u16':
        out[name] = v.getUint16(p);
        break;
      case 'u32':
        out[name] = v.getUint32(p);
        break;
      case 'u64':
        out[name] = Number(v.getBigUint64(p));
        break;
      case 'b64':
        out[name] = v.getBigUint64(p);
        break;
      case 'i64':
        out[name] = v.getBigInt64(p);
        break;
    }
  }
  return out as { [K in keyof L]: FieldValue<L[K]> };
}

/**
 * Walk `nb` entries from the start of `buf`, each 8-byte aligned: `visit` reads the one at
 * `pos` (checking its own bounds) and returns where it ends. Returns the end of the last entry.
 */
export function walkAlignedEntries(nb: number, visit: (pos: number, index: number) => number): number {
  let end = 0;
  for (let i = 0; i < nb; i++) end = visit(Math.ceil(end / 8) * 8, i);
  return end;
}

export function decodeText(buf: Uint8Array, from: number, len: number): string {
  return new TextDecoder().decode(buf.subarray(from, from + len));
}
