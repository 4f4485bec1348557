// The SDK test page. Loads the SDK from the collector (`/sdk/v1/qoeflow.min.js`, one script tag), one
// player, plays the run's media and records the ground truth itself, independently of the SDK: the media
// element's events with their times, the first frame from requestVideoFrameCallback, the player's own
// quality switches and errors. The test runner reads `window.__truth`.
//
// Query: adapter (video|hls|dash|shaka|videojs), run (the id of this playback, also its video_id),
// scenario (main|fail|leave|exit|down), collector (where beacons go), key (the ingest key), sdk (the script's URL), media (base
// URL of this run's media on the origin).
(async () => {
  const q = new URLSearchParams(location.search);
  const adapter = q.get('adapter');
  const run = q.get('run');
  const scenario = q.get('scenario');
  // `i` orders everything the page saw (element events, switches, errors) on one counter.
  const truth = { adapter, run, scenario, element: [], switches: [], errors: [], firstFrame: null, playCalled: null, done: false, log: [] };
  let seen = 0;
  window.__truth = truth;
  const status = document.getElementById('state');
  const show = () => {
    const v = document.querySelector('video');
    status.textContent = `${adapter} · ${scenario} · t=${v ? v.currentTime.toFixed(1) : '-'} s · view ${window.__monitor ? window.__monitor.view : '-'}\n` +
      `stalls ${truth.element.filter((e) => e.type === 'waiting').length} · switches ${truth.switches.length} · errors ${truth.errors.length}`;
  };
  setInterval(show, 250);
  document.getElementById('title').textContent = `qoeflow SDK · ${adapter} · ${scenario}`;

  const load = (src) =>
    new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error('could not load ' + src));
      document.head.appendChild(s);
    });
  const LIBS = {
    hls: ['/lib/hls.js/dist/hls.min.js'],
    dash: ['/lib/dashjs/dist/modern/umd/dash.all.min.js'],
    shaka: ['/lib/shaka-player/dist/shaka-player.compiled.js'],
    videojs: ['/lib/video.js/dist/video.min.js'],
  };
  await load(q.get('sdk'));
  for (const lib of LIBS[adapter] || []) await load(lib);

  const video = document.getElementById('video');
  for (const type of ['play', 'playing', 'waiting', 'pause', 'seeking', 'seeked', 'ended', 'error']) {
    video.addEventListener(type, () => truth.element.push({ i: seen++, type, t: Date.now(), paused: video.paused, time: video.currentTime }));
  }
  video.requestVideoFrameCallback((now) => {
    truth.firstFrame = Math.round(performance.timeOrigin + now);
  });
  const media = q.get('media');
  const hlsUrl = media + '/hls/master.m3u8';
  const dashUrl = media + '/dash/manifest.mpd';
  const options = {
    collector: q.get('collector'),
    key: q.get('key') || undefined,
    metadata: { video_id: run, video_title: `${adapter} ${scenario}`, cdn: run, stream_type: 'vod', custom: { scenario } },
  };
  const switched = (kbps) => truth.switches.push({ i: seen++, t: Date.now(), kbps });
  const failed = (fatal, code) => truth.errors.push({ i: seen++, t: Date.now(), fatal, code: String(code) });
  // Small buffers, as a low-latency service would configure them: a throttled network shows at once.
  const BUFFER_S = 4;
  let monitor;
  if (adapter === 'video') {
    video.addEventListener('error', () => failed(true, video.error && video.error.code));
    monitor = qoeflow.monitor(video, options);
    video.src = hlsUrl; // Chromium plays HLS natively, as Safari does
  } else if (adapter === 'hls') {
    const hls = new Hls({ maxBufferLength: BUFFER_S, maxMaxBufferLength: BUFFER_S + 2, backBufferLength: 10 });
    hls.on(Hls.Events.LEVEL_SWITCHED, (_e, d) => switched(hls.levels[d.level].bitrate / 1000));
    hls.on(Hls.Events.ERROR, (_e, d) => {
      if (d.fatal || !['bufferStalledError', 'bufferNudgeOnStall', 'bufferSeekOverHole'].includes(d.details)) failed(!!d.fatal, d.details);
    });
    monitor = qoeflow.monitor(hls, video, options);
    hls.loadSource(hlsUrl);
    hls.attachMedia(video);
  } else if (adapter === 'dash') {
    const player = dashjs.MediaPlayer().create();
    player.updateSettings({ streaming: { buffer: { bufferTimeAtTopQuality: BUFFER_S, bufferTimeAtTopQualityLongForm: BUFFER_S, bufferToKeep: 10 } } });
    player.on('qualityChangeRendered', (e) => e.mediaType === 'video' && switched(e.newRepresentation.bandwidth / 1000));
    // dash.js plays on after a failed clock sync (16), a buffer prune error (21), unparsable subtitles (33).
    player.on('error', (e) => failed(![16, 21, 33].includes(e.error && e.error.code), e.error && e.error.code));
    player.on('playbackError', (e) => failed(true, e.error && e.error.code));
    player.initialize(video, undefined, false);
    monitor = qoeflow.monitor(player, video, options);
    player.attachSource(dashUrl);
  } else if (adapter === 'shaka') {
    shaka.polyfill.installAll();
    const player = new shaka.Player();
    player.configure({ streaming: { bufferingGoal: BUFFER_S, rebufferingGoal: 1, bufferBehind: 10 } });
    const quality = (e) => e.newTrack && switched((e.newTrack.videoBandwidth || e.newTrack.bandwidth) / 1000);
    player.addEventListener('adaptation', quality);
    player.addEventListener('variantchanged', quality);
    player.addEventListener('error', (e) => failed(e.detail.severity === 2, e.detail.code));
    await player.attach(video);
    monitor = qoeflow.monitor(player, video, options);
    // A load that fails rejects its promise (Shaka dispatches no `error` event for it).
    player.load(dashUrl).catch((e) => failed(e.severity === 2, e.code));
  } else if (adapter === 'videojs') {
    videojs.Vhs.GOAL_BUFFER_LENGTH = BUFFER_S;
    videojs.Vhs.MAX_GOAL_BUFFER_LENGTH = BUFFER_S + 2;
    const player = videojs(video, { html5: { vhs: { overrideNative: true } }, muted: true });
    const levels = player.qualityLevels();
    levels.on('change', (e) => {
      const l = levels[e.selectedIndex];
      if (l && l.bitrate) switched(l.bitrate / 1000);
    });
    player.on('error', () => failed(true, player.error() && player.error().code));
    monitor = qoeflow.monitor(player, video, options);
    player.src({ src: hlsUrl, type: 'application/x-mpegURL' });
  }
  window.__monitor = monitor;
  truth.playCalled = Date.now();
  video.play().catch((e) => truth.log.push('play(): ' + e.name));

  const until = (cond, ms) =>
    new Promise((resolve) => {
      const t0 = Date.now();
      const tick = () => (cond() || Date.now() - t0 > ms ? resolve(cond()) : setTimeout(tick, 50));
      tick();
    });
  if (scenario === 'fail') {
    await until(() => truth.errors.some((e) => e.fatal), 20_000);
    await new Promise((r) => setTimeout(r, 1000));
  } else if (scenario === 'exit') {
    await new Promise((r) => setTimeout(r, 2000));
  } else if (scenario === 'leave') {
    await until(() => video.currentTime >= 6, 30_000);
  } else {
    // main, down: play; in main, seek forward past the buffer half-way (a seek that has to wait).
    if (scenario === 'main') {
      await until(() => video.currentTime >= 20 || truth.errors.some((e) => e.fatal), 90_000);
      if (!truth.errors.some((e) => e.fatal)) video.currentTime = 30;
    }
    // To the end, or to a fatal error (the native element does not retry a failed segment).
    await until(() => video.ended || truth.errors.some((e) => e.fatal), 120_000);
    await new Promise((r) => setTimeout(r, 500));
  }
  truth.done = true;
})().catch((e) => {
  window.__truth = window.__truth || {};
  window.__truth.fatal = String(e && e.stack ? e.stack : e);
  window.__truth.done = true;
});
