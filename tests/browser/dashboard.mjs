// Drives Debian's Chromium through the live dashboard of a running `qoeflow serve` and prints what it
// saw as JSON, for tests/it/dashboard.rs to check against the known traffic:
//
//   node dashboard.mjs URL SCREENSHOT_DIR DIMENSION VALUE
//
// 1. opens URL, waits for the first refresh and a firing alert, reads the alert banner and the marked
//    tiles, every [data-kpi] tile (data-value, text, status) and counts the drawn pixels of every chart
//    canvas; writes SCREENSHOT_DIR/dashboard.png;
// 2. picks DIMENSION in the breakdown, clicks the row of VALUE, waits for the refresh with that
//    filter, reads the tiles again; writes SCREENSHOT_DIR/dashboard-filtered.png.
import { chromium } from 'playwright-core';
import { join } from 'node:path';

const [url, shots, dimension, value] = process.argv.slice(2);
if (!url || !shots || !dimension || value === undefined) {
  console.error('usage: node dashboard.mjs URL SCREENSHOT_DIR DIMENSION VALUE');
  process.exit(2);
}

// playwright starts Chromium with a new, empty profile of its own.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const requests = [];
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  page.on('request', (r) => requests.push(r.url()));
  page.on('response', (r) => { if (r.status() >= 400) consoleErrors.push(`${r.status()} ${r.url()}`); });

  const refreshes = () => page.evaluate(() => Number(document.body.dataset.refreshes));
  const readTiles = () => page.evaluate(() => {
    const out = {};
    for (const el of document.querySelectorAll('[data-kpi]')) {
      out[el.dataset.kpi] = {
        value: el.dataset.value === '' ? null : Number(el.dataset.value),
        text: el.querySelector('.value').textContent,
        status: el.dataset.status,
      };
    }
    return out;
  });
  // Pixels of each tile's chart canvas in the series colour (#5aa9e6; the fill is the same colour,
  // translucent): axes and grid have other colours, so an empty chart counts none.
  const readCharts = () => page.evaluate(() => {
    const out = {};
    for (const el of document.querySelectorAll('[data-kpi]')) {
      const canvas = el.querySelector('canvas');
      if (!canvas) { out[el.dataset.kpi] = 0; continue; }
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      let drawn = 0;
      const near = (a, b) => Math.abs(a - b) <= 8;
      for (let i = 0; i < data.length; i += 4) {
        if (data[i + 3] !== 0 && near(data[i], 90) && near(data[i + 1], 169) && near(data[i + 2], 230)) drawn += 1;
      }
      out[el.dataset.kpi] = drawn;
    }
    return out;
  });

  await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction(() => Number(document.body.dataset.refreshes) >= 1, null, { timeout: 30000 });
  // The test's rule fires on this traffic: the banner and the tile it concerns show it.
  await page.waitForFunction(() => Number(document.querySelector('#alerts').dataset.firing) >= 1, null, { timeout: 30000 });
  const alerts = await page.evaluate(() => ({
    banner: [...document.querySelectorAll('#alerts .alert')].map((a) => ({ rule: a.dataset.rule, state: a.dataset.state, metric: a.dataset.metric, text: a.textContent })),
    visible: !document.querySelector('#alerts').hidden,
    marked: Object.fromEntries([...document.querySelectorAll('[data-kpi][data-alert]')].map((t) => [t.dataset.kpi, t.dataset.alert])),
  }));
  const before = { tiles: await readTiles(), charts: await readCharts(), refreshes: await refreshes() };
  await page.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true });

  // Auto-refresh: more refreshes happen without any input.
  const r0 = await refreshes();
  await page.waitForFunction((n) => Number(document.body.dataset.refreshes) > n, r0, { timeout: 15000 });

  await page.selectOption('#dimension', dimension);
  const row = `#breakdown tbody tr[data-dimension="${dimension}"][data-value="${value}"]`;
  await page.waitForSelector(row, { timeout: 15000 });
  const rows = await page.$$eval('#breakdown tbody tr', (trs) => trs.map((tr) => tr.dataset.value));
  await page.click(row);
  await page.waitForFunction((f) => document.body.dataset.filter === f, `${dimension}:${value}`, { timeout: 15000 });
  const after = { tiles: await readTiles(), charts: await readCharts() };
  const chips = await page.$$eval('#filters .chip', (cs) => cs.map((c) => c.dataset.filter));
  await page.screenshot({ path: join(shots, 'dashboard-filtered.png'), fullPage: true });

  const origin = new URL(url).origin;
  const foreign = requests.filter((r) => !r.startsWith(origin) && !r.startsWith('data:'));
  console.log(JSON.stringify({ before, after, alerts, breakdown_rows: rows, chips, console_errors: consoleErrors, foreign_requests: foreign }));
} finally {
  await browser.close();
}
