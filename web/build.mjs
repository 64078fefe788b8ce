// Builds the page into web/dist (embedded into the tandem binary by the Rust build):
//   node build.mjs               → web/dist/{index.html, app.js, app.css, favicon.svg}
//   node build.mjs --out <dir>   → the same into <dir> (the test command compares it with web/dist)
//   node build.mjs --tests       → test/*.test.ts bundled for node into .test-build/
// The output is deterministic: the same sources give the same bytes.

import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);

if (args.includes('--tests')) {
  const out = join(here, '.test-build');
  rmSync(out, { recursive: true, force: true });
  const entries = readdirSync(join(here, 'test'))
    .filter((f) => f.endsWith('.test.ts'))
    .map((f) => join(here, 'test', f));
  await build({
    entryPoints: entries,
    outdir: out,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'warning',
  });
} else {
  const i = args.indexOf('--out');
  const out = i >= 0 && args[i + 1] ? resolve(args[i + 1]) : join(here, 'dist');
  mkdirSync(out, { recursive: true });
  await build({
    entryPoints: [join(here, 'src', 'main.ts')],
    outfile: join(out, 'app.js'),
    bundle: true,
    format: 'iife',
    target: ['chrome100', 'firefox100', 'safari15'],
    minify: true,
    legalComments: 'eof',
    charset: 'utf8',
    logLevel: 'warning',
  });
  for (const f of ['index.html', 'app.css', 'favicon.svg']) copyFileSync(join(here, 'src', f), join(out, f));
}
