// Drives the demo page in headless Chromium for tests/e2e/browser.rs. Prints one line per step so the
// Rust test can act in between (send a NOTIFY after CONNECTED, check Postgres after PUBLISHED).
//   node demo.mjs <page url> <screenshot path>
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const [url, screenshot] = process.argv.slice(2);
const input = readline.createInterface({ input: process.stdin });
const next = () => new Promise((resolve) => input.once('line', resolve));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  page.setDefaultTimeout(10000);
  await page.goto(url);
  await page.fill('#tenant', 'demo');
  await page.fill('#topics', 'chat');
  await page.click('#connect');
  await page.waitForSelector('#status.open');
  await page.waitForSelector('#log li.info');
  console.log('CONNECTED');
  await next();
  await page.waitForSelector('#log li.message:has-text("from-sql")');
  console.log('SAW_NOTIFY');
  await page.fill('#pub-topic', 'chat');
  await page.fill('#pub-body', '{"text": "from-browser"}');
  await page.click('#publish');
  await page.waitForSelector('#log li.sent');
  await page.waitForSelector('#log li.message:has-text("from-browser")');
  console.log('PUBLISHED');
  await page.fill('#pub-body', '{"text": "buy spam now"}');
  await page.click('#publish');
  await page.waitForSelector('#log li.error:has-text("rejected")');
  console.log('REJECTED');
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log('SCREENSHOT');
} catch (e) {
  console.log('FAILED ' + String(e).split('\n')[0]);
  process.exitCode = 1;
} finally {
  await browser.close();
}
process.exit();
