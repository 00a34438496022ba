// Drives /socket-test (socketio_pg's test page, with the socket.io 2.x client it bundled) in headless
// Chromium for tests/e2e/browser.rs. Prints one line per step so the Rust test can act in between.
//   node socket-test.mjs <page url> <token> <screenshot path>
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const [url, token, screenshot] = process.argv.slice(2);
const input = readline.createInterface({ input: process.stdin });
const next = () => new Promise((resolve) => input.once('line', resolve));
const logLine = (text) => `#log div:has-text(${JSON.stringify(text)})`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  page.setDefaultTimeout(10000);
  await page.goto(url);
  await page.fill('#token', token);
  await page.click('#connect-form input[type=submit]');
  await page.waitForSelector(logLine('Got hello from server'));
  await page.fill('#channel', 'foo');
  await page.click('#subscribe-form input[type=submit]');
  await page.waitForSelector(logLine('Subscribed to foo'));
  console.log('SUBSCRIBED');
  await next();
  await page.waitForSelector(logLine('from-sql'));
  console.log('SAW_NOTIFY');
  await page.fill('#payload', '{"text": "from-browser"}');
  await page.click('#publish-form input[type=submit]');
  await page.waitForSelector(logLine('Published on foo'));
  await page.waitForSelector(logLine('from-browser'));
  console.log('PUBLISHED');
  await page.fill('#channel', 'not_mine');
  await page.click('#subscribe-form input[type=submit]');
  await page.waitForSelector('#log div.error:has-text("not allowed")');
  console.log('REFUSED');
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log('SCREENSHOT');
} catch (e) {
  console.log('FAILED ' + String(e).split('\n')[0]);
  process.exitCode = 1;
} finally {
  await browser.close();
}
process.exit();
