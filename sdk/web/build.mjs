// Builds the SDK with esbuild and measures it:
//   dist/index.js        ESM for bundlers (npm), every adapter tree-shakeable
//   dist/qoeflow.min.js  one script tag: `qoeflow.monitor(player, video, options)` for any player
//   dist/sizes.json      minified + gzipped bytes of the core with each adapter alone, and of the script
// Fails if the core plus one adapter is over 8 KiB gzipped. `node build.mjs OUTDIR` writes elsewhere.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] || join(here, 'dist');
const version = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8')).version;
const LIMIT = 8 * 1024;
const ADAPTERS = (process.env.QOEFLOW_ADAPTERS || 'monitorVideo,monitorHls,monitorDash,monitorShaka,monitorVideojs').split(',');
mkdirSync(out, { recursive: true });
const common = { bundle: true, target: 'es2019', logLevel: 'warning', define: { __QOEFLOW_VERSION__: JSON.stringify(version) } };

await build({ ...common, entryPoints: [join(here, 'src/index.ts')], format: 'esm', outfile: join(out, 'index.js') });
await build({ ...common, entryPoints: [join(here, 'src/script.ts')], format: 'iife', minify: true, outfile: join(out, 'qoeflow.min.js') });

const gz = (bytes) => gzipSync(bytes, { level: 9 }).length;
const sizes = { version, limit_gzip: LIMIT, script: {}, adapters: {} };
const script = readFileSync(join(out, 'qoeflow.min.js'));
sizes.script = { min: script.length, gzip: gz(script) };
for (const fn of ADAPTERS) {
  const r = await build({
    ...common,
    stdin: { contents: `import { ${fn} } from './src/index.ts'; globalThis.q = ${fn};`, resolveDir: here, loader: 'ts' },
    format: 'iife',
    minify: true,
    write: false,
  });
  const code = r.outputFiles[0].contents;
  sizes.adapters[fn] = { min: code.length, gzip: gz(code) };
}
writeFileSync(join(out, 'sizes.json'), JSON.stringify(sizes, null, 2) + '\n');
for (const [name, s] of Object.entries({ 'qoeflow.min.js (all adapters)': sizes.script, ...sizes.adapters })) {
  console.log(`${name.padEnd(32)} ${String(s.min).padStart(6)} B minified ${String(s.gzip).padStart(6)} B gzipped`);
}
const over = Object.entries(sizes.adapters).filter(([, s]) => s.gzip > LIMIT);
if (over.length) {
  console.error(`core + adapter over ${LIMIT} B gzipped: ${over.map(([n, s]) => `${n} ${s.gzip}`).join(', ')}`);
  process.exit(1);
}
