// The core: one view per playback session, the beacon protocol's events, and the playback rules that
// decide what a player's signals mean (docs/metrics.md §8). Adapters translate a player's own events into
// the calls of `Monitor`; they never build events themselves.

import { Sender, type Transport } from './sender';
import type { EventType, QoeEvent } from './types';

export type { EventType, QoeEvent } from './types';

/** The dimensions of a view, sent once in its `viewstart` (schemas/README.md). */
export interface Metadata {
  video_id?: string;
  video_title?: string;
  stream_type?: 'vod' | 'live';
  player_name?: string;
  player_version?: string;
  cdn?: string;
  page_url?: string;
  /** At most 32 entries; strings of at most 256 characters, numbers or booleans. */
  custom?: Record<string, string | number | boolean>;
}

export interface Options {
  /** Base URL of the qoeflow collector, e.g. `https://qoe.example.com`; beacons go to `/v1/beacon`. */
  collector: string;
  /** The ingest key (`ingest.keys`), sent as `?key=`. */
  key?: string;
  /** The view's dimensions. The adapter fills `player_name` and `player_version` when they are absent. */
  metadata?: Metadata;
  /** Heartbeat period while playing or stalled, ms (default 10 000). */
  heartbeatMs?: number;
  /** Heartbeat period of an open view that is not playing (paused, not yet started), ms (default
   *  300 000): keeps the view open past the pipeline's inactivity timeout (30 min by default). */
  idleHeartbeatMs?: number;
  /** Queue flush period, ms (default 10 000). */
  flushMs?: number;
  /** Most events kept while the collector cannot be reached (default 1 000). */
  maxQueue?: number;
  /** For tests: the clock (epoch ms) and the way beacons leave. */
  now?: () => number;
  transport?: Transport;
}

/** A media request as an adapter saw it. */
export interface Segment {
  bytes: number;
  url?: string;
  duration_ms?: number;
  ttfb_ms?: number;
  /** From the response headers, see `cacheStatus`. */
  cache?: 'hit' | 'miss' | 'unknown';
}

export interface Quality {
  bitrate_kbps: number;
  width?: number;
  height?: number;
  codec?: string;
}

type State = 'idle' | 'playing' | 'paused' | 'seeking' | 'stalled' | 'failed' | 'ended';

/** The CDN cache status of a response, from the headers CDNs set (`X-Cache`, `CF-Cache-Status`,
 *  `X-Cache-Status`, then `Age`), read through `get` (a header lookup, case-insensitive). */
export function cacheStatus(get: (name: string) => string | null | undefined): 'hit' | 'miss' | 'unknown' {
  for (const name of ['x-cache', 'cf-cache-status', 'x-cache-status']) {
    const v = (get(name) || '').toUpperCase();
    if (!v) continue;
    // Fastly and CloudFront chain several caches ("MISS, HIT", "Hit from cloudfront"): a hit anywhere
    // means the origin was not asked.
    if (v.indexOf('HIT') >= 0) return 'hit';
    if (/MISS|EXPIRED|BYPASS|DYNAMIC|REVALIDATED|UPDATING|STALE/.test(v)) return 'miss';
  }
  const age = get('age');
  if (age != null && age !== '' && !isNaN(Number(age))) return Number(age) > 0 ? 'hit' : 'miss';
  return 'unknown';
}

/** `s` as a string of at most `n` UTF-16 units that is well-formed: a cut never splits a surrogate
 *  pair, and a lone surrogate becomes U+FFFD (the collector's JSON parser refuses lone surrogates, and
 *  with them the whole beacon). */
export function cut(s: unknown, n: number): string {
  let t = String(s);
  if (t.length > n) {
    t = t.slice(0, n);
    const last = t.charCodeAt(t.length - 1);
    if (last >= 0xd800 && last <= 0xdbff) t = t.slice(0, -1);
  }
  return t.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(^|[^\ud800-\udbff])[\udc00-\udfff]/g, (m) =>
    m.length === 2 ? m[0] + '\ufffd' : '\ufffd',
  );
}

