/**
 * Docker is not run here; what can be checked without it is: every path the Dockerfile copies exists once the
 * project is built (sources from the checkout; --from=build paths under /app map to the checkout after
 * `npm run build` and scripts/build-native.js), nothing it copies is excluded by .dockerignore, and the
 * entrypoint is a built file.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/paths';

const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8');
// Continuation lines joined, comments dropped.
const instructions = dockerfile.replace(/\\\n/g, ' ').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));

interface Copy {
  from?: string;
  sources: string[];
  dest: string;
}

const copies: Copy[] = instructions
  .filter((l) => /^COPY\s/i.test(l))
  .map((l) => {
    const words = l.split(/\s+/).slice(1);
    const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
    const paths = words.filter((w) => !w.startsWith('--'));
    return { from, sources: paths.slice(0, -1), dest: paths.at(-1)! };
  });

test.before(() => {
  // The build stage's two build steps; tsc has already run (the tests are its output).
  execFileSync(process.execPath, [join(REPO_ROOT, 'scripts', 'build-native.js')], { stdio: 'pipe' });
});

test('multi-stage: a node:20-bookworm build stage and a node:20-bookworm-slim runtime', (t) => {
  const froms = instructions.filter((l) => /^FROM\s/i.test(l));
  t.deepEqual(froms, ['FROM node:20-bookworm AS build', 'FROM node:20-bookworm-slim']);
  const runtime = instructions.slice(instructions.indexOf(froms[1]!)).join('\n');
  for (const pkg of ['iptables', 'nftables', 'iproute2']) t.regex(runtime, new RegExp(`apt-get install[^\\n]*\\b${pkg}\\b`));
  t.regex(dockerfile, /npm prune --omit=dev|npm ci --omit=dev/, 'production node_modules only');
  t.true(copies.some((c) => c.from === 'build' && c.sources.includes('/app/node_modules')));
});

test('every COPY source exists: checkout paths, and build-stage paths after npm run build + build-native', (t) => {
  t.true(copies.length >= 6);
  for (const copy of copies) {
    for (const source of copy.sources) {
      const local = copy.from === undefined ? join(REPO_ROOT, source) : join(REPO_ROOT, source.replace(/^\/app\/?/, ''));
      t.true(copy.from === undefined || copy.from === 'build', `unknown stage ${copy.from}`);
      t.true(copy.from === undefined || source.startsWith('/app/'), `${source}: build-stage paths are under its WORKDIR /app`);
      t.true(existsSync(local), `COPY ${copy.from ? `--from=${copy.from} ` : ''}${source}: ${local} does not exist`);
    }
  }
});

test('.dockerignore excludes none of the checkout paths the build copies', (t) => {
  const ignored = readFileSync(join(REPO_ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  for (const copy of copies.filter((c) => c.from === undefined)) {
    for (const source of copy.sources) {
      const top = source.replace(/\/$/, '').split('/')[0]!;
      t.false(ignored.includes(top), `${source} is ignored`);
    }
  }
});

test('the entrypoint runs the built CLI as `agent`, and that file is copied into the image', (t) => {
  const entry = instructions.find((l) => l.startsWith('ENTRYPOINT'))!;
  const argv = JSON.parse(entry.slice('ENTRYPOINT'.length)) as string[];
  t.deepEqual(argv, ['node', '/app/dist/src/cli/main.js', 'agent']);
  t.true(existsSync(join(REPO_ROOT, 'dist/src/cli/main.js')));
  t.true(copies.some((c) => c.dest === './dist/src' && c.sources.includes('/app/dist/src')));
  t.true(existsSync(join(REPO_ROOT, 'build/mesh-cni')));
  t.regex(dockerfile, /^USER root$/m);
  t.regex(dockerfile, /# Root, deliberately/);
});
