// Debian's chromium, headless, driven by playwright-core (never a downloaded browser). Missing,
// it skips locally and fails under CI (as the interop tests do with QEMU).
import { existsSync } from 'node:fs';
import { chromium, type BrowserContext } from 'playwright-core';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

export const CHROMIUM = '/usr/bin/chromium';

export function requireChromium(): boolean {
  if (existsSync(CHROMIUM)) return true;
  if (process.env.CI === 'true') throw new Error(`${CHROMIUM} is missing (apt-get install -y chromium)`);
  return false;
}

/** A fresh profile each launch: OPFS starts empty, and nothing leaks between runs. */
export async function launchChromium(): Promise<{ context: BrowserContext; close: () => Promise<void> }> {
  const profile = makeTempDir('blk-chromium-');
  // playwright passes the profile as --user-data-dir itself.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    viewport: { width: 1200, height: 1100 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return {
    context,
    close: async () => {
      await context.close();
      removeTempDir(profile);
    },
  };
}
