/**
 * Refcount block codec for every refcount_order 0..6 and the refcount metadata size formula.
 * Pure functions. Widths 1, 2 and 4 are packed LSB-first inside each byte; 8 is a byte;
 * 16, 32 and 64 are big-endian words. Refcounts are numbers: a 64-bit count above 2^53 - 1
 * reads as 2^53 - 1, which is also the largest count we ever write (refcountMax).
 */

export type RefcountGetter = (block: Uint8Array, index: number) => number;
export type RefcountSetter = (block: Uint8Array, index: number, value: number) => void;

/** Largest refcount an order allows (2^bits - 1, capped to a safe integer for 64 bits). */
export function refcountMax(order: number): number {
  return order >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (1 << order) - 1;
}

/** Refcount entries in one block. */
export function refcountBlockEntries(clusterBits: number, order: number): number {
  return ((1 << clusterBits) * 8) >> order;
}

/** Entries narrower than a byte (orders 0-2) are packed from the low bits up. */
function subByteLayout(order: number): { bits: number; perByte: number; mask: number } {
  const bits = 1 << order;
  return { bits, perByte: 8 / bits, mask: (1 << bits) - 1 };
}

export function refcountGetter(order: number): RefcountGetter {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const { bits, perByte, mask } = subByteLayout(order);
      return (b, i) => (b[Math.floor(i / perByte)] >> (bits * (i % perByte))) & mask;
    }
    case 3:
      return (b, i) => b[i];
    case 4:
      return (b, i) => (b[2 * i] << 8) | b[2 * i + 1];
    case 5:
      return (b, i) => new DataView(b.buffer, b.byteOffset).getUint32(4 * i);
    default:
      return (b, i) => {
        const v = new DataView(b.buffer, b.byteOffset).getBigUint64(8 * i);
        return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
      };
  }
}

export function refcountSetter(order: number): RefcountSetter {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const { bits, perByte, mask } = subByteLayout(order);
      return (b, i, value) => {
        const byte = Math.floor(i / perByte);
        const shift = bits * (i % perByte);
        b[byte] = (b[byte] & ~(mask << shift)) | ((value & mask) << shift);
      };
    }
    case 3:
      return (b, i, value) => {
        b[i] = value;
      };
    case 4:
      return (b, i, value) => {
        b[2 * i] = value >> 8;
        b[2 * i + 1] = value & 0xff;
      };
    case 5:
      return (b, i, value) => new DataView(b.buffer, b.byteOffset).setUint32(4 * i, value);
    default:
      return (b, i, value) => new DataView(b.buffer, b.byteOffset).setBigUint64(8 * i, BigInt(value));
  }
}

/**
 * Refcount blocks and table clusters needed so that `clusters` clusters plus the refcount
 * structures themselves are all counted (QEMU's qcow2_refcount_metadata_size: the fixed point
 * of blocks/table, optionally grown once by half the table for headroom).
 */
export function refcountMetadataSize(
  clusters: number,
  clusterSize: number,
  refcountOrder: number,
  generousIncrease: boolean,
): { blocks: number; table: number; bytes: number } {
  const blocksPerTableCluster = clusterSize / 8;
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  let generous = generousIncrease;
  let total = clusters;
  do {
    last = n;
    blocks = Math.ceil((total + table + blocks) / refcountsPerBlock);
    table = Math.ceil(blocks / blocksPerTableCluster);
    n = total + blocks + table;
    if (n === last && generous) {
      total += Math.ceil(table / 2);
      n = 0;
      generous = false;
    }
  } while (n !== last);
  return { blocks, table, bytes: (blocks + table) * clusterSize };
}
