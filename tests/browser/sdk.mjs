// Plays real media with real players in Debian's Chromium, the SDK reporting to a running qoeflow
// collector, and prints what each playback really did (the page's and the origin's ground truth) as JSON
// for tests/it/sdk.rs to compare with what qoeflow computed.
//
//   node sdk.mjs COLLECTOR_URL ARTIFACT_DIR MEDIA_DIR RUNS
//
// QOEFLOW_SDK_KEY, if set, is the ingest key the SDK sends (`?key=`).
// RUNS: comma-separated adapter:scenario pairs, e.g. hls:main,hls:fail,video:leave,hls:down.
// Scenarios:
//   main    bandwidth capped at 3.2 Mbit/s, throttled to 120 kbit/s for 10 s from 8 s after the first
//           media request (rebuffering, ABR down-switches), the first request of segment 14 answered
//           500, a seek from 20 s to 30 s (past the buffer), played to the end
//   fail    a start failure: a manifest that cannot play (for video.js, media no decoder accepts)
//   leave   the page is left at 6 s of playback (the last beacon goes by sendBeacon)
//   exit    media trickles at 16 kbit/s and the page is left 2 s after the play request, before the
//           first frame (an exit before video start)
//   down    the collector is unreachable for 30 s from 4 s of playback, played to the end
// Every page is left at the end (about:blank), which ends a view that is still open.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeMedia } from './sdk/media.mjs';
import { startOrigin, startProxy } from './sdk/origin.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const [collectorUrl, artifacts, mediaDir, runList] = process.argv.slice(2);
if (!runList) {
  console.error('usage: node sdk.mjs COLLECTOR_URL ARTIFACT_DIR MEDIA_DIR adapter:scenario,...');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
makeMedia(mediaDir);
const collector = new URL(collectorUrl);
const origin = await startOrigin({ media: mediaDir, pages: join(here, 'sdk'), modules: join(here, 'node_modules') });
const proxy = await startProxy(Number(collector.port));

const PLANS = {
  main: { capBytesPerSec: 400_000, throttle: { afterMs: 8_000, forMs: 10_000, bytesPerSec: 15_000 }, failOnce: { number: 14, status: 500 } },
  // video.js never gives up on an unparsable manifest (it waits, without an error); it does fail on media
  // no decoder accepts, which dash.js and Shaka in turn skip over. Each gets the start failure it reports.
  fail: { broken: 'manifest' },
  'fail-videojs': { broken: 'media' },
  leave: { capBytesPerSec: 400_000 },
  exit: { throttle: { afterMs: 0, forMs: 600_000, bytesPerSec: 2_000 } },
  down: { capBytesPerSec: 400_000 },
};

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
    '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
  ],
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const results = [];
try {
  for (const [i, pair] of runList.split(',').entries()) {
    const [adapter, scenario] = pair.split(':');
    const run = `${adapter}-${scenario}-${Date.now().toString(36)}${i}`;
    origin.plan(run, JSON.parse(JSON.stringify(PLANS[`${scenario}-${adapter}`] || PLANS[scenario])));
    const page = await browser.newPage({ viewport: { width: 700, height: 460 } });
    const console_errors = [];
    page.on('console', (m) => m.type() === 'error' && console_errors.push(m.text()));
    page.on('pageerror', (e) => console_errors.push(String(e)));
    const query = new URLSearchParams({
      adapter, run, scenario,
      collector: `http://127.0.0.1:${proxy.port}`,
      key: process.env.QOEFLOW_SDK_KEY || '',
      sdk: `${collectorUrl.replace(/\/$/, '')}/sdk/v1/qoeflow.min.js`,
      media: `http://127.0.0.1:${origin.port}/m/${run}`,
    });
    // The page on `localhost`, media and collector on `127.0.0.1`: every request of the SDK and the
    // players is cross-origin, as on a real site.
    // Not `load`: a media element delays the page's load event until its first frame.
    await page.goto(`http://localhost:${origin.port}/page.html?${query}`, { waitUntil: 'domcontentloaded' });
    const started = Date.now();
    let maxQueue = 0;
    let outage;
    while (!(await page.evaluate(() => window.__truth && window.__truth.done))) {
      if (Date.now() - started > 180_000) throw new Error(`${run}: the page did not finish in 180 s`);
      const [time, queued] = await page.evaluate(() => {
        const v = document.querySelector('video');
        return [v ? v.currentTime : 0, window.__monitor ? window.__monitor.sender.size : 0];
      });
      maxQueue = Math.max(maxQueue, queued);
      if (scenario === 'down' && !outage && time >= 4) outage = proxy.down(30_000).then(() => Date.now());
      await sleep(200);
    }
    if (outage) await outage;
    await page.screenshot({ path: join(artifacts, `sdk-${adapter}-${scenario}.png`) });
    const truth = await page.evaluate(() => window.__truth);
    const sender = await page.evaluate(() => (window.__monitor ? { dropped: window.__monitor.sender.dropped, queued: window.__monitor.sender.size } : null));
    if (scenario === 'down') {
      // Back up: the queue drains by itself within the SDK's backoff (at most 60 s).
      const t0 = Date.now();
      while ((await page.evaluate(() => window.__monitor.sender.size)) > 0 && Date.now() - t0 < 90_000) await sleep(500);
    }
    // Leaving the page ends a view that is still open, through sendBeacon.
    await page.goto('about:blank');
    await sleep(300);
    await page.close();
    results.push({ run, adapter, scenario, truth, sender, max_queue: maxQueue, origin: origin.log(run), console_errors });
    process.stderr.write(`sdk.mjs: ${run} done in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  }
  // The dashboard with these views, broken down by CDN (each run's `cdn` is its id).
  await sleep(3_000);
  const dash = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await dash.goto(`${collectorUrl.replace(/\/$/, '')}/`);
  await sleep(4_000);
  await dash.screenshot({ path: join(artifacts, 'sdk-dashboard.png'), fullPage: true });
  await dash.close();
} finally {
  await browser.close();
  await origin.close();
  await proxy.close();
}
process.stdout.write(JSON.stringify({ results }) + '\n');
