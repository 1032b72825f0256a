/**
 * Concurrency property: batches of guest requests in flight at once over the `sched` protocol,
 * whose I/O completions fast-check's scheduler orders; AIO writes cancelled at a scheduled
 * point. After each batch the disk must equal the old contents with the batch's writes applied
 * in *some* order per 512-byte sector (completed writes all present, cancelled ones absent),
 * every read must have seen, per byte, the old value or one being written, and check must find
 * the image clean.
 */
import fc from 'fast-check';
import { BlockDriverState, BlockError, IOVector } from '../../src/index.js';
import { ModelMismatch, expectClean, learnGrown, markTouched, placeFor, spanArb, type Span } from './commands.js';
import { buildImage, fcParams, freshPrefix, hostRawBacking, profileOf, type Geometry, type ImageSetup, type PropertyOptions } from './harness.js';
import type { FormatProfile } from './profile.js';
import { QED_PROFILE } from './qed-profile.js';
import { pattern } from './model.js';
import { schedRegistry, setIoScheduler } from './sched-protocol.js';
import { callbackGeometryArb } from './submit-stats.js';

export type ConcOp =
  | { op: 'write'; span: Span; seed: number }
  | { op: 'zero'; span: Span }
  | { op: 'read'; span: Span }
  | { op: 'flush' }
  | { op: 'grow'; by: number }
  | { op: 'aioWrite'; span: Span; seed: number; cancel: 'none' | 'now' | 'scheduled' };

const concOpArb: fc.Arbitrary<ConcOp> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('write' as const), span: spanArb, seed: fc.nat({ max: 1 << 20 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('zero' as const), span: spanArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('read' as const), span: spanArb }) },
  { weight: 1, arbitrary: fc.constant({ op: 'flush' as const }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('grow' as const), by: fc.integer({ min: 1, max: 24 }) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('aioWrite' as const),
      span: spanArb,
      seed: fc.nat({ max: 1 << 20 }),
      cancel: fc.constantFrom<'none' | 'now' | 'scheduled'>('none', 'now', 'scheduled'),
    }),
  },
);

export interface ConcCase {
  geom: Geometry;
  batches: { ops: ConcOp[]; reopenAfter: boolean }[];
  /** A raw backing file on the host instead of a sched: store (see hostRawBacking). */
  hostBacking?: boolean;
}

export const concCaseArb = (wide = false, profile: FormatProfile = QED_PROFILE): fc.Arbitrary<ConcCase> =>
  fc.record({
    geom: callbackGeometryArb(profile, wide),
    batches: fc.array(
      fc.record({ ops: fc.array(concOpArb, { minLength: 1, maxLength: 4 }), reopenAfter: fc.boolean() }),
      { minLength: 1, maxLength: wide ? 8 : 4 },
    ),
    hostBacking: fc.boolean(),
  });

/** Whether the interleavings really happened (a property that never overlaps proves nothing). */
export const concStats = { batches: 0, cancels: 0, cancelledBeforeStart: 0, multiRequestBatches: 0 };

export const concExamples: [ConcCase, fc.Scheduler][] = [];

interface PendingWrite {
  offset: number;
  data: Uint8Array;
  /** done: must be present; absent: must not be; unknown: either. */
  outcome: 'done' | 'absent' | 'unknown';
}

/** Is `got` (one sector) = `old` with some order of the done writes and a subset of the unknown? */
function sectorExplained(old: Uint8Array, got: Uint8Array, base: number, writes: PendingWrite[]): boolean {
  const must = writes.filter((w) => w.outcome === 'done');
  const may = writes.filter((w) => w.outcome === 'unknown');
  for (let mask = 0; mask < 1 << may.length; mask++) {
    const set = [...must, ...may.filter((_, i) => mask & (1 << i))];
    if (permutations(set).some((order) => equalAfter(old, got, base, order))) return true;
  }
  return false;
}

function permutations<T>(xs: T[]): T[][] {
  if (xs.length <= 1) return [xs];
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
}

function equalAfter(old: Uint8Array, got: Uint8Array, base: number, order: PendingWrite[]): boolean {
  const cand = old.slice();
  for (const w of order) {
    const from = Math.max(base, w.offset);
    const to = Math.min(base + cand.length, w.offset + w.data.length);
    if (from < to) cand.set(w.data.subarray(from - w.offset, to - w.offset), from - base);
  }
  for (let i = 0; i < cand.length; i++) if (cand[i] !== got[i]) return false;
  return true;
}

