/**
 * The Dockerfile's build stage, replayed without a container engine: a temp dir gets exactly what the COPY
 * lines take from the checkout (minus .dockerignore), and the stage's RUN steps run there. So a COPY that
 * misses a file the build compiles fails here, as it fails in `docker build`. Then every path the runtime stage
 * copies --from=build must exist in that dir, not in the checkout.
 *
 * Not replayed, and why (the real image build, test/cluster/, does all of it): the FROM images; `npm ci` and
 * `npm rebuild` (the registry: the checkout's node_modules is linked in their place, so a dependency missing
 * from package-lock.json is not caught here); `npm prune` (it would prune that linked node_modules); the
 * runtime stage's RUN lines (apt-get). The rest of this file reads the Dockerfile's text: golden checks.
 */
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { REPO_ROOT } from '../support/paths';
import { fileTempDir } from '../support/tmp';

const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8');
// Continuation lines joined, comments dropped.
const instructions = dockerfile.replace(/\\\n/g, ' ').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
const runtimeStart = instructions.findIndex((l, i) => i > 0 && /^FROM\s/i.test(l));
const buildStage = instructions.slice(0, runtimeStart);
const runtimeStage = instructions.slice(runtimeStart);

interface Copy {
  from?: string;
  sources: string[];
  dest: string;
}

function copyOf(line: string): Copy {
  const words = line.split(/\s+/).slice(1);
  const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
  const paths = words.filter((w) => !w.startsWith('--'));
  return { from, sources: paths.slice(0, -1), dest: paths.at(-1)! };
}

const copies = instructions.filter((l) => /^COPY\s/i.test(l)).map(copyOf);
/** Steps of the build stage that need the registry or would change the linked node_modules. */
const NOT_REPLAYED = /^npm (ci|rebuild|prune)\b/;

/** The build stage's WORKDIR (/app) as a temp dir, filled and built as `docker build` would. */
const stage = fileTempDir('docker-build-stage');
let built: Error | undefined;

test.before(() => {
  const ignored = readFileSync(join(REPO_ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  try {
    for (const line of buildStage) {
      if (/^COPY\s/i.test(line)) {
        const c = copyOf(line);
        for (const source of c.sources) {
          if (ignored.includes(source.replace(/\/$/, '').split('/')[0]!)) throw new Error(`COPY ${source}: excluded by .dockerignore`);
          const to = c.dest.endsWith('/') ? join(stage, c.dest, source.endsWith('/') ? '' : source.split('/').at(-1)!) : join(stage, c.dest);
          mkdirSync(dirname(to), { recursive: true });
          cpSync(join(REPO_ROOT, source), to, { recursive: true });
        }
      } else if (/^RUN\s/i.test(line)) {
        for (const step of line.slice(4).split('&&').map((s) => s.trim())) {
          if (NOT_REPLAYED.test(step)) {
            if (step.startsWith('npm ci') && !existsSync(join(stage, 'node_modules'))) symlinkSync(join(REPO_ROOT, 'node_modules'), join(stage, 'node_modules'));
            continue;
          }
          const [program, ...args] = step.split(/\s+/);
          execFileSync(program!, args, { cwd: stage, stdio: 'pipe', timeout: 300_000 });
        }
      }
    }
  } catch (err) {
    const e = err as Error & { stdout?: Buffer; stderr?: Buffer };
    built = new Error(`${e.message}\n${e.stdout?.toString() ?? ''}${e.stderr?.toString() ?? ''}`);
  }
});

test('the build stage builds from exactly what it copies (npm run build:product, the shim, the engine)', (t) => {
  t.is(built, undefined, built?.message);
  // the product build compiles src/ alone; nothing of the tests reaches the image
  t.false(existsSync(join(stage, 'test')));
  t.false(existsSync(join(stage, 'dist', 'test')));
  t.true(existsSync(join(stage, 'dist', 'src', 'cli', 'main.js')));
});

test('every path the runtime stage copies --from=build exists in the built stage', (t) => {
  t.is(built, undefined, built?.message);
  const fromBuild = copies.filter((c) => c.from !== undefined);
  t.true(fromBuild.length >= 5);
  for (const c of fromBuild) {
    t.is(c.from, 'build');
    for (const source of c.sources) {
      t.true(source.startsWith('/app/'), `${source}: build-stage paths are under its WORKDIR /app`);
      t.true(existsSync(join(stage, source.slice('/app/'.length))), `COPY --from=build ${source}: not produced by the build stage`);
    }
  }
});

test('the engine the image installs on hosts carries a runtime that starts with an empty environment', (t) => {
  t.is(built, undefined, built?.message);
  const runtime = join(stage, 'build', 'engine', 'runtime');
  const r = spawnSync(join(runtime, 'ld.so'), ['--library-path', join(runtime, 'lib'), join(runtime, 'node'), '-p', 'process.versions.node'], { encoding: 'utf8', env: {} });
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.trim(), process.versions.node);
  t.true(existsSync(join(runtime, 'lib', 'libc.so.6')));
});

test('the CLI the image puts on PATH is the built, executable CLI (kubectl exec ... mesh-cni status)', (t) => {
  t.is(built, undefined, built?.message);
  const link = runtimeStage.find((l) => /^RUN ln -s \S+ \/usr\/local\/bin\/mesh-cni$/.test(l));
  t.truthy(link, 'the runtime stage links mesh-cni into /usr/local/bin');
  const target = link!.split(/\s+/)[3]!;
  t.true(target.startsWith('/app/'));
  const file = join(stage, target.slice('/app/'.length));
  t.true((statSync(file).mode & 0o111) !== 0, `${target} is executable`);
  t.regex(readFileSync(file, 'utf8'), /^#!\/usr\/bin\/env node\n/);
});

test('golden: multi-stage, node:20-bookworm build and -slim runtime, the engine programs, root, entrypoint', (t) => {
  const froms = instructions.filter((l) => /^FROM\s/i.test(l));
  t.deepEqual(froms, ['FROM node:20-bookworm AS build', 'FROM node:20-bookworm-slim']);
  for (const pkg of ['iptables', 'nftables', 'iproute2', 'ipset']) t.regex(runtimeStage.join('\n'), new RegExp(`apt-get install[^\\n]*\\b${pkg}\\b`));
  t.regex(dockerfile, /npm prune --omit=dev|npm ci --omit=dev/, 'production node_modules only');
  t.true(copies.some((c) => c.from === 'build' && c.sources.includes('/app/node_modules')));
  const entry = instructions.find((l) => l.startsWith('ENTRYPOINT'))!;
  t.deepEqual(JSON.parse(entry.slice('ENTRYPOINT'.length)), ['node', '/app/dist/src/cli/main.js', 'agent']);
  t.true(copies.some((c) => c.dest === './dist/src' && c.sources.includes('/app/dist/src')));
  t.regex(dockerfile, /^USER root$/m);
  t.regex(dockerfile, /# Root, deliberately/);
});

test.after.always(() => rmSync(stage, { recursive: true, force: true }));
