// Sending: a bounded queue of events, flushed as beacons of at most ~60 KB (under sendBeacon's 64 KiB),
// one request at a time, retried with backoff on 429/503/network errors, honouring Retry-After.

import type { QoeEvent } from './core';

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

export const MAX_BEACON_BYTES = 60_000;
/** The protocol's bound on events per beacon. */
const MAX_EVENTS_PER_BEACON = 1000;
/** Dropped first when the queue is full (oldest first); then the rest. */
const DROP_ORDER = ['heartbeat', 'segment', 'quality_change'];

const browserTransport: Transport = {
  post: (url, body) =>
    fetch(url, { method: 'POST', body, keepalive: body.length < MAX_BEACON_BYTES, headers: { 'content-type': 'text/plain' }, credentials: 'omit' })
      .then((r) => ({ status: r.status, retryAfter: r.headers.get('retry-after') }))
      .catch(() => ({ status: 0 })),
  beacon: (url, body) =>
    typeof navigator !== 'undefined' && typeof navigator.sendBeacon === 'function'
      ? navigator.sendBeacon(url, new Blob([body], { type: 'text/plain' }))
      : false,
};

export class Sender {
  /** Events waiting, with their serialized size. */
  private queue: Array<{ ev: QoeEvent; json: string }> = [];
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
    let json = JSON.stringify(ev);
    if (json.length > MAX_BEACON_BYTES / 2) {
      // Only an absurd error message can be this big: cut it, the event must still go.
      ev.message = String(ev.message || '').slice(0, 256);
      json = JSON.stringify(ev);
    }
    this.queue.push({ ev, json });
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
  private take(): { body: string; taken: Array<{ ev: QoeEvent; json: string }> } | undefined {
    if (this.queue.length === 0) return undefined;
    let size = 40;
    let n = 0;
    while (n < this.queue.length && n < MAX_EVENTS_PER_BEACON && size + this.queue[n].json.length + 1 <= MAX_BEACON_BYTES) {
      size += this.queue[n].json.length + 1;
      n++;
    }
    const taken = this.queue.splice(0, Math.max(1, n));
    return { body: '{"sent_at":' + this.now() + ',"events":[' + taken.map((q) => q.json).join(',') + ']}', taken };
  }

  /** Sends what is queued, one beacon at a time; waits out a backoff first. */
  flush(): void {
    if (this.inFlight || this.queue.length === 0) return;
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
        this.failures++;
        this.retryAt = this.now() + this.backoff(r.retryAfter);
        this.flush();
      }
      // Anything else (400, 401, 403, 413, 415) is refused for good: resending cannot help.
    });
  }

  /** Retry-After if the collector sent one, else 1 s doubling to 60 s, with jitter. */
  private backoff(retryAfter?: string | null): number {
    const secs = retryAfter ? Number(retryAfter) : NaN;
    if (isFinite(secs) && secs >= 0) return Math.min(secs, 300) * 1000;
    const base = Math.min(60_000, 1000 * Math.pow(2, Math.min(this.failures - 1, 6)));
    return base / 2 + Math.random() * (base / 2);
  }

  /** The page is going away: hand everything to `sendBeacon`, which outlives the page. */
  flushOnUnload(): void {
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