async function runBatch(bs: BlockDriverState, setup: ImageSetup, ops: ConcOp[], s: fc.Scheduler, log: string[]): Promise<number> {
  const model = setup.model;
  const cs = setup.geom.clusterSize;
  const maxLen = Math.min(3 * cs + 1024, 1 << 20);
  const writes: PendingWrite[] = [];
  const reads: { offset: number; buf: Uint8Array }[] = [];
  const tasks: Promise<unknown>[] = [];
  let grownTo = 0;
  for (const o of ops) {
    switch (o.op) {
      case 'write': {
        const p = placeFor(setup, o.span);
        const w: PendingWrite = { offset: p.offset, data: pattern(p.len, o.seed), outcome: 'unknown' };
        writes.push(w);
        log.push(`write ${p.offset}+${p.len}`);
        tasks.push(bs.pwrite(w.offset, w.data).then(() => (w.outcome = 'done')));
        break;
      }
      case 'zero': {
        const p = placeFor(setup, o.span);
        const w: PendingWrite = { offset: p.offset, data: new Uint8Array(p.len), outcome: 'unknown' };
        writes.push(w);
        log.push(`zero ${p.offset}+${p.len}`);
        tasks.push(bs.writeZeroes(w.offset, p.len).then(() => (w.outcome = 'done')));
        break;
      }
      case 'read': {
        const p = placeFor(setup, o.span);
        const r = { offset: p.offset, buf: new Uint8Array(p.len) };
        reads.push(r);
        log.push(`read ${p.offset}+${p.len}`);
        tasks.push(bs.pread(r.offset, r.buf));
        break;
      }
      case 'flush':
        log.push('flush');
        tasks.push(bs.flush());
        break;
      case 'grow': {
        // Concurrent with the batch's requests (all placed below the old size).
        const newSize = Math.max(grownTo, model.size) + o.by * 512;
        grownTo = newSize;
        log.push(`grow ->${newSize}`);
        tasks.push(bs.truncate(newSize));
        break;
      }
      case 'aioWrite': {
        // Sector-aligned, as the AIO interface is.
        const sectors = Math.floor(model.size / 512);
        if (sectors === 0) break;
        const first = o.span.at % sectors;
        const nb = 1 + (o.span.len % Math.min(sectors - first, Math.max(1, Math.floor(maxLen / 512))));
        const w: PendingWrite = { offset: first * 512, data: pattern(nb * 512, o.seed), outcome: 'unknown' };
        writes.push(w);
        log.push(`aio_write ${w.offset}+${nb * 512}${o.cancel !== 'none' ? ` (cancel ${o.cancel})` : ''}`);
        let called = false;
        const done = new Promise<void>((resolve, reject) => {
          const acb = bs.aioWritev(first, IOVector.from(w.data.slice()), nb, (err) => {
            called = true;
            if (!err) w.outcome = 'done';
            else if (err.code === 'ECANCELED') {
              w.outcome = 'absent';
              concStats.cancelledBeforeStart++;
            }
            else {
              reject(err);
              return;
            }
            resolve();
          });
          if (o.cancel === 'now') {
            // Before the request's coroutine started: it must complete with ECANCELED.
            concStats.cancels++;
            tasks.push(acb.cancel());
          } else if (o.cancel === 'scheduled') {
            // The scheduler picks the moment of the cancel among the I/O completions. A
            // finished request's AIOCB may already serve another one: never cancel it then.
            concStats.cancels++;
            tasks.push(
              s.schedule(Promise.resolve('cancel'), 'cancel').then(() => (called ? undefined : acb.cancel())),
            );
          }
        });
        tasks.push(done);
        break;
      }
    }
  }
  concStats.batches++;
  if (ops.length > 1) concStats.multiRequestBatches++;
  const old = model.bytes.slice();
  const all = Promise.allSettled(tasks);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadlock = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ModelMismatch(`batch did not finish (deadlock?): ${log.join('; ')}`)), 20_000);
  });
  let results: PromiseSettledResult<unknown>[];
  try {
    results = await Promise.race([s.waitFor(all), deadlock]);
  } finally {
    clearTimeout(timer);
    // Later I/O (the comparison below, check, close) runs ungated; anything the batch left
    // gated (a request still finishing behind an acknowledged one) is driven to its end.
    setIoScheduler(null);
    await s.waitIdle();
  }
  for (const r of results) {
    if (r.status === 'rejected') {
      const e: unknown = r.reason;
      throw new ModelMismatch(`${log.join('; ')}: request failed: ${e instanceof BlockError ? `${e.code} ${e.message}` : String(e)}`, { cause: e });
    }
  }
  // Reads saw, per byte, the old value or one being written.
  for (const r of reads) {
    for (let i = 0; i < r.buf.length; i++) {
      const pos = r.offset + i;
      if (r.buf[i] === old[pos]) continue;
      const ok = writes.some((w) => w.outcome !== 'absent' && pos >= w.offset && pos < w.offset + w.data.length && w.data[pos - w.offset] === r.buf[i]);
      if (!ok) throw new ModelMismatch(`${log.join('; ')}: read saw ${r.buf[i]} at ${pos}, neither old (${old[pos]}) nor written`);
    }
  }
  // Concurrent grows: the order they ran in is unknown, but the largest wins (each asks for
  // more than the one before it), and the new space shows the backing file or zeros.
  if (grownTo > model.size) {
    const len = await bs.getLength();
    if (len !== grownTo) throw new ModelMismatch(`${log.join('; ')}: length ${len} after growing to ${grownTo}`);
    const oldSize = model.size;
    model.grow(grownTo, setup.backingView ?? undefined);
    await learnGrown(bs, setup, oldSize, log.join('; '));
  }
  const oldGrown = model.bytes.slice();
  oldGrown.set(old);
  // The disk: per sector some serialisation of the writes.
  const got = new Uint8Array(model.size);
  await bs.pread(0, got);
  for (let a = 0; a < model.size; a += 512) {
    const b = Math.min(model.size, a + 512);
    const touching = writes.filter((w) => w.offset < b && w.offset + w.data.length > a);
    if (!sectorExplained(oldGrown.subarray(a, b), got.subarray(a, b), a, touching)) {
      throw new ModelMismatch(`${log.join('; ')}: sector at ${a} is no serialisation of the batch's writes`);
    }
  }
  model.bytes = got;
  // Zero markers or copy-on-write may leave a cluster's tail with backing bytes the model
  // never sees; only whole-disk contents matter here.
  for (const w of writes) markTouched(setup, w.offset, w.data.length);
  return ops.length;
}

