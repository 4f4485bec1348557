// video.js (8, with its HTTP streaming engine VHS): rendition changes (`qualityLevels()` `change`),
// media segments with their cache headers (VHS's per-player `xhr.onResponse` hook), player errors
// (always fatal in video.js), and a new view for each source.

import { Monitor, cacheStatus, type Options } from './core';
import { attachVideo } from './video';

/** The parts of a video.js `Player` the adapter uses. */
export interface VideojsLike {
  on(event: string, f: (e?: any) => void): void;
  off(event: string, f: (e?: any) => void): void;
  tech(safety?: boolean): any;
  currentSrc(): string;
  error(): { code: number; message?: string } | null;
  qualityLevels?(): any;
  version?(): Record<string, string>;
}

const ERRORS = ['MEDIA_ERR_CUSTOM', 'MEDIA_ERR_ABORTED', 'MEDIA_ERR_NETWORK', 'MEDIA_ERR_DECODE', 'MEDIA_ERR_SRC_NOT_SUPPORTED', 'MEDIA_ERR_ENCRYPTED'];

export function monitorVideojs(player: VideojsLike, video: HTMLMediaElement | undefined, options: Options): Monitor {
  const version = player.version ? player.version()['video.js'] : undefined;
  const monitor = new Monitor(options, { player_name: 'video.js', player_version: version });
  let attached: HTMLMediaElement | undefined;
  const attach = () => {
    // The tech's element first: on iOS video.js replaces the page's <video> with a clone.
    const tech = player.tech(true);
    const media = (tech && tech.el && tech.el()) || video;
    if (media && media !== attached) {
      attached = media;
      attachVideo(monitor, media);
    }
  };
  const onResponse = (request: any, error: unknown, response: any) => {
    if (error || !response || response.statusCode < 200 || response.statusCode >= 300 || request.requestType !== 'segment') return;
    monitor.onSegment({
      bytes: (response.body && response.body.byteLength) || 0,
      url: request.uri || response.url,
      duration_ms: request.requestTime ? Date.now() - request.requestTime : undefined,
      cache: cacheStatus((n) => (response.headers ? response.headers[n] : null)),
    });
  };
  let hooked: any;
  const handlers: Record<string, (e?: any) => void> = {
    loadstart: () => {
      attach();
      monitor.sourceChanged(player.currentSrc());
    },
    'xhr-hooks-ready': () => {
      const vhs = player.tech(true) && player.tech(true).vhs;
      if (vhs && vhs.xhr && vhs.xhr !== hooked) {
        hooked = vhs.xhr;
        vhs.xhr.onResponse(onResponse);
      }
    },
    error: () => {
      const e = player.error();
      if (e) monitor.onError(ERRORS[e.code] || e.code, e.message, true);
    },
  };
  for (const name in handlers) player.on(name, handlers[name]);
  const levels = player.qualityLevels ? player.qualityLevels() : undefined;
  const change = (e: any) => {
    const l = levels && levels[e && e.selectedIndex !== undefined ? e.selectedIndex : levels.selectedIndex];
    if (l && l.bitrate) monitor.onQuality({ bitrate_kbps: l.bitrate / 1000, width: l.width, height: l.height });
  };
  if (levels) levels.on('change', change);
  monitor.onDestroy(() => {
    for (const name in handlers) player.off(name, handlers[name]);
    if (levels) levels.off('change', change);
    if (hooked && hooked.offResponse) hooked.offResponse(onResponse);
  });
  attach();
  handlers['xhr-hooks-ready']();
  return monitor;
}