function randomId(): string {
  const c = typeof crypto !== 'undefined' ? crypto : undefined;
  if (c && c.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && c.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  let s = '';
  for (let i = 0; i < 16; i++) s += (b[i] + 256).toString(16).slice(1);
  return s;
}

const hostOf = (url?: string): string | undefined => {
  try {
    return url ? new URL(url, typeof location !== 'undefined' ? location.href : undefined).host : undefined;
  } catch {
    return undefined;
  }
};

/**
 * Watches one player. Adapters call the `on*` methods as the player reports; the monitor keeps the view,
 * decides which signals are events (a stall is a rebuffer after the first frame, not the start-up, not
 * while paused; a stall during a seek is a seek stall), numbers them and hands them to the sender.
 */
export class Monitor {
  readonly sender: Sender;
  private metadata: Metadata;
  private readonly now: () => number;
  private viewId = '';
  private seq = 0;
  private state: State = 'idle';
  private requested = false;
  private started = false;
  private bitrate = 0;
  /** The rendition last reported, sent again at the start of a new view of the same source (a replay):
   *  players announce only changes. */
  private lastQuality: Quality | undefined;
  private source: string | undefined;
  private playhead: () => number | undefined = () => undefined;
  private playIntent: () => boolean = () => false;
  private timer: ReturnType<typeof setInterval> | undefined;
  private beats = 0;
  private idleBeats = 0;
  private readonly beatEvery: number;
  private readonly idleBeatEvery: number;
  private readonly cleanups: Array<() => void> = [];

  constructor(options: Options, defaults: Metadata = {}) {
    if (!options || !options.collector) throw new Error('qoeflow: options.collector (the collector URL) is required');
    this.now = options.now || Date.now;
    this.metadata = { ...defaults, ...options.metadata };
    const flushMs = options.flushMs || 10_000;
    const tick = Math.min(flushMs, options.heartbeatMs || 10_000, 1_000);
    this.beatEvery = Math.max(1, Math.round((options.heartbeatMs || 10_000) / tick));
    this.idleBeatEvery = Math.max(1, Math.round((options.idleHeartbeatMs || 300_000) / tick));
    this.sender = new Sender(options.collector, options.key, options.maxQueue || 1_000, this.now, options.transport);
    let ticks = 0;
    const flushEvery = Math.max(1, Math.round(flushMs / tick));
    this.timer = setInterval(() => {
      if (++ticks % flushEvery === 0) this.sender.flush();
      if (this.state === 'playing' || this.state === 'stalled') {
        if (++this.beats % this.beatEvery === 0) this.emit('heartbeat');
      } else if (this.viewId && this.state !== 'ended' && this.state !== 'failed') {
        if (++this.idleBeats % this.idleBeatEvery === 0) this.emit('heartbeat');
      }
    }, tick);
    if (typeof addEventListener === 'function' && typeof document !== 'undefined') {
      const hide = () => {
        if (document.visibilityState === 'hidden') this.sender.flushOnUnload(false);
      };
      // The page goes away: the view ends, and everything queued leaves through sendBeacon, which
      // outlives the page (a fetch started now might not).
      const leave = () => {
        this.finish(false);
        this.sender.flushOnUnload(true);
      };
      addEventListener('visibilitychange', hide);
      addEventListener('pagehide', leave);
      this.cleanups.push(() => removeEventListener('visibilitychange', hide), () => removeEventListener('pagehide', leave));
    }
  }

  /** The current view's id ('' before the first event). */
  get view(): string {
    return this.viewId;
  }

  /** Where the playhead is, read when each event is made; and whether playback was asked for (an
   *  element's `paused` turns false inside `play()`, before its `play` event is dispatched). */
  setPlayhead(read: () => number | undefined, intent?: () => boolean): void {
    this.playhead = read;
    if (intent) this.playIntent = intent;
  }

  /** Runs `f` when the monitor is destroyed (adapters remove their listeners this way). */
  onDestroy(f: () => void): void {
    this.cleanups.push(f);
  }

  /** Changes the dimensions of the next view (the current one keeps those it started with). */
  update(metadata: Metadata): void {
    this.metadata = { ...this.metadata, ...metadata };
  }

  /** A new source: ends the current view, and the next event of any kind opens the new source's view.
   *  The first source seen belongs to the view being set up. */
  sourceChanged(url?: string, metadata?: Metadata): void {
    if (url === this.source) return;
    const previous = this.source;
    this.source = url;
    if (metadata) this.update(metadata);
    if (previous === undefined) return;
    this.endView();
    this.state = 'idle';
    this.lastQuality = undefined;
  }

  onPlayRequest(): void {
    if (this.state === 'ended') this.endView();
    if (this.requested && this.viewId) return;
    this.emit('playrequest');
    this.requested = true;
    this.sender.flush();
  }

  /** Frames are advancing: the first frame, a resume after pause or seek, or the end of a stall. */
  onPlaying(): void {
    if (this.state === 'failed' || this.state === 'playing') return;
    if (this.state === 'ended') this.endView();
    if (this.state === 'stalled') {
      this.emit('stall_end');
    } else {
      this.emit('playing');
      if (!this.started) {
        this.started = true;
        this.sender.flush();
      }
    }
    this.state = 'playing';
  }

  /** The player ran out of data while it should be playing (`waiting`). */
  onWaiting(): void {
    if (!this.started || (this.state !== 'playing' && this.state !== 'seeking')) return;
    this.emit('stall_start');
    this.state = 'stalled';
  }

  onPause(): void {
    if (this.state === 'failed' || this.state === 'ended' || this.state === 'paused' || !this.viewId) return;
    this.emit('pause');
    this.state = 'paused';
  }

  onSeeking(): void {
    if (this.state === 'failed' || this.state === 'ended' || !this.viewId) return;
    // A seek during a stall ends that stall (the pipeline closes it at `seeking`).
    this.emit('seeking');
    this.state = 'seeking';
  }

  /** The seek finished; `resumed` when the element plays on at once without waiting for data. */
  onSeeked(resumed: boolean): void {
    if (this.state === 'failed' || this.state === 'ended' || !this.viewId) return;
    this.emit('seeked');
    if (resumed && this.state === 'seeking') this.onPlaying();
  }

  onQuality(q: Quality): void {
    if (!(q.bitrate_kbps > 0) || this.state === 'ended') return;
    if (!this.viewId) this.openView();
    const kbps = Math.min(1e6, q.bitrate_kbps);
    if (kbps === this.bitrate) return;
    this.bitrate = kbps;
    const dim = (x?: number) => (x !== undefined && Number.isInteger(x) && x >= 0 && x <= 100_000 ? x : undefined);
    this.lastQuality = { bitrate_kbps: kbps, width: dim(q.width), height: dim(q.height), codec: q.codec ? cut(q.codec, 64) : undefined };
    this.emit('quality_change', { ...this.lastQuality });
  }

  onSegment(s: Segment): void {
    if (this.state === 'ended' || !(s.bytes >= 0)) return;
    this.emit('segment', {
      bytes: Math.round(s.bytes),
      host: hostOf(s.url),
      duration_ms: s.duration_ms !== undefined && s.duration_ms >= 0 ? Math.round(s.duration_ms) : undefined,
      ttfb_ms: s.ttfb_ms !== undefined && s.ttfb_ms >= 0 ? Math.round(s.ttfb_ms) : undefined,
      cache: s.cache || 'unknown',
    });
  }

  onError(code: string | number | undefined, message: string | undefined, fatal: boolean): void {
    if (this.state === 'ended') return;
    // A player can fail (a manifest that does not parse) before the element's `play` event is
    // dispatched: if play() was already called, the request came first.
    if (fatal && !this.requested && this.playIntent()) this.onPlayRequest();
    this.emit('error', {
      code: typeof code === 'number' && Number.isInteger(code) ? code : code === undefined ? undefined : cut(code, 128),
      message: message ? cut(message, 1024) : undefined,
      fatal,
    });
    if (fatal) this.state = 'failed';
    this.sender.flush();
  }

  /** The playback reached its end. */
  onEnded(): void {
    this.endView();
  }

  /** Ends the current view with `viewend` (if one is open); the next event starts a new one. */
  endView(): void {
    this.finish(true);
  }

  private finish(send: boolean): void {
    if (this.viewId && this.state !== 'ended') {
      this.emit('viewend');
      if (send) this.sender.flush();
    }
    this.viewId = '';
    this.state = 'ended';
    this.requested = false;
    this.started = false;
  }

  /** Ends the view, sends what is queued and stops every timer and listener. */
  destroy(): void {
    this.endView();
    this.sender.close();
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    for (const f of this.cleanups.splice(0)) f();
  }

  private emit(type: EventType, fields?: Record<string, unknown>): void {
    if (!this.viewId) this.openView();
    const ev: QoeEvent = { view_id: this.viewId, seq: this.seq++, type, ts: this.now() };
    const at = this.playhead();
    if (at !== undefined && isFinite(at) && at >= 0) ev.playhead_ms = Math.round(at);
    if (fields) for (const k in fields) if (fields[k] !== undefined) ev[k] = fields[k];
    this.sender.push(ev);
  }

  private openView(): void {
    this.viewId = randomId();
    this.seq = 0;
    this.state = 'idle';
    this.requested = false;
    this.started = false;
    this.bitrate = 0;
    this.beats = 0;
    this.idleBeats = 0;
    const m = this.metadata;
    const dims: Record<string, unknown> = {};
    for (const k of ['video_id', 'player_name', 'player_version', 'cdn'] as const) if (m[k]) dims[k] = cut(m[k], 256);
    if (m.video_title) dims.video_title = cut(m.video_title, 1024);
    if (m.stream_type === 'vod' || m.stream_type === 'live') dims.stream_type = m.stream_type;
    const page = m.page_url || (typeof location !== 'undefined' ? location.href : undefined);
    if (page) dims.page_url = cut(page, 2048);
    if (m.custom) {
      const custom: Record<string, unknown> = {};
      let n = 0;
      for (const k in m.custom) {
        const v = m.custom[k];
        if (n >= 32) break;
        if (typeof v === 'string') custom[k] = cut(v, 256);
        else if (typeof v === 'boolean' || (typeof v === 'number' && isFinite(v))) custom[k] = v;
        else continue;
        n++;
      }
      dims.custom = custom;
    }
    this.emit('viewstart', dims);
    if (this.lastQuality) {
      this.bitrate = this.lastQuality.bitrate_kbps;
      this.emit('quality_change', { ...this.lastQuality });
    }
  }
}
