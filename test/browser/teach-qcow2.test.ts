/// <reference lib="dom" />
// The teaching page with a qcow2 image in a real browser: the file drawn with its refcount
// table and blocks, one allocating write stepped through in the driver's order, the power cut
// before the L2 entry and the repair (check -r leaks; the dirty bit with lazy_refcounts), and an
// overlay on a base image read over http. Assertions are on the DOM, never on pixels.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireChromium } from './chromium.js';
import { openTeachPage, type TeachPage } from './page.js';

const have = requireChromium();

/** One allocating write on a fresh image: the L2 table first, then the data cluster. */
const FRESH_WRITE = [
  'alloc-l2', 'refblock-find', 'refblock', 'flush', 'l2-fill', 'l2-new', 'flush', 'l1', 'flush',
  'alloc', 'refblock-find', 'data', 'refblock', 'flush', 'l2', 'flush',
];

describe.skipIf(!have)('teaching page, qcow2', () => {
  let t: TeachPage;

  beforeAll(async () => {
    t = await openTeachPage();
  });

  afterAll(async () => {
    await t?.close();
  });

  const steps = (): Promise<string[]> => t.page.$$eval('#steps li', (els) => els.map((e) => (e as HTMLElement).dataset.kind!));
  const current = (): Promise<string> => t.page.$eval('#steps li.current', (e) => (e as HTMLElement).dataset.kind!);
  const refcounts = (): Promise<number[]> =>
    t.page.$$eval('#layout .cluster', (els) => els.map((e) => Number((e as HTMLElement).dataset.refcount)));
  const hot = (): Promise<string[]> => t.page.$$eval('#layout .cluster.hot', (els) => els.map((e) => (e as HTMLElement).dataset.kind!));
  const crashedKinds = (): Promise<string[]> =>
    t.page.$$eval('#crashed .cluster', (els) => els.map((e) => (e as HTMLElement).dataset.kind!));
  const text = (sel: string): Promise<string> => t.page.$eval(sel, (e) => e.textContent ?? '');
  const create = async (format: string, withBase = false): Promise<void> => {
    await t.page.selectOption('#storage', 'powerloss');
    await t.page.selectOption('#format', format);
    await t.page.setChecked('#with-base', withBase);
    await t.click('#create');
  };
  /** Step forward until the current step is the `n`th (0-based). */
  const stepTo = async (n: number): Promise<void> => {
    const at = await t.page.$$eval('#steps li', (els) => els.findIndex((e) => e.classList.contains('current')));
    for (let i = at; i < n; i++) await t.click('#next');
  };

  it('draws header, refcount table and block, L1, L2, data and compressed clusters', async () => {
    await create('qcow2');
    // Fresh: QEMU's layout, every cluster counted once by the refcount block in cluster 2.
    expect(await t.kinds()).toEqual(['header', 'reftable', 'refblock', 'l1']);
    expect(await refcounts()).toEqual([1, 1, 1, 1]);
    await t.run('write -P 0x5a 0 8k');
    await t.run('write -P 0x11 512k 4k');
    // A compressed write is not followed by a flush even in writethrough mode (as in QEMU):
    // flush, so that the L2 entry and the refcount reach the file that is drawn.
    await t.run('write -c -P 0x33 768k 4k');
    await t.run('flush');
    expect(await t.kinds()).toEqual(['header', 'reftable', 'refblock', 'l1', 'l2', 'data', 'data', 'data', 'compressed']);
    expect(await refcounts()).toEqual([1, 1, 1, 1, 1, 1, 1, 1, 1]);
    const refmap = await t.page.$$eval('#refmap li', (els) => els.map((e) => ({ ...(e as HTMLElement).dataset })));
    expect(refmap).toEqual([{ host: '2', first: '0', last: '2047' }]);
    expect(await text('#refmap')).toContain('counts host clusters 0..2047 (16-bit entries), 9 of them in use');
    expect(await text('#facts')).toMatch(/qcow2 v3, cluster 4096 B, 16-bit refcounts, .*clean/);
    const layers = await t.layers();
    expect(layers.filter((l) => l === 'top')).toHaveLength(4);
    await t.run('blk-img check powerloss:teach.qcow2');
    expect(await t.consoleText()).toContain('No errors were found on the image.');
    await t.run('read -P 0x33 768k 4k');
    expect(await t.consoleText()).toContain('read 4096/4096 bytes at offset 786432');
    await t.screenshot('teach-qcow2.png');
  });

  it('steps through an allocating write: refcounts, then the L2 table, L1, data, L2 entry', async () => {
    await create('qcow2');
    await t.click('#step');
    expect(await steps()).toEqual(FRESH_WRITE);
    // The data is written: on disk nothing counts or references its cluster yet.
    await stepTo(11);
    expect(await current()).toBe('data');
    expect(await hot()).toEqual(['free']);
    // The refcount block is written: the data cluster is counted but unreferenced, a leak.
    await stepTo(12);
    expect(await current()).toBe('refblock');
    expect(await hot()).toEqual(['refblock']);
    expect((await t.kinds())[5]).toBe('leak');
    expect(await text('#steps li.current .why')).toMatch(/Refcounts before references/);
    await t.screenshot('teach-step.png');
    // The L2 entry: now the cluster is data.
    await stepTo(14);
    expect(await current()).toBe('l2');
    expect(await hot()).toEqual(['l2']);
    expect((await t.kinds())[5]).toBe('data');
  });

  it('pulls the plug before the L2 entry: a leak that check -r leaks repairs', async () => {
    await stepTo(14);
    await t.click('#plug');
    const out = await t.consoleText();
    const after = out.slice(out.lastIndexOf('-- the power goes before step 15'));
    expect(after).toContain('write failed: Input/output error');
    // Everything before the L2 write was flushed: the crash has nothing to lose.
    expect(after).toMatch(/crash \(seed \d+\): 0 unflushed writes/);
    expect(after).toContain('the image is not marked dirty, so the open checks nothing');
    expect(after).toContain('Leaked cluster 5 refcount=1 reference=0');
    expect(after).toContain('1 leaked clusters were found on the image.');
    expect(after).toMatch(/The following inconsistencies were found and repaired:\s+1 leaked clusters\s+0 corruptions/);
    expect(after).toContain('Pattern verification failed at offset 0');
    // Repaired: the leaked cluster is free again, nothing is left counted and unused.
    expect(await t.kinds()).toEqual(['header', 'reftable', 'refblock', 'l1', 'l2', 'free']);
    // The page keeps the file as the crash left it: the data cluster counted, unreferenced.
    expect(await crashedKinds()).toEqual(['header', 'reftable', 'refblock', 'l1', 'l2', 'leak']);
    const report = await t.page.$$eval('#report li', (els) => els.map((e) => e.textContent));
    expect(report[0]).toBe('The power went before step 15: l2_update: write the L2 table with the new entry.');
    expect(report[1]).toBe('Steps 1-14 were flushed before the cut: they survive whatever happens.');
    expect(report).toContain('The read-write open checked nothing: no dirty bit asks it to.');
    expect(report.join('\n')).toMatch(/check -r leaks gave the leaked clusters back: .*Repairing cluster 5 refcount=1 reference=0/);
    expect(report.at(-1)).toBe('The new data was lost: the range reads as before the write.');
    expect(await t.page.$eval('#report', (e) => (e as HTMLElement).dataset.survived)).toBe('false');
    // The recorded write is spent: nothing to step through until the next one.
    expect(await t.page.$eval('#next', (e) => (e as HTMLButtonElement).disabled)).toBe(true);
    await t.screenshot('teach-powerloss.png');
  });

  it('with lazy_refcounts, the dirty bit makes the reopen repair the refcounts', async () => {
    await create('qcow2-lazy');
    await t.click('#step');
    const s = await steps();
    // The dirty bit goes to disk, flushed, right before the L2 entry.
    expect(s.slice(-4)).toEqual(['dirty', 'flush', 'l2', 'flush']);
    await stepTo(s.length - 2);
    await t.click('#plug');
    const out = await t.consoleText();
    const after = out.slice(out.lastIndexOf('-- the power goes before'));
    expect(after).toContain('the dirty bit makes the open run the check and repair');
    // The open itself finds the leaked data cluster and repairs it; the check after finds nothing.
    const reopened = after.slice(after.indexOf('> open powerloss:teach.qcow2'));
    const check = reopened.indexOf('> blk-img check');
    expect(reopened.slice(0, check)).toContain('Repairing cluster 5 refcount=1 reference=0');
    expect(reopened.slice(check)).toContain('No errors were found on the image.');
    expect(reopened.slice(check)).not.toMatch(/Leaked cluster|ERROR/);
    expect(await t.page.$eval('#facts', (e) => (e as HTMLElement).dataset.dirty)).toBe('false');
    expect(await t.kinds()).not.toContain('leak');
    expect(await crashedKinds()).toContain('leak');
    const report = await t.page.$$eval('#report li', (els) => els.map((e) => e.textContent));
    expect(report.join('\n')).toMatch(/open saw the dirty bit and repaired: .*Repairing cluster 5 refcount=1 reference=0/);
    await t.screenshot('teach-powerloss-lazy.png');
  });

  it('reads a base image over http under a qcow2 overlay', async () => {
    await create('qcow2', true);
    expect(await text('#facts')).toMatch(/backing http:\/\/127\.0\.0\.1:\d+\/dist\/base\.raw/);
    await t.run('write -P 0x22 4k 4k');
    const layers = await t.layers();
    expect(layers[1]).toBe('top');
    expect(layers.filter((l) => l === 'base1')).toHaveLength(255);
    expect(await t.page.$$eval('#chain .guest[data-remote="true"]', (els) => els.length)).toBe(255);
    expect(await text('#chain-summary')).toMatch(/1 cluster\(s\) answered by this image, 255 by the base image fetched over http \(http:\/\/127\.0\.0\.1:\d+\/dist\/base\.raw\): guest bytes 0x0-0xfff, 0x2000-0xfffff\./);
    // Cluster 2 of base.raw holds 0x42 in every byte; cluster 1 is ours now.
    await t.run('read -P 0x42 8k 4k');
    await t.run('read -P 0x22 4k 4k');
    const out = await t.consoleText();
    expect(out).toContain('read 4096/4096 bytes at offset 8192');
    expect(out).toContain('read 4096/4096 bytes at offset 4096');
    expect(out.slice(out.lastIndexOf('> read -P 0x42'))).not.toContain('Pattern verification failed');
    await t.screenshot('teach-http-base.png');
  });
});
