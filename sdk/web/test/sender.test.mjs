// The sender: retries, Retry-After, the bounded queue and the beacon size.
import { test, mock, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { monitorVideo } from '../dist/index.js';
import { FakeVideo, recorder, settle } from './fake.mjs';

beforeEach(() => mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 1_750_000_000_000 }));
afterEach(() => mock.timers.reset());

const start = (statuses, options = {}) => {
  const video = new FakeVideo();
  const rec = recorder(statuses);
  const m = monitorVideo(video, { collector: 'http://c', transport: rec.transport, ...options });
  video.play();
  return { video, rec, m };
};

test('503 with Retry-After: the same events are sent again, not before the time it names', async () => {
  const { rec, m } = start([{ status: 503, retryAfter: '7' }, { status: 0 }]);
  await settle();
  assert.equal(rec.posts.length, 1);
  mock.timers.tick(6_900);
  await settle();
  assert.equal(rec.posts.length, 1, 'retried before Retry-After');
  mock.timers.tick(200);
  await settle();
  assert.equal(rec.posts.length, 2);
  const waited = rec.posts[1].at - rec.posts[0].at;
  assert.ok(waited >= 7_000 && waited <= 7_100, `waited ${waited} ms`);
  // A network error: backoff without a header (0.5 … 1 s at the first), then delivered.
  mock.timers.tick(2_000);
  await settle();
  assert.equal(rec.posts.length, 3);
  const bodies = rec.posts.map((p) => JSON.parse(p.body));
  assert.deepEqual(bodies[2].events, bodies[0].events);
  assert.ok(bodies[2].sent_at > bodies[0].sent_at, 'sent_at is the time of each send');
  assert.deepEqual(rec.types(), ['viewstart', 'playrequest']);
  m.destroy();
});

test('a refused beacon (400) is not retried', async () => {
  const { rec, m } = start([{ status: 400 }]);
  await settle();
  mock.timers.tick(120_000);
  await settle();
  assert.equal(rec.posts.filter((p) => JSON.parse(p.body).events.some((e) => e.type === 'playrequest')).length, 1);
  m.destroy();
});

test('a dead collector cannot grow the queue; heartbeats go first, play/stall events stay', async () => {
  const statuses = Array.from({ length: 100_000 }, () => ({ status: 0 }));
  const { video, rec, m } = start(statuses, { maxQueue: 50 });
  video.frames();
  // Ten minutes of playing with a stall every minute, the collector down all the time.
  for (let min = 0; min < 10; min++) {
    mock.timers.tick(50_000);
    video.stall();
    mock.timers.tick(10_000);
    video.frames();
    await settle();
    assert.ok(m.sender.size <= 50, `queue ${m.sender.size}`);
  }
  video.fire('pause', { paused: true });
  const back = Date.now();
  statuses.length = 0; // the collector is back
  for (let i = 0; i < 5; i++) {
    mock.timers.tick(61_000);
    await settle();
  }
  m.sender.flush(); // the paused view's idle heartbeat of the last minute
  await settle();
  assert.equal(m.sender.size, 0);
  const kept = rec.events().filter((e) => e.ts <= back).map((e) => e.type);
  const count = (t) => kept.filter((k) => k === t).length;
  // Every event that is not a heartbeat arrived; the heartbeats fill what is left of the 50.
  // (60 heartbeats were made; the pause at the end pushed out one more.)
  assert.deepEqual([count('viewstart'), count('playrequest'), count('playing'), count('stall_start'), count('stall_end'), count('pause')], [1, 1, 1, 10, 10, 1]);
  assert.equal(count('heartbeat'), 50 - 24);
  assert.equal(m.sender.dropped, 60 - 26);
  m.destroy();
});

test('beacon sizes count UTF-8 bytes: titles in CJK script stay under the limit in bytes', async () => {
  const { video, rec, m } = start([{ status: 0 }]);
  video.frames();
  for (let i = 0; i < 30; i++) {
    m.update({ video_title: '視聴'.repeat(500), custom: { note: '字'.repeat(256) } });
    m.endView();
    video.play();
  }
  for (let i = 0; i < 10; i++) {
    mock.timers.tick(5_000);
    await settle();
  }
  assert.ok(rec.posts.length > 3);
  for (const p of rec.posts) assert.ok(new TextEncoder().encode(p.body).length <= 30_000, `${new TextEncoder().encode(p.body).length} B`);
  m.destroy();
});

test('destroy stops retrying: what is queued leaves by sendBeacon, no timer is left', async () => {
  const { video, rec, m } = start(Array.from({ length: 50 }, () => ({ status: 503, retryAfter: '30' })));
  video.frames();
  await settle();
  const posts = rec.posts.length;
  m.destroy();
  assert.deepEqual(rec.beacons.flatMap((b) => JSON.parse(b.body).events.map((e) => e.type)).slice(-1), ['viewend']);
  mock.timers.tick(600_000);
  await settle();
  assert.equal(rec.posts.length, posts);
});

test('every beacon stays under the 64 KiB sendBeacon limit and under 1000 events', async () => {
  const { video, rec, m } = start([]);
  video.frames();
  await settle();
  rec.posts.length = 0;
  for (let i = 0; i < 3000; i++) m.onSegment({ bytes: 1000 + i, url: 'https://edge-' + i + '.cdn.example/seg/' + 'x'.repeat(40) + '.m4s', duration_ms: 80, ttfb_ms: 12, cache: 'hit' });
  m.onError('E', 'y'.repeat(200_000), false);
  for (let i = 0; i < 20; i++) {
    await settle();
  }
  assert.ok(rec.posts.length >= 3);
  for (const p of rec.posts) {
    assert.ok(new TextEncoder().encode(p.body).length < 64 * 1024, `beacon of ${p.body.length} B`);
    assert.ok(JSON.parse(p.body).events.length <= 1000);
  }
  const segs = rec.events().filter((e) => e.type === 'segment');
  assert.equal(segs.length, 999, 'the queue keeps 1000 events: the error and the newest 999 segments');
  assert.equal(rec.events().find((e) => e.type === 'error').message.length, 1024);
  m.destroy();
});
