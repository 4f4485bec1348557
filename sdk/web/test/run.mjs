// Runs the unit tests (node's own test runner) against the built ESM bundle in dist/.
import { run } from 'node:test';
import { spec } from 'node:test/reporters';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
let failed = false;
run({ files: [join(here, 'core.test.mjs'), join(here, 'sender.test.mjs')], concurrency: 1 })
  .on('test:fail', () => { failed = true; })
  .compose(spec)
  .pipe(process.stdout)
  .on('finish', () => process.exit(failed ? 1 : 0));
