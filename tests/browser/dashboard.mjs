// Drives the dashboard in headless Chromium for tests/it/browser.rs.
// Usage: node dashboard.mjs <base-url> <token>; then commands on stdin, one per line:
//   WAIT_ROW <type> <id>          a row with that id is shown        -> "ROW <id>"
//   WAIT_TEXT <type> <id> <text>  that row shows <text>              -> "TEXT <id>"
//   WAIT_GONE <type> <id>         that row is no longer shown        -> "GONE <id>"
//   QUIT
// Anything that does not happen within the timeout prints "FAIL <reason>" and exits 1.
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const [base, token] = process.argv.slice(2);
const TIMEOUT = 15000;
const browser = await chromium.launch({
  executablePath: process.env.CHANGECAST_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const fail = async (reason) => { console.log(`FAIL ${reason}`); await browser.close(); process.exit(1); };
try {
  const page = await browser.newPage();
  page.on('pageerror', (error) => console.log(`PAGEERROR ${error.message}`));
  await page.goto(`${base}/?access_token=${token}`);
  await page.waitForSelector('#ticket tr[data-id]', { timeout: TIMEOUT });
  console.log(`SNAPSHOT ${await page.locator('#ticket tr[data-id]').count()}`);
  console.log(`URL ${page.url()}`);
  const row = (type, id) => `#${type} tr[data-id="${id}"]`;
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const [command, type, id, ...rest] = line.trim().split(' ');
    try {
      if (command === 'WAIT_ROW') {
        await page.waitForSelector(row(type, id), { timeout: TIMEOUT });
        console.log(`ROW ${id}`);
      } else if (command === 'WAIT_TEXT') {
        const text = rest.join(' ');
        await page.waitForFunction(([sel, t]) => document.querySelector(sel)?.textContent.includes(t),
          [row(type, id), text], { timeout: TIMEOUT });
        console.log(`TEXT ${id}`);
      } else if (command === 'WAIT_GONE') {
        await page.waitForSelector(row(type, id), { state: 'detached', timeout: TIMEOUT });
        console.log(`GONE ${id}`);
      } else if (command === 'QUIT') {
        break;
      }
    } catch (error) {
      await fail(`${line}: ${error.message.split('\n')[0]}`);
    }
  }
  await browser.close();
} catch (error) {
  await fail(error.message.split('\n')[0]);
}
