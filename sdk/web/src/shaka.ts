// Shaka Player: ABR and manual variant switches (`adaptation`, `variantchanged`), media segments with
// timing and cache headers (`downloadcompleted`), errors with their severity (CRITICAL is fatal), and a
// new view for each `load`. A `load` that fails only rejects its promise (Shaka dispatches no `error`
// for it), so the adapter wraps the instance's `load` to see that failure too.

import { Monitor, cacheStatus, type Options } from './core';
import { attachVideo } from './video';

/** The parts of a `shaka.Player` the adapter uses (Shaka ≥ 4). */
export interface ShakaLike {
  addEventListener(event: string, f: (e: any) => void): void;
  removeEventListener(event: string, f: (e: any) => void): void;
  getMediaElement(): HTMLMediaElement | null;
  getAssetUri(): string | null;
  getNetworkingEngine(): unknown;
  load(uri: string, ...rest: unknown[]): Promise<unknown>;
}

const SEGMENT = 1;
const MEDIA_SEGMENT = 1;
const CRITICAL = 2;

export function monitorShaka(player: ShakaLike, video: HTMLMediaElement | undefined, options: Options): Monitor {
  const version = String((player.constructor as unknown as { version?: string }).version || '').replace(/^v/, '');
  const monitor = new Monitor(options, { player_name: 'shaka-player', player_version: version || undefined });
  let attached: HTMLMediaElement | undefined;
  const attach = () => {
    const media = video || player.getMediaElement();
    if (media && media !== attached) {
      attached = media;
      attachVideo(monitor, media);
    }
  };
  const quality = (e: any) => {
    const t = e && e.newTrack;
    if (t && t.bandwidth) monitor.onQuality({ bitrate_kbps: (t.videoBandwidth || t.bandwidth) / 1000, width: t.width, height: t.height, codec: t.videoCodec || t.codecs });
  };
  const handlers: Record<string, (e: any) => void> = {
    loading: () => {
      attach();
      monitor.sourceChanged(player.getAssetUri() || undefined);
    },
    adaptation: quality,
    variantchanged: quality,
    downloadcompleted: (e) => {
      if (e.requestType !== SEGMENT || !e.context || e.context.type !== MEDIA_SEGMENT) return;
      const r = e.response || {};
      const q = e.request || {};
      monitor.onSegment({
        bytes: (r.data && r.data.byteLength) || 0,
        url: r.uri,
        ttfb_ms: q.timeToFirstByte,
        duration_ms: r.timeMs,
        cache: cacheStatus((n) => (r.headers ? r.headers[n] : null)),
      });
    },
    error: (e) => {
      const err = (e && e.detail) || {};
      monitor.onError(err.code, err.message || (err.code !== undefined ? 'shaka error ' + err.code : undefined), err.severity === CRITICAL);
    },
  };
  for (const name in handlers) player.addEventListener(name, handlers[name]);
  const load = player.load;
  player.load = function (this: ShakaLike, ...args: [string, ...unknown[]]) {
    return load.apply(this, args).catch((err: any) => {
      // Shaka rejects a load replaced by a newer one with LOAD_INTERRUPTED (7000): not a failure.
      if (err && err.code !== 7000) handlers.error({ detail: err });
      throw err;
    });
  };
  monitor.onDestroy(() => {
    for (const name in handlers) player.removeEventListener(name, handlers[name]);
    player.load = load;
  });
  attach();
  return monitor;
}
