/// <reference lib="dom" />
// The teaching page hosted by another static server: nginx from Debian serves the built web/
// folder, and the page reads its base image over http from it with Range requests. The same
// files behind nginx with Range turned off: the base image is refused with the http driver's
// clear error, and nothing is created.
import { cpSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WEB_ROOT } from '../../web/build.js';
import { requireNginx, startNginx, type Nginx } from '../interop/http-server.js';
import { requireChromium } from './chromium.js';
import { openTeachPage, type TeachPage } from './page.js';

const have = requireChromium();
const nginxPath = requireNginx();

describe.skipIf(!have || nginxPath === null)('teaching page hosted by nginx', () => {
  let t: TeachPage;
  let nginx: Nginx;

  beforeAll(async () => {
    t = await openTeachPage(async () => {
      nginx = await startNginx(nginxPath!);
      for (const f of ['index.html', 'style.css', 'dist']) cpSync(join(WEB_ROOT, f), join(nginx.www, f), { recursive: true });
      return { url: `${nginx.url}/`, stop: () => nginx.stop() };
    });
  });

  afterAll(async () => {
    await t?.close();
  });

  it('reads the base image from nginx under a qcow2 overlay', async () => {
    await t.page.selectOption('#format', 'qcow2');
    await t.page.check('#with-base');
    await t.click('#create');
    expect(await t.page.$eval('#facts', (e) => e.textContent)).toContain(`backing ${nginx.url}/dist/base.raw`);
    await t.run('write -P 0x22 0 4k');
    const layers = await t.layers();
    expect(layers[0]).toBe('top');
    expect(layers.filter((l) => l === 'base1')).toHaveLength(255);
    // Cluster 9 of base.raw holds 0x49 in every byte.
    await t.run('read -P 0x49 36k 4k');
    const out = await t.consoleText();
    expect(out.slice(out.lastIndexOf('> read -P 0x49'))).toContain('read 4096/4096 bytes at offset 36864');
    expect(out).not.toContain('Pattern verification failed');
  });

  it('refuses the base image when the host ignores Range', async () => {
    // The same files from the server with max_ranges 0: the page itself loads (it needs no
    // ranges), the base image under it is refused with the http driver's error.
    await t.page.goto(`${nginx.noRangeUrl}/`);
    await t.idle();
    await t.page.selectOption('#format', 'qcow2');
    await t.page.check('#with-base');
    await t.click('#create');
    const out = await t.consoleText();
    const create = out.slice(out.lastIndexOf('> blk-img create'));
    expect(create).toContain("Server does not support 'range' (byte ranges).");
    expect(create).toContain('Could not open backing image.');
  });
});
