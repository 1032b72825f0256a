/**
 * API misuse: every BlockDriverState entry point called with odd numbers (negative, fractional,
 * NaN, infinite, past 2^53, past the end), mismatched AIO vectors and on closed nodes. Each call
 * ends in a result or a BlockError (never a TypeError or RangeError, never a hang), and the
 * image stays consistent: check finds nothing.
 */
import fc from 'fast-check';
import { BlockError, IOVector, aioToPromise, type BlockDriverState } from '../../src/index.js';
import { ModelMismatch, expectClean } from './commands.js';
import { buildImage, fcParams, freshPrefix, profileOf, type PropertyOptions } from './harness.js';
import type { FormatProfile } from './profile.js';
import { QED_PROFILE } from './qed-profile.js';

const ODD_NUMBERS = [-1, -512, 0.5, 511.5, NaN, Infinity, -Infinity, 2 ** 53, 2 ** 53 + 2, 2 ** 60, Number.MAX_VALUE];

export type Misuse =
  | { call: 'pread' | 'pwrite'; offset: number; len: number }
  | { call: 'writeZeroes' | 'discard' | 'isAllocated' | 'blockStatus' | 'blockStatusAbove'; offset: number; len: number }
  | { call: 'truncate'; size: number }
  | { call: 'aioReadv' | 'aioWritev'; sector: number; nb: number; qiovSize: number }
  | { call: 'closedRead' };

/** A number that is odd, or placed relative to the image size (resolved at run time). */
export type Num = { odd: number } | { rel: 'end' | 'endMinus' | 'endPlus'; by: number } | { plain: number };

const numArb: fc.Arbitrary<Num> = fc.oneof(
  fc.record({ odd: fc.constantFrom(...ODD_NUMBERS) }),
  fc.record({ rel: fc.constantFrom<'end' | 'endMinus' | 'endPlus'>('end', 'endMinus', 'endPlus'), by: fc.nat({ max: 4096 }) }),
  fc.record({ plain: fc.nat({ max: 1 << 20 }) }),
);

export interface MisuseCase {
  calls: { call: Misuse['call']; a: Num; b: Num; c: Num }[];
}

export const misuseCaseArb: fc.Arbitrary<MisuseCase> = fc.record({
  calls: fc.array(
    fc.record({
      call: fc.constantFrom<Misuse['call']>(
        'pread',
        'pwrite',
        'writeZeroes',
        'discard',
        'isAllocated',
        'blockStatus',
        'blockStatusAbove',
        'truncate',
        'aioReadv',
        'aioWritev',
        'closedRead',
      ),
      a: numArb,
      b: numArb,
      c: numArb,
    }),
    { minLength: 1, maxLength: 12 },
  ),
});

function resolve(n: Num, size: number): number {
  if ('odd' in n) return n.odd;
  if ('plain' in n) return n.plain;
  switch (n.rel) {
    case 'end':
      return size;
    case 'endMinus':
      return Math.max(0, size - n.by);
    case 'endPlus':
      return size + n.by;
  }
}

/** A length a buffer can have: odd numbers become small sizes (the buffer itself is fine). */
function bufLen(n: number): number {
  return Number.isSafeInteger(n) && n >= 0 ? Math.min(n, 1 << 20) : 512;
}

async function expectResultOrBlockError(what: string, p: () => Promise<unknown>): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      p(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new ModelMismatch(`${what}: no answer (hang)`)), 10_000);
      }),
    ]);
  } catch (e) {
    if (e instanceof BlockError || e instanceof ModelMismatch) {
      if (e instanceof ModelMismatch) throw e;
      return;
    }
    const name = e instanceof Error ? e.name : typeof e;
    throw new ModelMismatch(`${what}: threw ${name} instead of a BlockError: ${e instanceof Error ? e.message : ''}`, {
      cause: e,
    });
  } finally {
    clearTimeout(timer);
  }
}

export async function runMisuseCase(
  c: MisuseCase,
  geomSeed: Parameters<typeof buildImage>[0],
  profile: FormatProfile = QED_PROFILE,
): Promise<number> {
  const setup = await buildImage(geomSeed, freshPrefix('mis'), { profile });
  let bs: BlockDriverState = await setup.open();
  let n = 0;
  try {
    for (const k of c.calls) {
      n++;
      const size = await bs.getLength();
      const a = resolve(k.a, size);
      const b = resolve(k.b, size);
      const what = `${k.call}(${a}, ${b})`;
      switch (k.call) {
        case 'pread':
          await expectResultOrBlockError(what, () => bs.pread(a, new Uint8Array(bufLen(b))));
          break;
        case 'pwrite':
          await expectResultOrBlockError(what, () => bs.pwrite(a, new Uint8Array(bufLen(b)).fill(0x5a)));
          break;
        case 'writeZeroes':
          await expectResultOrBlockError(what, () => bs.writeZeroes(a, b));
          break;
        case 'discard':
          await expectResultOrBlockError(what, () => bs.discard(a, b));
          break;
        case 'isAllocated':
          await expectResultOrBlockError(what, () => bs.isAllocated(a, b));
          break;
        case 'blockStatus':
          await expectResultOrBlockError(what, () => bs.blockStatus(a, b));
          break;
        case 'blockStatusAbove':
          await expectResultOrBlockError(what, () => bs.blockStatusAbove(a, b));
          break;
        case 'truncate':
          // Only growth is supported; keep it small so the model stays cheap.
          await expectResultOrBlockError(what, () => bs.truncate(Number.isSafeInteger(a) && a > size + (1 << 22) ? size + 512 : a));
          break;
        case 'aioReadv':
        case 'aioWritev': {
          const qiovSize = bufLen(resolve(k.c, size));
          const qiov = IOVector.alloc(qiovSize);
          const sector = a;
          const nb = b;
          await expectResultOrBlockError(`${what} qiov ${qiovSize}`, () =>
            aioToPromise((cb) => (k.call === 'aioReadv' ? bs.aioReadv(sector, qiov, nb, cb) : bs.aioWritev(sector, qiov, nb, cb))),
          );
          break;
        }
        case 'closedRead': {
          await bs.close();
          await expectResultOrBlockError('read after close', () => bs.pread(0, new Uint8Array(1)));
          await expectResultOrBlockError('flush after close', () => bs.flush());
          bs = await setup.open();
          break;
        }
      }
    }
    expectClean(await bs.check(), `after ${c.calls.map((x) => x.call).join(', ')}`, profile.leaksAfterCleanOps);
  } finally {
    await bs.close().catch(() => undefined);
    setup.cleanup();
  }
  return n;
}

export async function propMisuse(opts: PropertyOptions): Promise<void> {
  const profile = profileOf(opts);
  await fc.assert(
    fc.asyncProperty(misuseCaseArb, profile.geometryArb(false), async (c, g) => {
      const k = await runMisuseCase(c, g, profile);
      opts.onCommands?.(k);
    }),
    fcParams(opts),
  );
}
