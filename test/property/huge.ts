/**
 * Huge sparse images: virtual sizes up to the format's limit (or 2^52), with requests near
 * 2^31, 2^32, L2-table boundaries and the very end, where offset arithmetic done with 32-bit
 * operators (`>>`, `&`, `|`) or doubles past 2^53 would go wrong. The model is the list of
 * writes (the disk is far too big for a byte array); a read's expected bytes are replayed from
 * it.
 */
import fc from 'fast-check';
import { BlockDriverState, VirtualClock, bdrvCreate } from '../../src/index.js';
import { ModelMismatch, expectClean } from './commands.js';
import { cleanupPrefix, fcParams, freshPrefix, profileOf, type PropertyOptions } from './harness.js';
import { pattern } from './model.js';
import type { FormatProfile } from './profile.js';
import { QED_PROFILE } from './qed-profile.js';

export interface HugeCase {
  clusterBits: number;
  /** QED: log2 of the table size; qcow2: picks the L1 size (profile.hugeLayout). */
  tableBits: number;
  /** Sectors below the maximum size (or 2^52). */
  shrink: number;
  ops: { op: 'write' | 'zero' | 'read' | 'reopen' | 'check'; at: number; delta: number; len: number; seed: number }[];
}

export const hugeCaseArb = (profile: FormatProfile = QED_PROFILE): fc.Arbitrary<HugeCase> => fc.record({
  clusterBits: fc.constantFrom(...profile.hugeClusterBits),
  tableBits: fc.constantFrom(0, 2, 4),
  shrink: fc.nat({ max: 1 << 20 }),
  ops: fc.array(
    fc.record({
      op: fc.constantFrom<'write' | 'zero' | 'read' | 'reopen' | 'check'>('write', 'write', 'zero', 'read', 'read', 'reopen', 'check'),
      at: fc.nat({ max: 7 }),
      delta: fc.integer({ min: -70000, max: 70000 }),
      len: fc.integer({ min: 1, max: 140000 }),
      seed: fc.nat({ max: 1 << 20 }),
    }),
    { minLength: 1, maxLength: 16 },
  ),
});

interface Written {
  offset: number;
  data: Uint8Array | null; // null: zeros
  len: number;
}

function expected(writes: Written[], offset: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  for (const w of writes) {
    const a = Math.max(offset, w.offset);
    const b = Math.min(offset + len, w.offset + w.len);
    if (a >= b) continue;
    if (w.data) out.set(w.data.subarray(a - w.offset, b - w.offset), a - offset);
    else out.fill(0, a - offset, b - offset);
  }
  return out;
}

export async function runHugeCase(c: HugeCase, profile: FormatProfile = QED_PROFILE): Promise<number> {
  const cs = 2 ** c.clusterBits;
  const ts = 2 ** c.tableBits;
  const { options, size, l2Span } = profile.hugeLayout(c.clusterBits, c.tableBits, c.shrink);
  const anchors = [0, 2 ** 31, 2 ** 32, 2 ** 40, l2Span, 3 * l2Span, size / 2 - ((size / 2) % 512), size];
  const prefix = freshPrefix('huge');
  const file = `mem:${prefix}-top.${profile.name}`;
  let commands = 0;
  try {
    await bdrvCreate(file, { format: profile.name, options: { size, ...options } });
    const open = (): Promise<BlockDriverState> => BlockDriverState.open(file, { format: profile.name, clock: new VirtualClock() });
    let bs = await open();
    try {
      if ((await bs.getLength()) !== size) throw new ModelMismatch(`length ${await bs.getLength()} != ${size}`);
      const writes: Written[] = [];
      const log: string[] = [];
      for (const o of c.ops) {
        commands++;
        const base = anchors[o.at] ?? 0;
        const offset = Math.min(Math.max(0, base + o.delta), size - 1);
        const len = Math.min(o.len, size - offset);
        switch (o.op) {
          case 'write': {
            const data = pattern(len, o.seed);
            log.push(`write ${offset}+${len}`);
            await bs.pwrite(offset, data);
            writes.push({ offset, data, len });
            break;
          }
          case 'zero':
            log.push(`zero ${offset}+${len}`);
            await bs.writeZeroes(offset, len);
            writes.push({ offset, data: null, len });
            break;
          case 'read': {
            log.push(`read ${offset}+${len}`);
            const got = new Uint8Array(len);
            await bs.pread(offset, got);
            const want = expected(writes, offset, len);
            const d = got.findIndex((x, i) => x !== want[i]);
            if (d >= 0) throw new ModelMismatch(`${log.join('; ')}: differs at ${offset + d}: got ${got[d]} want ${want[d]}`);
            break;
          }
          case 'reopen':
            log.push('reopen');
            await bs.close();
            bs = await open();
            break;
          case 'check':
            log.push('check');
            expectClean(await bs.check(), `${log.join('; ')} (size ${size}, cs ${cs}, ts ${ts})`, profile.leaksAfterCleanOps);
            break;
        }
      }
      // Every write reads back at the end.
      for (const w of writes) {
        const got = new Uint8Array(w.len);
        await bs.pread(w.offset, got);
        const want = expected(writes, w.offset, w.len);
        const d = got.findIndex((x, i) => x !== want[i]);
        if (d >= 0) throw new ModelMismatch(`${log.join('; ')}: final read differs at ${w.offset + d}`);
      }
      expectClean(await bs.check(), `${log.join('; ')}: final check (size ${size}, cs ${cs}, ts ${ts})`, profile.leaksAfterCleanOps);
    } finally {
      await bs.close();
    }
  } finally {
    cleanupPrefix(prefix);
  }
  return commands;
}

export async function propHuge(opts: PropertyOptions): Promise<void> {
  const profile = profileOf(opts);
  await fc.assert(
    fc.asyncProperty(hugeCaseArb(profile), async (c) => {
      const k = await runHugeCase(c, profile);
      opts.onCommands?.(k);
    }),
    fcParams(opts),
  );
}
