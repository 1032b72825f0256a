/// <reference lib="dom" />
// The teaching page served by web/serve.ts on 127.0.0.1 and opened in chromium, with the few
// actions the tests take on it. Screenshots go to test-artifacts/ (ignored by git).
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { buildPage } from '../../web/build.js';
import { servePage } from '../../web/serve.js';
import { launchChromium } from './chromium.js';

export const ARTIFACTS = join(import.meta.dirname, '../../test-artifacts');

export interface TeachPage {
  page: Page;
  url: string;
  /** Wait until the page finished what the last click or command started. */
  idle: () => Promise<void>;
  /** Type a console line and wait for it. */
  run: (line: string) => Promise<void>;
  click: (selector: string) => Promise<void>;
  /** The kind of every host cluster drawn. */
  kinds: () => Promise<string[]>;
  /** Who answers each guest cluster (data-layer of the chain's cells). */
  layers: () => Promise<string[]>;
  consoleText: () => Promise<string>;
  screenshot: (name: string) => Promise<void>;
  close: () => Promise<void>;
}

/** A server for the built web/ folder: its URL (ending in /) and how to stop it. */
export type Host = () => Promise<{ url: string; stop: () => Promise<void> }>;

/** web/serve.ts, what `npm run teach` runs. */
const serveTeach: Host = async () => {
  const { server, url } = await servePage();
  return { url, stop: () => new Promise<void>((ok) => server.close(() => ok())) };
};

/** Build the page, serve it with `host` (web/serve.ts by default), open it in chromium. */
export async function openTeachPage(host: Host = serveTeach): Promise<TeachPage> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await buildPage();
  const { url, stop } = await host();
  const b = await launchChromium().catch(async (e: unknown) => {
    await stop();
    throw e;
  });
  const page = b.context.pages()[0] ?? (await b.context.newPage());
  page.on('pageerror', (e) => {
    throw e;
  });
  const idle = async (): Promise<void> => {
    await page.waitForFunction(() => document.body.dataset.busy === 'false', undefined, { timeout: 20_000 });
  };
  await page.goto(url);
  await idle();
  return {
    page,
    url,
    idle,
    run: async (line) => {
      await page.fill('#cmd', line);
      await page.press('#cmd', 'Enter');
      await idle();
    },
    click: async (selector) => {
      await page.click(selector);
      await idle();
    },
    kinds: () => page.$$eval('#layout .cluster', (els) => els.map((e) => (e as HTMLElement).dataset.kind!)),
    layers: () => page.$$eval('#chain .guest', (els) => els.map((e) => (e as HTMLElement).dataset.layer!)),
    consoleText: () => page.$eval('#out', (e) => e.textContent ?? ''),
    screenshot: async (name) => {
      await page.screenshot({ path: join(ARTIFACTS, name), fullPage: true });
    },
    close: async () => {
      await b.close();
      await stop();
    },
  };
}
