// The media element: every adapter's playback state comes from it (play, playing, waiting, pause,
// seeking, seeked, ended), since that is what the viewer sees. The native adapter also takes the
// element's errors and source changes; player adapters take those from the player.

import { Monitor, type Options } from './core';

export interface VideoOptions {
  /** Report the element's `error` events (fatal). Off for player adapters, whose player reports them. */
  errors?: boolean;
  /** Start a new view when the element loads a new `src`. Off for MSE players (their `src` is a blob). */
  sources?: boolean;
}

const HAVE_FUTURE_DATA = 3;
const MEDIA_ERRORS = ['', 'MEDIA_ERR_ABORTED', 'MEDIA_ERR_NETWORK', 'MEDIA_ERR_DECODE', 'MEDIA_ERR_SRC_NOT_SUPPORTED'];

/** Listens to `video` for `monitor`; the listeners go when the monitor is destroyed. */
export function attachVideo(monitor: Monitor, video: HTMLMediaElement, opts: VideoOptions = {}): void {
  monitor.setPlayhead(() => video.currentTime * 1000, () => !video.paused);
  const on: Record<string, () => void> = {
    play: () => monitor.onPlayRequest(),
    playing: () => monitor.onPlaying(),
    waiting: () => {
      if (!video.paused) monitor.onWaiting();
    },
    // Chrome and Firefox fire `pause` just before `ended`: the end is what happened.
    pause: () => {
      if (!video.ended) monitor.onPause();
    },
    seeking: () => monitor.onSeeking(),
    seeked: () => monitor.onSeeked(!video.paused && video.readyState >= HAVE_FUTURE_DATA),
    ended: () => monitor.onEnded(),
  };
  if (opts.errors) {
    on.error = () => {
      const e = video.error;
      if (e) monitor.onError(MEDIA_ERRORS[e.code] || e.code, e.message || undefined, true);
    };
  }
  if (opts.sources) {
    on.loadstart = () => {
      if (video.currentSrc) monitor.sourceChanged(video.currentSrc);
    };
  }
  for (const name in on) video.addEventListener(name, on[name]);
  monitor.onDestroy(() => {
    for (const name in on) video.removeEventListener(name, on[name]);
  });
  // Attached to an element that already plays (autoplay started before the SDK loaded).
  if (!video.paused && video.readyState >= HAVE_FUTURE_DATA) {
    monitor.onPlayRequest();
    monitor.onPlaying();
  }
}

/** The native `<video>` element (also Safari's and Chrome's native HLS): playback, errors and sources. */
export function monitorVideo(video: HTMLMediaElement, options: Options): Monitor {
  const monitor = new Monitor(options, { player_name: 'html5' });
  attachVideo(monitor, video, { errors: true, sources: true });
  if (video.currentSrc) monitor.sourceChanged(video.currentSrc);
  return monitor;
}
