// Damaging qcow2 images by script for the check and damaged-image tests: big-endian fields
// written in place with dd (the file keeps its length).

/** A set-up step writing `value` as a `size`-byte big-endian number at `offset` of `file`. */
export function pokeBE(file: string, offset: number, size: number, value: number | bigint): string[] {
  let v = BigInt(value);
  const bytes: string[] = [];
  for (let i = 0; i < size; i++) {
    bytes.unshift(`\\${(Number(v & 0xffn)).toString(8).padStart(3, '0')}`);
    v >>= 8n;
  }
  return ['sh', `printf '${bytes.join('')}' | dd of=${file} bs=1 seek=${offset} conv=notrunc status=none`];
}
