// Drives /socket-test (socketio_pg's test page, with the socket.io 2.x client it bundled) in headless
// Chromium for tests/e2e/browser.rs. Prints one line per step so the Rust test can act in between.
//   node socket-test.mjs <page url> <token> <screenshot path>
import { next, withPage } from './page.mjs';

const [url, token, screenshot] = process.argv.slice(2);
const logLine = (text) => `#log div:has-text(${JSON.stringify(text)})`;

await withPage(url, async (page) => {
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
});
