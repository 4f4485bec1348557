// Sending: a bounded queue of events, flushed as beacons of at most 30 KB of UTF-8 (so a keepalive fetch
// in flight and a sendBeacon at unload fit together in the browser's shared 64 KiB keepalive quota), one
// request at a time, retried with backoff on 429/503/network errors, honouring Retry-After.

import type { QoeEvent } from './types';

/** What a send returned: an HTTP status (0 for a network error) and the Retry-After header. */
export interface SendResult {
  status: number;
  retryAfter?: string | null;
}

/** How beacons leave: `post` for normal sends, `beacon` while the page goes away. */
export interface Transport {
  post(url: string, body: string): Promise<SendResult>;
  beacon(url: string, body: string): boolean;
}

export const MAX_BEACON_BYTES = 30_000;
/** A send that has not answered in this long counts as a network error. */
const SEND_TIMEOUT_MS = 20_000;

/** The UTF-8 length of `s` (what the browser's quotas count), without encoding it. */
export function utf8Length(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      n += 2;
      i++;
    } else if (c >= 0x800) n += 2;
    else if (c >= 0x80) n += 1;
  }
  return n;
}
/** The protocol's bound on events per beacon. */
const MAX_EVENTS_PER_BEACON = 1000;
/** Dropped first when the queue is full (oldest first); then the rest. */
const DROP_ORDER = ['heartbeat', 'segment', 'quality_change'];

const browserTransport: Transport = {
  post: (url, body) => {
    const ctl = typeof AbortController !== 'undefined' ? new AbortController() : undefined;
    const timer = ctl ? setTimeout(() => ctl.abort(), SEND_TIMEOUT_MS) : undefined;
    return fetch(url, { method: 'POST', body, keepalive: true, headers: { 'content-type': 'text/plain' }, credentials: 'omit', signal: ctl && ctl.signal })
      .then((r) => ({ status: r.status, retryAfter: r.headers.get('retry-after') }))
      .catch(() => ({ status: 0 }))
      .then((r) => {
        clearTimeout(timer);
        return r;
      });
  },
  beacon: (url, body) =>
    typeof navigator !== 'undefined' && typeof navigator.sendBeacon === 'function'
      ? navigator.sendBeacon(url, new Blob([body], { type: 'text/plain' }))
      : false,
};

export class Sender {
  /** Events waiting, with their JSON and its UTF-8 size. */
  private queue: Array<{ ev: QoeEvent; json: string; bytes: number }> = [];
  private closed = false;
  private inFlight = false;
  private failures = 0;
  private retryAt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** Events dropped because the queue was full (a collector down for long). */
  dropped = 0;
  /** Beacons the collector accepted. */
  delivered = 0;
  private readonly url: string;
  private readonly transport: Transport;

  constructor(
    collector: string,
    key: string | undefined,
    private readonly maxQueue: number,
    private readonly now: () => number,
    transport?: Transport,
  ) {
    this.url = collector.replace(/\/+$/, '') + '/v1/beacon' + (key ? '?key=' + encodeURIComponent(key) : '');
    this.transport = transport || browserTransport;
  }

  /** Events queued now. */
  get size(): number {
    return this.queue.length;
  }

  push(ev: QoeEvent): void {
    const json = JSON.stringify(ev);
    this.queue.push({ ev, json, bytes: utf8Length(json) });
    if (this.queue.length > this.maxQueue) this.shed();
  }

  /** Keeps the queue at `maxQueue`: the oldest heartbeat goes first, then segments and quality
   *  changes; play, pause, seek, stall, error and view events only when nothing else is left. */
  private shed(): void {
    for (const type of DROP_ORDER) {
      const i = this.queue.findIndex((q) => q.ev.type === type);
      if (i >= 0) {
        this.queue.splice(i, 1);
        this.dropped++;
        return;
      }
    }
    this.queue.shift();
    this.dropped++;
  }

  /** Takes the next beacon's events off the queue and returns its body. */
  private take(): { body: string; taken: Array<{ ev: QoeEvent; json: string; bytes: number }> } | undefined {
    if (this.queue.length === 0) return undefined;
    // The largest event the core makes is about 8 KB (a viewstart with every dimension at its limit, in
    // 3-byte characters), so one always fits.
    let size = 40;
    let n = 0;
    while (n < this.queue.length && n < MAX_EVENTS_PER_BEACON && size + this.queue[n].bytes + 1 <= MAX_BEACON_BYTES) {
      size += this.queue[n].bytes + 1;
      n++;
    }
    const taken = this.queue.splice(0, Math.max(1, n));
    return { body: '{"sent_at":' + this.now() + ',"events":[' + taken.map((q) => q.json).join(',') + ']}', taken };
  }

  /** Sends what is queued, one beacon at a time; waits out a backoff first. */
  flush(): void {
    if (this.closed || this.inFlight || this.queue.length === 0) return;
    const wait = this.retryAt - this.now();
    if (wait > 0) {
      if (this.retryTimer === undefined) {
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          this.flush();
        }, wait);
      }
      return;
    }
    const next = this.take();
    if (!next) return;
    this.inFlight = true;
    this.transport.post(this.url, next.body).then((r) => {
      this.inFlight = false;
      if (r.status >= 200 && r.status < 300) {
        this.failures = 0;
        this.delivered++;
        this.flush();
        return;
      }
      if (r.status === 0 || r.status === 408 || r.status === 429 || r.status >= 500) {
        // Not delivered: back in front, in order, and try again later. The collector drops resends
        // of events it already has (view_id, seq), so a lost response costs nothing.
        this.queue = next.taken.concat(this.queue);
        while (this.queue.length > this.maxQueue) this.shed();
        if (this.closed) return this.flushOnUnload(true);
        this.failures++;
        this.retryAt = this.now() + this.backoff(r.retryAfter);
        this.flush();
      }
      // Anything else (400, 401, 403, 413, 415) is refused for good: resending cannot help.
    });
  }

  /** Stops sending: a pending retry is cancelled and what is still queued goes by `sendBeacon`. */
  close(): void {
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.flushOnUnload(true);
    this.closed = true;
  }

  /** Retry-After if the collector sent one, else 1 s doubling to 60 s, with jitter. */
  private backoff(retryAfter?: string | null): number {
    const secs = retryAfter ? Number(retryAfter) : NaN;
    if (isFinite(secs) && secs >= 0) return Math.min(secs, 300) * 1000;
    const base = Math.min(60_000, 1000 * Math.pow(2, Math.min(this.failures - 1, 6)));
    return base / 2 + Math.random() * (base / 2);
  }

  /** Hands what is queued to `sendBeacon`, which outlives the page: always when the page goes away
   *  (`force`), and when it is hidden only if the collector is not asking to wait (a beacon's outcome is
   *  unknown, so a refused one would be lost while the page still lives). */
  flushOnUnload(force: boolean): void {
    if (!force && this.retryAt > this.now()) return;
    for (let next = this.take(); next; next = this.take()) {
      if (!this.transport.beacon(this.url, next.body)) {
        // Over the browser's beacon quota: keep the rest for a normal send if the page stays.
        this.queue = next.taken.concat(this.queue);
        return;
      }
      this.delivered++;
    }
  }
}
