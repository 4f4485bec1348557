// hls.js: level switches (`hlsLevelSwitched`: the level of the fragment being played), media fragment
// loads with their LoaderStats and the response's cache headers (`hlsFragLoaded`), errors with their
// `fatal` flag (`hlsError`), and a new view for each `loadSource`.

import { Monitor, cacheStatus, type Options } from './core';
import { attachVideo } from './video';

/** The parts of an `Hls` instance the adapter uses (hls.js ≥ 1.0). */
export interface HlsLike {
  on(event: string, f: (event: string, data: any) => void): void;
  off(event: string, f: (event: string, data: any) => void): void;
  levels: Array<{ bitrate: number; width?: number; height?: number; videoCodec?: string }>;
  media?: HTMLMediaElement | null;
  url?: string | null;
  loadSource(url: string): void;
  attachMedia(media: HTMLMediaElement): void;
}

/** hls.js reports its buffer stalls as non-fatal errors too; they are stalls, measured as such. */
const STALL_DETAILS = ['bufferStalledError', 'bufferNudgeOnStall', 'bufferSeekOverHole'];

/** The response header lookup of hls.js's `networkDetails` (an XMLHttpRequest, or a fetch Response). */
function headerOf(details: any): (name: string) => string | null {
  if (details && typeof details.getResponseHeader === 'function') return (n) => details.getResponseHeader(n);
  if (details && details.headers && typeof details.headers.get === 'function') return (n) => details.headers.get(n);
  return () => null;
}

export function monitorHls(hls: HlsLike, video: HTMLMediaElement | undefined, options: Options): Monitor {
  const version = (hls.constructor as unknown as { version?: string }).version;
  const monitor = new Monitor(options, { player_name: 'hls.js', player_version: version });
  const handlers: Record<string, (event: string, data: any) => void> = {
    hlsMediaAttached: (_e, d) => attach(d && d.media),
    hlsManifestLoading: (_e, d) => monitor.sourceChanged(d && d.url),
    hlsLevelSwitched: (_e, d) => {
      const l = hls.levels[d.level];
      if (l) monitor.onQuality({ bitrate_kbps: l.bitrate / 1000, width: l.width, height: l.height, codec: l.videoCodec });
    },
    hlsFragLoaded: (_e, d) => {
      const frag = d.frag;
      if (!frag || frag.sn === 'initSegment') return;
      // Low-latency HLS loads a segment in parts, one event each, and the fragment's stats add up
      // across them: each part is its own request.
      const piece = d.part || frag;
      const s = piece.stats || {};
      const l = s.loading || {};
      monitor.onSegment({
        bytes: s.loaded || (d.payload && d.payload.byteLength) || 0,
        url: piece.url,
        ttfb_ms: l.first - l.start,
        duration_ms: l.end - l.start,
        cache: cacheStatus(headerOf(d.networkDetails)),
      });
    },
    hlsError: (_e, d) => {
      if (!d.fatal && STALL_DETAILS.indexOf(d.details) >= 0) return;
      monitor.onError(d.details || d.type, d.error && d.error.message, !!d.fatal);
    },
  };
  let attached: HTMLMediaElement | undefined;
  function attach(media?: HTMLMediaElement | null) {
    if (!media || media === attached) return;
    attached = media;
    attachVideo(monitor, media);
  }
  for (const name in handlers) hls.on(name, handlers[name]);
  monitor.onDestroy(() => {
    for (const name in handlers) hls.off(name, handlers[name]);
  });
  attach(video || hls.media);
  if (hls.url) monitor.sourceChanged(hls.url);
  return monitor;
}
