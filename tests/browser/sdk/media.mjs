// Makes the test media with ffmpeg (Debian's): a 40 s test pattern encoded as three H.264 renditions
// with a key frame every 2 s, packaged as HLS (fMP4, a master playlist) and as DASH (one MPD), 2 s
// segments. Made once per content hash of these settings into `dir`; later runs reuse it.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

export const SECONDS = 40;
export const SEGMENT_SECONDS = 2;
/** The ladder: size and video bitrate (kbit/s). */
export const LADDER = [
  { width: 320, height: 180, kbps: 250 },
  { width: 640, height: 360, kbps: 700 },
  { width: 960, height: 540, kbps: 1500 },
];

export function makeMedia(dir) {
  const stamp = join(dir, `ready-${SECONDS}-${SEGMENT_SECONDS}-${LADDER.map((r) => r.height + 'x' + r.kbps).join('-')}`);
  if (existsSync(stamp)) return dir;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, 'hls'), { recursive: true });
  mkdirSync(join(dir, 'dash'), { recursive: true });
  const ffmpeg = (args) => execFileSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', ...args], { stdio: ['ignore', 'inherit', 'inherit'] });
  // One encode per rendition: constant frame rate, a closed GOP every 2 s, so both packagers cut the
  // same 2 s segments. A burnt-in clock makes screenshots show where playback was.
  const renditions = LADDER.map((r, i) => {
    const file = join(dir, `r${i}.mp4`);
    ffmpeg([
      '-f', 'lavfi', '-i', `testsrc2=size=${r.width}x${r.height}:rate=25:duration=${SECONDS}`,
      '-vf', `drawtext=text='%{pts\\:hms} ${r.height}p':x=10:y=10:fontsize=${Math.round(r.height / 12)}:fontcolor=white:box=1:boxcolor=black`,
      '-c:v', 'libx264', '-preset', 'veryfast', '-profile:v', 'main', '-pix_fmt', 'yuv420p',
      '-b:v', `${r.kbps}k`, '-maxrate', `${r.kbps}k`, '-bufsize', `${r.kbps}k`,
      '-g', String(25 * SEGMENT_SECONDS), '-keyint_min', String(25 * SEGMENT_SECONDS), '-sc_threshold', '0', '-bf', '0',
      file,
    ]);
    return file;
  });
  const inputs = renditions.flatMap((f) => ['-i', f]);
  const maps = renditions.flatMap((_, i) => ['-map', String(i)]);
  ffmpeg([
    ...inputs, ...maps, '-c', 'copy',
    '-f', 'hls', '-hls_time', String(SEGMENT_SECONDS), '-hls_playlist_type', 'vod', '-hls_segment_type', 'fmp4',
    '-hls_fmp4_init_filename', 'init.mp4', '-hls_segment_filename', join(dir, 'hls', 'v%v/seg%d.m4s'),
    '-master_pl_name', 'master.m3u8', '-var_stream_map', renditions.map((_, i) => `v:${i}`).join(' '),
    join(dir, 'hls', 'v%v/index.m3u8'),
  ]);
  ffmpeg([
    ...inputs, ...maps, '-c', 'copy',
    '-f', 'dash', '-adaptation_sets', 'id=0,streams=v', '-seg_duration', String(SEGMENT_SECONDS), '-use_template', '1', '-use_timeline', '0',
    '-init_seg_name', 'init-$RepresentationID$.m4s', '-media_seg_name', 'seg-$RepresentationID$-$Number$.m4s',
    join(dir, 'dash', 'manifest.mpd'),
  ]);
  writeFileSync(stamp, new Date().toISOString());
  return dir;
}

if (process.argv[1] && process.argv[1].endsWith('media.mjs')) {
  console.log(makeMedia(process.argv[2] || '/tmp/qoeflow-media'));
}
