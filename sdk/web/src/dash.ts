// dash.js: the rendered quality (`qualityChangeRendered`), media segments with timing and cache headers
// (a response interceptor: dash.js ≥ 5 gives it the response headers and the FragmentRequest), errors
// (`error`: dash.js raises them once its retries are spent, fatal to the playback except a failed clock
// sync and unparsable subtitles, which it plays on without), and a new view for each new MPD.

import { Monitor, cacheStatus, type Options } from './core';
import { attachVideo } from './video';

/** The parts of a dash.js `MediaPlayer` the adapter uses. */
export interface DashLike {
  on(event: string, f: (e: any) => void): void;
  off(event: string, f: (e: any) => void): void;
  getVersion(): string;
  getVideoElement(): HTMLMediaElement;
  getSource?(): unknown;
  addResponseInterceptor?(f: (r: any) => Promise<any>): void;
  removeResponseInterceptor?(f: (r: any) => Promise<any>): void;
}

/** dash.js error codes it plays on after: TIME_SYNC_FAILED (16, the local clock is used), REMOVE_ERROR
 *  (21, a buffer prune), TIMED_TEXT_ERROR_ID_PARSE (33, subtitles only). */
const RECOVERABLE = [16, 21, 33];

const time = (d: unknown): number | undefined => (d instanceof Date ? d.getTime() : typeof d === 'number' ? d : undefined);

function header(headers: any): (name: string) => string | null {
  if (!headers) return () => null;
  if (typeof headers.get === 'function') return (n) => headers.get(n);
  const lower: Record<string, string> = {};
  for (const k in headers) lower[k.toLowerCase()] = headers[k];
  return (n) => lower[n] || null;
}

export function monitorDash(player: DashLike, video: HTMLMediaElement | undefined, options: Options): Monitor {
  const monitor = new Monitor(options, { player_name: 'dash.js', player_version: player.getVersion() });
  let media = video;
  if (!media) {
    try {
      media = player.getVideoElement();
    } catch {
      media = undefined;
    }
  }
  if (media) attachVideo(monitor, media);
  const handlers: Record<string, (e: any) => void> = {
    manifestLoadingStarted: (e) => monitor.sourceChanged(String((player.getSource && player.getSource()) || (e.request && e.request.url) || '')),
    qualityChangeRendered: (e) => {
      const r = e.newRepresentation;
      if (e.mediaType === 'video' && r) monitor.onQuality({ bitrate_kbps: r.bandwidth / 1000, width: r.width, height: r.height, codec: r.codecs });
    },
    error: (e) => {
      const err = (e && e.error) || {};
      monitor.onError(err.code, err.message, RECOVERABLE.indexOf(err.code) < 0);
    },
    playbackError: (e) => {
      const err = (e && e.error) || {};
      monitor.onError(err.code, err.message, true);
    },
  };
  for (const name in handlers) player.on(name, handlers[name]);
  const intercept = async (r: any) => {
    const q = r && r.request && r.request.customData && r.request.customData.request;
    if (q && q.type === 'MediaSegment' && r.status >= 200 && r.status < 300) {
      const start = time(q.startDate);
      const first = time(q.firstByteDate);
      const end = time(q.endDate);
      const bytes = r.data && r.data.byteLength !== undefined ? r.data.byteLength : q.bytesLoaded;
      monitor.onSegment({
        bytes: bytes || 0,
        url: r.url || q.url,
        ttfb_ms: start !== undefined && first !== undefined ? first - start : undefined,
        duration_ms: start !== undefined && end !== undefined ? end - start : undefined,
        cache: cacheStatus(header(r.headers)),
      });
    }
    return r;
  };
  if (player.addResponseInterceptor) player.addResponseInterceptor(intercept);
  monitor.onDestroy(() => {
    for (const name in handlers) player.off(name, handlers[name]);
    if (player.removeResponseInterceptor) player.removeResponseInterceptor(intercept);
  });
  return monitor;
}
