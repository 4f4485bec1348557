// The core's playback rules, driven through the native adapter with a fake media element.
import { test, mock, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { monitorVideo, cacheStatus, cut } from '../dist/index.js';
import { FakeVideo, recorder, settle } from './fake.mjs';

beforeEach(() => mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 1_750_000_000_000 }));
afterEach(() => mock.timers.reset());

function setup(extra = {}) {
  const video = new FakeVideo();
  const rec = recorder(extra.statuses);
  const m = monitorVideo(video, { collector: 'https://qoe.example/', key: 'k1', transport: rec.transport, metadata: { video_id: 'v1', cdn: 'fastly', custom: { plan: 'gold' } }, ...extra.options });
  return { video, rec, m };
}

/** The events of a playback, an end, and a second playback: two views, each numbered from 0. */
function twoViews(rec) {
  const evs = rec.events();
  assert.deepEqual(evs.map((e) => e.type), ['viewstart', 'playrequest', 'playing', 'viewend', 'viewstart', 'playrequest', 'playing']);
  assert.notEqual(evs[0].view_id, evs[4].view_id);
  assert.deepEqual(evs.slice(4).map((e) => e.seq), [0, 1, 2]);
  return evs;
}

async function done(m) {
  m.sender.flush();
  await settle();
  m.sender.flush();
  await settle();
}

test('start-up: play request, the initial load is no stall, the first frame is `playing`', async () => {
  const { video, rec, m } = setup();
  video.play();
  mock.timers.tick(300);
  video.stall(); // the initial load
  mock.timers.tick(500);
  video.frames();
  await done(m);
  const evs = rec.events();
  assert.deepEqual(evs.map((e) => e.type), ['viewstart', 'playrequest', 'playing']);
  assert.deepEqual(evs.map((e) => e.seq), [0, 1, 2]);
  assert.equal(new Set(evs.map((e) => e.view_id)).size, 1);
  assert.equal(evs[2].ts - evs[1].ts, 800);
  assert.equal(evs[0].video_id, 'v1');
  assert.equal(evs[0].player_name, 'html5');
  assert.deepEqual(evs[0].custom, { plan: 'gold' });
  // Sent at once after the play request and after the first frame, not after 10 s.
  assert.equal(rec.posts.length, 2);
  assert.equal(rec.posts[0].url, 'https://qoe.example/v1/beacon?key=k1');
  assert.ok(Number.isInteger(JSON.parse(rec.posts[0].body).sent_at));
  m.destroy();
});

test('a rebuffer after the first frame is a stall; waiting while paused is not', async () => {
  const { video, rec, m } = setup();
  video.play();
  video.frames();
  mock.timers.tick(2000);
  video.stall();
  mock.timers.tick(1500);
  video.frames();
  video.fire('pause', { paused: true });
  video.fire('waiting');
  video.play();
  video.frames();
  await done(m);
  assert.deepEqual(rec.types(), ['viewstart', 'playrequest', 'playing', 'stall_start', 'stall_end', 'pause', 'playing']);
  const evs = rec.events();
  assert.equal(evs[4].ts - evs[3].ts, 1500);
  m.destroy();
});

test('a seek that waits for data is a seek stall; a seek into the buffer resumes at once', async () => {
  const { video, rec, m } = setup();
  video.play();
  video.frames();
  video.fire('seeking', { readyState: 1 });
  video.stall();
  video.fire('seeked', { readyState: 2 });
  video.frames();
  video.fire('seeking', { readyState: 4 });
  video.fire('seeked', { readyState: 4 });
  video.fire('playing'); // Chrome may or may not say it again
  await done(m);
  assert.deepEqual(rec.types(), ['viewstart', 'playrequest', 'playing', 'seeking', 'stall_start', 'seeked', 'stall_end', 'seeking', 'seeked', 'playing']);
  m.destroy();
});

test('the end of the media ends the view; playing again is a new view', async () => {
  const { video, rec, m } = setup();
  video.play();
  video.frames();
  video.fire('pause', { paused: true, ended: true });
  video.fire('ended');
  video.fire('play', { paused: false, ended: false });
  video.frames();
  await done(m);
  twoViews(rec);
  m.destroy();
});

test('a new source ends the view and starts another', async () => {
  const { video, rec, m } = setup();
  video.fire('loadstart', { currentSrc: 'https://cdn/a.m3u8' });
  video.play();
  video.frames();
  video.fire('loadstart', { currentSrc: 'https://cdn/a.m3u8' }); // the same source again: same view
  video.fire('loadstart', { currentSrc: 'https://cdn/b.m3u8' });
  video.play();
  video.frames();
  await done(m);
  twoViews(rec);
  m.destroy();
});

test('after a source change the next event of any kind opens the new view; after the end only a play does', async () => {
  const { video, rec, m } = setup();
  video.fire('loadstart', { currentSrc: 'https://cdn/a.m3u8' });
  video.play();
  video.frames();
  m.sourceChanged('https://cdn/b.m3u8');
  m.onQuality({ bitrate_kbps: 800 });
  m.onSegment({ bytes: 100, cache: 'hit', url: 'https://edge.example/b/1.m4s' });
  video.fire('pause', { paused: true, ended: true });
  video.fire('ended');
  m.onSegment({ bytes: 100, cache: 'hit' }); // a late load after the end belongs to no view
  await done(m);
  const evs = rec.events();
  assert.deepEqual(evs.map((e) => e.type), ['viewstart', 'playrequest', 'playing', 'viewend', 'viewstart', 'quality_change', 'segment', 'viewend']);
  assert.equal(evs[6].host, 'edge.example');
  assert.equal(new Set(evs.slice(4).map((e) => e.view_id)).size, 1);
  m.destroy();
});