export async function runConcCase(c: ConcCase, s: fc.Scheduler, profile: FormatProfile = QED_PROFILE): Promise<number> {
  const registry = schedRegistry();
  setIoScheduler(null);
  const setup = await buildImage(c.geom, freshPrefix('conc'), { proto: 'sched', registry, profile });
  let removeHostBacking: (() => void) | null = null;
  if (c.hostBacking === true) {
    const tmp = await BlockDriverState.open(setup.top, { format: setup.format, registry, noBacking: true });
    try {
      removeHostBacking = await hostRawBacking(setup, tmp);
    } finally {
      await tmp.close();
    }
  }
  let commands = 0;
  const log: string[] = [];
  let bs = await setup.open();
  try {
    for (const batch of c.batches) {
      setIoScheduler(s);
      try {
        commands += await runBatch(bs, setup, batch.ops, s, log);
      } finally {
        setIoScheduler(null);
      }
      expectClean(await bs.check(), log.join('; '), profile.leaksAfterCleanOps);
      if (batch.reopenAfter) {
        log.push('reopen');
        await bs.close();
        bs = await setup.open();
        const back = new Uint8Array(setup.model.size);
        await bs.pread(0, back);
        for (let i = 0; i < back.length; i++) {
          if (back[i] !== setup.model.bytes[i]) throw new ModelMismatch(`${log.join('; ')}: after reopen differs at ${i}`);
        }
      }
    }
  } finally {
    setIoScheduler(null);
    await bs.close().catch(() => undefined);
    removeHostBacking?.();
    setup.cleanup();
  }
  return commands;
}

export async function propConcurrent(opts: PropertyOptions): Promise<void> {
  const profile = profileOf(opts);
  await fc.assert(
    fc.asyncProperty(concCaseArb(opts.wide, profile), fc.scheduler(), async (c, s) => {
      const n = await runConcCase(c, s, profile);
      opts.onCommands?.(n);
    }),
    { ...fcParams(opts), examples: [...concExamples, ...((opts.examples ?? []) as [ConcCase, fc.Scheduler][])] },
  );
}
