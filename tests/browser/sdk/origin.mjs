// The test's origin and collector proxy.
//
// The origin serves the test page, the players (from tests/browser/node_modules) and the media made by
// media.mjs, under /m/<run>/… so each request is attributed to one playback. Per run it can: cap the
// bandwidth and throttle it hard for a period (real rebuffering, real ABR down-switches), fail the first
// request of a chosen segment number with 404 or 500 (a real error the player retries), answer a manifest that cannot play (a
// real start failure), and send `X-Cache: HIT` for even segment numbers, `MISS` for odd ones and init
// segments. It logs every media response it sent: the ground truth for segments and cache status.
//
// The proxy stands between the page and `qoeflow serve`; `down(ms)` closes it (connections refused,
// open ones cut) and opens it again on the same port, like a collector that goes away.
import http from 'node:http';
import net from 'node:net';
import { createReadStream, readFileSync, statSync, existsSync } from 'node:fs';
import { join, normalize, extname } from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.m3u8': 'application/vnd.apple.mpegurl', '.mpd': 'application/dash+xml', '.m4s': 'video/iso.segment', '.mp4': 'video/mp4',
};

const isMedia = (path) => /\.(m4s|mp4)$/.test(path);
/** The segment number in a media path (`seg7.m4s`, `seg-1-7.m4s`); undefined for init segments. */
const segmentNumber = (path) => {
  const m = /seg(?:-\d+-)?(\d+)\.m4s$/.exec(path);
  return m ? Number(m[1]) : undefined;
};

export function startOrigin({ media, pages, modules }) {
  const plans = new Map();
  const log = [];
  const firstMedia = new Map();

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    res.setHeader('Access-Control-Allow-Origin', '*');
    res.setHeader('Access-Control-Expose-Headers', 'X-Cache, Age, Content-Length');
    res.setHeader('Cache-Control', 'no-store');
    if (req.method === 'OPTIONS') {
      res.setHeader('Access-Control-Allow-Headers', '*');
      res.writeHead(204).end();
      return;
    }
    const path = decodeURIComponent(url.pathname);
    if (path === '/favicon.ico') return res.writeHead(204).end();
    if (path.startsWith('/lib/')) return file(res, join(modules, normalize(path.slice(5))));
    const m = /^\/m\/([\w-]+)\/(.+)$/.exec(path);
    if (!m) return file(res, join(pages, normalize(path === '/' ? 'page.html' : path.slice(1))));
    const [, run, rel] = m;
    const plan = plans.get(run) || {};
    if (plan.broken === 'manifest' && /\.(m3u8|mpd)$/.test(rel)) {
      // Served with the right type, but not a playlist or MPD any player can parse.
      res.writeHead(200, { 'content-type': TYPES[extname(rel)] });
      res.end('this manifest cannot play\n');
      return;
    }
    if (!isMedia(rel)) return file(res, join(media, normalize(rel)));
    if (plan.broken === 'media') {
      // Valid manifests, but every media segment is noise no decoder accepts.
      log.push({ run, path: rel, status: 200, bytes: 4096, cache: 'miss', init: segmentNumber(rel) === undefined, at: Date.now(), complete: true, noise: true });
      res.writeHead(200, { 'content-type': TYPES[extname(rel)], 'x-cache': 'MISS' });
      res.end(Buffer.alloc(4096, 0x5a));
      return;
    }
    const now = Date.now();
    if (!firstMedia.has(run)) firstMedia.set(run, now);
    const n = segmentNumber(rel);
    if (plan.failOnce && plan.failOnce.number === n && !plan.failOnce.done) {
      plan.failOnce.done = true;
      log.push({ run, path: rel, status: plan.failOnce.status, bytes: 0, cache: null, at: now, complete: true });
      res.writeHead(plan.failOnce.status, { 'content-type': 'text/plain' }).end('injected failure\n');
      return;
    }
    const full = join(media, normalize(rel));
    if (!existsSync(full)) {
      log.push({ run, path: rel, status: 404, bytes: 0, cache: null, at: now, complete: true });
      res.writeHead(404).end();
      return;
    }
    const cache = n !== undefined && n % 2 === 0 ? 'HIT' : 'MISS';
    const size = statSync(full).size;
    // `complete` once the last byte is handed to the socket: a load the player aborts (an emergency
    // down-switch, a seek) never reached it, and no player reports it as a loaded segment.
    const entry = { run, path: rel, status: 200, bytes: size, cache: cache.toLowerCase(), init: n === undefined, at: now, complete: false };
    log.push(entry);
    res.on('finish', () => { entry.complete = true; });
    res.writeHead(200, { 'content-type': TYPES[extname(rel)], 'content-length': size, 'x-cache': cache });
    const since = now - firstMedia.get(run);
    const t = plan.throttle;
    const slow = t && since >= t.afterMs && since < t.afterMs + t.forMs;
    const rate = slow ? t.bytesPerSec : plan.capBytesPerSec;
    if (!rate) return createReadStream(full).pipe(res);
    paced(readFileSync(full), res, rate);
  });

  function file(res, path) {
    if (!existsSync(path) || !statSync(path).isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[extname(path)] || 'application/octet-stream' });
    createReadStream(path).pipe(res);
  }

  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const port = server.address().port;
      resolve({
        port,
        /** Sets what the origin does for `run`. */
        plan: (run, plan) => plans.set(run, plan),
        /** Media responses of `run`, in the order they were sent. */
        log: (run) => log.filter((l) => l.run === run),
        close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
      });
    });
  });
}

/** Sends `body` to `res` at about `rate` bytes per second, in 4 KiB slices. */
function paced(body, res, rate) {
  const start = Date.now();
  let sent = 0;
  const next = () => {
    if (res.destroyed) return;
    if (sent >= body.length) return res.end();
    const slice = body.subarray(sent, sent + 4096);
    sent += slice.length;
    res.write(slice);
    setTimeout(next, Math.max(0, start + (sent / rate) * 1000 - Date.now()));
  };
  next();
}

/** A TCP proxy to `target` (host:port) that can be taken down and brought back on the same port. */
export function startProxy(targetPort) {
  const sockets = new Set();
  let server;
  let port = 0;
  const listen = () =>
    new Promise((resolve) => {
      server = net.createServer((client) => {
        const upstream = net.connect(targetPort, '127.0.0.1');
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('close', () => sockets.delete(s));
          s.on('error', () => { client.destroy(); upstream.destroy(); });
        }
        client.pipe(upstream).pipe(client);
      });
      server.listen(port, '127.0.0.1', () => {
        port = server.address().port;
        resolve(port);
      });
    });
  const stop = () =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return listen().then(() => ({
    port,
    /** Refuses connections for `ms`, then accepts them again. */
    down: async (ms) => {
      await stop();
      await new Promise((r) => setTimeout(r, ms));
      await listen();
    },
    close: stop,
  }));
}