test('heartbeats every 10 s while playing or stalled, none while paused; the queue flushes every 10 s', async () => {
  const { video, rec, m } = setup();
  video.play();
  video.frames();
  await settle();
  mock.timers.tick(30_000);
  video.fire('pause', { paused: true });
  mock.timers.tick(60_000);
  await done(m);
  const beats = rec.events().filter((e) => e.type === 'heartbeat');
  assert.equal(beats.length, 3);
  assert.ok(rec.posts.length >= 4, `posts: ${rec.posts.length}`);
  m.destroy();
});

test('a paused view sends a heartbeat every 5 min, so the pipeline does not end it for inactivity', async () => {
  const { video, rec, m } = setup();
  video.play();
  video.frames();
  video.fire('pause', { paused: true });
  mock.timers.tick(40 * 60_000);
  await done(m);
  assert.equal(rec.events().filter((e) => e.type === 'heartbeat').length, 8);
  m.destroy();
});

test('a replay of the same source starts with the rendition last reported; a new source does not', async () => {
  const { video, rec, m } = setup();
  video.fire('loadstart', { currentSrc: 'https://cdn/a.m3u8' });
  m.onQuality({ bitrate_kbps: 800, width: 640, height: 360, codec: 'avc1.4d401e' });
  video.play();
  video.frames();
  video.fire('pause', { paused: true, ended: true });
  video.fire('ended');
  video.fire('play', { paused: false, ended: false });
  video.frames();
  m.sourceChanged('https://cdn/b.m3u8');
  video.play();
  await done(m);
  const types = rec.types();
  assert.deepEqual(types, ['viewstart', 'quality_change', 'playrequest', 'playing', 'viewend', 'viewstart', 'quality_change', 'playrequest', 'playing', 'viewend', 'viewstart', 'playrequest']);
  assert.equal(rec.events()[6].bitrate_kbps, 800);
  m.destroy();
});

test('cut strings stay well-formed UTF-16 (the collector refuses lone surrogates)', () => {
  assert.equal(cut('ab😀cd', 3), 'ab');
  assert.equal(cut('ab😀cd', 4), 'ab😀');
  assert.equal(cut('x\ud83dy', 10), 'x\ufffdy');
  assert.equal(cut('\ude00z', 10), '\ufffdz');
  assert.equal(cut('é'.repeat(300), 256).length, 256);
});

test('a fatal error fails the view and is sent at once; nothing plays after it', async () => {
  const { video, rec, m } = setup();
  video.play();
  video.fire('error', { error: { code: 4, message: 'no supported source' } });
  video.frames();
  await settle();
  assert.deepEqual(rec.types(), ['viewstart', 'playrequest', 'error']);
  const err = rec.events()[2];
  assert.equal(err.fatal, true);
  assert.equal(err.code, 'MEDIA_ERR_SRC_NOT_SUPPORTED');
  m.destroy();
});

test('a fatal error that comes before the `play` event of a play() already called is a start failure', async () => {
  const { video, rec, m } = setup();
  video.paused = false; // inside play(), before the `play` event is dispatched
  m.onError('manifestParsingError', 'no EXTM3U', true);
  video.fire('play');
  await done(m);
  assert.deepEqual(rec.types(), ['viewstart', 'playrequest', 'error']);
  m.destroy();
});

test('leaving the page sends viewend through sendBeacon; destroy removes every listener', async () => {
  const page = new EventTarget();
  Object.assign(globalThis, { document: { visibilityState: 'visible' }, addEventListener: page.addEventListener.bind(page), removeEventListener: page.removeEventListener.bind(page) });
  try {
    const { video, rec, m } = setup();
    video.play();
    video.frames();
    await settle();
    m.onSegment({ bytes: 5, cache: 'miss' });
    globalThis.document.visibilityState = 'hidden';
    page.dispatchEvent(new Event('visibilitychange'));
    assert.deepEqual(rec.beacons.map((b) => JSON.parse(b.body).events.map((e) => e.type)), [['segment']]);
    page.dispatchEvent(new Event('pagehide'));
    assert.equal(rec.beacons.length, 2);
    assert.equal(rec.beacons[1].url, 'https://qoe.example/v1/beacon?key=k1');
    assert.deepEqual(JSON.parse(rec.beacons[1].body).events.map((e) => e.type), ['viewend']);
    m.destroy();
    const before = rec.events().length;
    page.dispatchEvent(new Event('pagehide'));
    video.play();
    video.frames();
    await settle();
    assert.equal(rec.events().length, before);
  } finally {
    delete globalThis.document;
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
});

test('the cache status comes from X-Cache, CF-Cache-Status, X-Cache-Status, then Age', () => {
  const h = (o) => (n) => o[n];
  assert.equal(cacheStatus(h({ 'x-cache': 'HIT' })), 'hit');
  assert.equal(cacheStatus(h({ 'x-cache': 'MISS, HIT' })), 'hit');
  assert.equal(cacheStatus(h({ 'x-cache': 'Miss from cloudfront' })), 'miss');
  assert.equal(cacheStatus(h({ 'cf-cache-status': 'DYNAMIC' })), 'miss');
  assert.equal(cacheStatus(h({ 'x-cache-status': 'HIT' })), 'hit');
  assert.equal(cacheStatus(h({ age: '12' })), 'hit');
  assert.equal(cacheStatus(h({ age: '0' })), 'miss');
  assert.equal(cacheStatus(h({})), 'unknown');
});
