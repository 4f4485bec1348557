// A fake media element and a transport that records beacons, for the unit tests.
export class FakeVideo extends EventTarget {
  paused = true;
  ended = false;
  readyState = 0;
  currentTime = 0;
  currentSrc = '';
  error = null;
  fire(name, props = {}) {
    Object.assign(this, props);
    this.dispatchEvent(new Event(name));
  }
  /** What a browser does when play() is called and frames come. */
  play() {
    this.fire('play', { paused: false });
  }
  frames() {
    this.fire('playing', { readyState: 4 });
  }
  stall() {
    this.fire('waiting', { readyState: 2 });
  }
}

export function recorder(statuses = []) {
  const posts = [];
  const beacons = [];
  return {
    posts,
    beacons,
    /** Every event delivered, in send order. */
    events: () => [...posts.filter((p) => p.status >= 200 && p.status < 300), ...beacons].flatMap((p) => JSON.parse(p.body).events),
    types: () => [...posts.filter((p) => p.status >= 200 && p.status < 300), ...beacons].flatMap((p) => JSON.parse(p.body).events.map((e) => e.type)),
    transport: {
      post(url, body) {
        const next = statuses.length ? statuses.shift() : { status: 204 };
        posts.push({ url, body, status: next.status, at: Date.now() });
        return Promise.resolve(next);
      },
      beacon(url, body) {
        beacons.push({ url, body });
        return true;
      },
    },
  };
}

export const settle = () => new Promise((r) => setImmediate(r));
