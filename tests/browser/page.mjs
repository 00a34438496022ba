// What every page script shares: Debian's Chromium, headless, one page on `url`, a way to wait for the
// Rust test's go-ahead on stdin, and a FAILED line (and exit code 1) when a step does not happen.
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const input = readline.createInterface({ input: process.stdin });

// Resolves when the Rust test writes a line.
export const next = () => new Promise((resolve) => input.once('line', resolve));

// Opens `url` and runs `steps(page)`; always closes the browser and exits.
export async function withPage(url, steps) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
           '--disable-sync', '--no-first-run'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
    page.setDefaultTimeout(10000);
    await page.goto(url);
    await steps(page);
  } catch (e) {
    console.log('FAILED ' + String(e).split('\n')[0]);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
  process.exit();
}
