// @qoeflow/web: qoeflow's player SDK. `monitor(player, video, options)` picks the adapter for the player
// (or `monitor(video, options)` for a plain <video> element); each adapter is also exported alone, so a
// bundler keeps only the one an application imports.

import type { Monitor, Options } from './core';
import { monitorDash, type DashLike } from './dash';
import { monitorHls, type HlsLike } from './hls';
import { monitorShaka, type ShakaLike } from './shaka';
import { monitorVideo } from './video';
import { monitorVideojs, type VideojsLike } from './videojs';

export { Monitor, cacheStatus, cut, type Options, type Metadata, type QoeEvent, type Segment, type Quality } from './core';
export { Sender, type Transport, type SendResult } from './sender';
export { monitorVideo, attachVideo } from './video';
export { monitorHls, type HlsLike } from './hls';
export { monitorDash, type DashLike } from './dash';
export { monitorShaka, type ShakaLike } from './shaka';
export { monitorVideojs, type VideojsLike } from './videojs';

const isMedia = (x: unknown): x is HTMLMediaElement =>
  typeof HTMLMediaElement !== 'undefined' ? x instanceof HTMLMediaElement : !!x && typeof (x as HTMLMediaElement).canPlayType === 'function';
const has = (x: any, ...methods: string[]) => methods.every((m) => typeof x[m] === 'function');

/** Watches `player` (an Hls, a dash.js MediaPlayer, a shaka.Player, a video.js player, or a media
 *  element) and reports to the collector in `options`. Returns the monitor: `destroy()` it with the player. */
export function monitor(player: unknown, video: HTMLMediaElement | Options | undefined, options?: Options): Monitor {
  if (options === undefined && video !== undefined && !isMedia(video)) {
    options = video;
    video = undefined;
  }
  const media = video as HTMLMediaElement | undefined;
  const opts = options as Options;
  const p = player as any;
  if (isMedia(p)) return monitorVideo(p, opts);
  if (p && has(p, 'loadSource', 'attachMedia', 'on')) return monitorHls(p as HlsLike, media, opts);
  if (p && has(p, 'getVersion', 'getVideoElement', 'on')) return monitorDash(p as DashLike, media, opts);
  if (p && has(p, 'getNetworkingEngine', 'getMediaElement', 'addEventListener')) return monitorShaka(p as ShakaLike, media, opts);
  if (p && has(p, 'tech', 'currentSrc', 'on')) return monitorVideojs(p as VideojsLike, media, opts);
  throw new Error('qoeflow.monitor: not a player it knows (hls.js, dash.js, Shaka Player, video.js or a media element)');
}
