// Drives the demo page in headless Chromium for tests/e2e/browser.rs. Prints one line per step so the
// Rust test can act in between (send a NOTIFY after CONNECTED, check Postgres after PUBLISHED).
//   node demo.mjs <page url> <screenshot path>
import { next, withPage } from './page.mjs';

const [url, screenshot] = process.argv.slice(2);

await withPage(url, async (page) => {
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
});
