/// <reference lib="dom" />
// The teaching page with a QED image in a real browser: served by web/serve.ts on 127.0.0.1,
// driven by chromium. Assertions are on the DOM (what is drawn), never on pixels; screenshots
// go to test-artifacts/ (ignored by git) for people to look at.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireChromium } from './chromium.js';
import { openTeachPage, type TeachPage } from './page.js';

const have = requireChromium();

describe.skipIf(!have)('teaching page', () => {
  let t: TeachPage;
  let page: TeachPage['page'];

  beforeAll(async () => {
    t = await openTeachPage();
    page = t.page;
  });

  afterAll(async () => {
    await t?.close();
  });

  const idle = (): Promise<void> => t.idle();
  const run = (line: string): Promise<void> => t.run(line);
  const kinds = (): Promise<string[]> => t.kinds();
  const consoleText = (): Promise<string> => t.consoleText();

  it('creates an image and draws its clusters as writes allocate them', async () => {
    // Fresh: header cluster, then the one-cluster L1 table.
    expect(await kinds()).toEqual(['header', 'l1']);
    await run('write -P 0x5a 0 8k');
    await run('write -P 0x11 512k 4k');
    expect(await consoleText()).toContain('wrote 8192/8192 bytes at offset 0');
    const k = await kinds();
    expect(k.slice(0, 2)).toEqual(['header', 'l1']);
    expect(k.filter((x) => x === 'data')).toHaveLength(3);
    expect(k.filter((x) => x === 'l2')).toHaveLength(1);
    // The guest view: three clusters answered by this image, the rest unallocated.
    const layers = await page.$$eval('#chain .guest', (els) => els.map((e) => (e as HTMLElement).dataset.layer));
    expect(layers).toHaveLength(256);
    expect(layers.filter((l) => l === 'top')).toHaveLength(3);
    await run('blk-img map powerloss:teach.qed');
    expect(await consoleText()).toMatch(/0x80000\s+0x1000\s+0x\w+\s+powerloss:teach\.qed/);
    await run('blk-img check powerloss:teach.qed');
    expect(await consoleText()).toContain('No errors were found on the image.');
    await t.screenshot('teach-writes.png');
  });

  it('steps through an allocating write in the driver order', async () => {
    await page.fill('#step-offset', '262144');
    await page.click('#step');
    await idle();
    const steps = await page.$$eval('#steps li', (els) => els.map((e) => (e as HTMLElement).dataset.kind));
    // One L2 table maps the whole 1 MiB disk and exists: no backing file, so the dirty bit comes
    // first; blk-io's cache=writethrough flushes at the end.
    expect(steps).toEqual(['dirty', 'flush', 'data', 'l2', 'flush']);
    for (let i = 0; i < 3; i++) {
      await page.click('#next');
      await idle();
    }
    expect(await page.$eval('#steps li.current', (e) => (e as HTMLElement).dataset.kind)).toBe('data');
    expect(await page.$$eval('#layout .cluster.hot', (els) => els.map((e) => (e as HTMLElement).dataset.kind))).toEqual(['leak']);
    expect(await page.$eval('#steps li.current .why', (e) => e.textContent)).toMatch(/nothing points at them yet/);
    await t.screenshot('teach-step-qed.png');
  });

  it('pulls the plug before the last flush; reopening repairs what the crash left', async () => {
    // To the last step: the data and the L2 update are written but not yet flushed.
    await page.click('#next');
    await idle();
    await page.click('#next');
    await idle();
    expect(await page.$eval('#steps li.current', (e) => (e as HTMLElement).dataset.kind)).toBe('flush');
    await page.click('#plug');
    await idle();
    const text = await consoleText();
    expect(text).toContain('write failed: Input/output error');
    expect(text).toMatch(/crash \(seed 1\): 2 unflushed writes/);
    // After the reopen (which ran the check): whatever the crash kept, no corruption is left and
    // the image is clean; the data either reads back whole or the page says it was lost.
    const after = text.slice(text.lastIndexOf('> open powerloss:teach.qed'));
    expect(after).toMatch(/No errors were found on the image|leaked clusters were found/);
    expect(after).not.toMatch(/ERROR|corruptions/);
    expect(await page.$eval('#facts', (e) => (e as HTMLElement).dataset.dirty)).toBe('false');
    const survived = await page.$eval('#report', (e) => (e as HTMLElement).dataset.survived);
    expect(after.includes('Pattern verification failed')).toBe(survived === 'false');
    await t.screenshot('teach-powerloss-qed.png');
  });

  it('keeps an OPFS image across a reload', async () => {
    await page.selectOption('#storage', 'opfs');
    await page.click('#create');
    await idle();
    await run('write -P 0x77 64k 4k');
    expect((await kinds()).filter((x) => x === 'data')).toHaveLength(1);
    await page.reload();
    await idle();
    await page.selectOption('#storage', 'opfs');
    await page.click('#open');
    await idle();
    expect((await kinds()).filter((x) => x === 'data')).toHaveLength(1);
    await run('read -P 0x77 64k 4k');
    expect(await consoleText()).toContain('read 4096/4096 bytes at offset 65536');
  });

  it('reads a base image over http under a local overlay', async () => {
    await page.selectOption('#storage', 'powerloss');
    await page.check('#with-base');
    await page.click('#create');
    await idle();
    await run('write -P 0x22 4k 4k');
    const layers = await page.$$eval('#chain .guest', (els) => els.map((e) => (e as HTMLElement).dataset.layer));
    expect(layers[1]).toBe('top');
    expect(layers.filter((l) => l === 'base1')).toHaveLength(255);
    // Cluster 2 of base.raw holds 0x42 in every byte.
    await run('read -P 0x42 8k 4k');
    expect(await consoleText()).toContain('read 4096/4096 bytes at offset 8192');
  });
});
