// Drives the operator's console (/admin/) in headless Chromium for tests/e2e/browser.rs: a wrong token
// is refused, the right one opens the dashboard, a tenant's rate moves while the test sends messages,
// a guest is uploaded twice with the upload button and rolled back, then removed. One line per step.
//   node console.mjs <console url> <admin token> <guest v1> <guest v2> <screenshot path>
import { next, withPage } from './page.mjs';

const [url, adminToken, v1, v2, screenshot] = process.argv.slice(2);

const cell = (page, selector) => page.locator(selector).textContent();

// The version the page said is serving (`… version <v> serving`), once the guest list shows it too.
async function serving(page, done) {
  const message = page.locator(`#message:has-text("${done}: version")`);
  await message.waitFor();
  const version = (await message.textContent()).match(/version (\S+) serving/)[1];
  await page.waitForSelector(`tr[data-guest="acme"] .version:text-is("${version}")`);
  return version;
}

async function upload(page, file) {
  await page.fill('#upload-tenant', 'acme');
  await page.setInputFiles('#upload-file', file);
  await page.click('#upload');
  return serving(page, 'acme uploaded');
}

await withPage(url, async (page) => {
  await page.fill('#token', 'not-the-token');
  await page.click('#signin');
  await page.waitForSelector('#login-error:has-text("Wrong admin token")');
  await page.fill('#token', adminToken);
  await page.click('#signin');
  await page.waitForSelector('#dashboard:not([hidden])');
  await page.waitForSelector('#listener.up');
  // The token went in headers only: the address is still the console's.
  if (page.url() !== url) throw new Error('the URL changed to ' + page.url());
  console.log('SIGNED_IN');
  await next();

  // Messages are flowing: acme's outgoing rate moves above zero and its chart has points.
  await page.waitForFunction(() => {
    const out = document.querySelector('tr[data-tenant="acme"] .out');
    return out && parseFloat(out.textContent) > 0;
  });
  await page.click('tr[data-tenant="acme"]');
  await page.waitForSelector('#chart-tenant:has-text("acme")');
  // The charts have points: three polls' rates, and the messages chart drew them.
  // eslint-disable-next-line no-undef
  await page.waitForFunction(() => series.get('acme') && series.get('acme').out.filter((v) => v > 0).length >= 3);
  const rate = await cell(page, 'tr[data-tenant="acme"] .out');
  console.log('RATE ' + rate);

  console.log('UPLOADED ' + await upload(page, v1));
  await next();
  console.log('UPLOADED ' + await upload(page, v2));
  await next();

  await page.click('tr[data-guest="acme"] button.rollback');
  console.log('ROLLED_BACK ' + await serving(page, 'acme rolled back'));
  await next();

  // The guest-call chart has drawn by now (calls ran through both versions).
  await page.waitForFunction(() => {
    const p50 = document.querySelector('tr[data-tenant="acme"] .p50');
    return p50 && p50.textContent.includes('s');
  });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log('SCREENSHOT');

  page.once('dialog', (dialog) => dialog.accept());
  await page.click('tr[data-guest="acme"] button.remove');
  await page.waitForSelector('#message:has-text("acme removed")');
  await page.waitForSelector('tr[data-guest="acme"]', { state: 'detached' });
  console.log('REMOVED');
});
