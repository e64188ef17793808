#!/usr/bin/env node
'use strict';
/*
 * Builds the standalone engine, build/engine/: what the installer copies to <cni-bin-dir>/mesh-cni.d/ and the
 * shim runs with node when the agent is not there. Run by `npm run build` after tsc.
 *
 * dist/src/cni/main.js alone cannot run on a host (it requires its sibling modules and the ffi addons), and
 * the whole dist tree with node_modules is large and slow to load. So this walks the require() graph from
 * main.js and copies only what it reaches, keeping relative paths: our compiled modules under src/, the
 * npm packages under node_modules/ (each with its package.json and, for the two @2060.io addons, the built
 * .node binaries that node-gyp-build finds at run time). mesh-cni.js at the top is the entry.
 *
 * No bundler is used (esbuild is not a dependency); the walk is a plain scan for require('literal'), which is
 * all tsc emits for our imports, dynamic `await import()` included. A require the walk cannot resolve is
 * reported and skipped: the packages we use only do that inside try/catch for optional modules.
 *
 * The build fails when the walk reaches a package that must never load on the standalone ADD path
 * (FORBIDDEN below): that is what keeps the plugin's start cost near a bare `node -e 0`.
 *
 * runtime/ carries what runs the engine on a host that has no Node.js (most nodes: COS, Bottlerocket,
 * Flatcar, managed images): the node binary building this (in the image, the image's node), its ELF loader
 * as runtime/ld.so and every library `ldd` names for node and for the engine's addons, in runtime/lib. The
 * shim starts it as `runtime/ld.so --library-path runtime/lib runtime/node mesh-cni.js`, so the host's libc
 * (any version, or none) is never used; about 100 MB. Then process.execPath is the loader, not node: nothing
 * on the engine's path may spawn process.execPath (checked below). The programs the engine runs (iptables,
 * nft, ip) are the host's and load the host's own libraries: --library-path is not inherited.
 */
const fs = require('node:fs');
const path = require('node:path');
const { builtinModules } = require('node:module');
const { execFileSync } = require('node:child_process');

const root = path.join(__dirname, '..');
const dist = path.join(root, 'dist');
const entry = path.join(dist, 'src', 'cni', 'main.js');
const outDir = path.join(root, 'build', 'engine');
const ENTRY_NAME = 'mesh-cni.js';
const FORBIDDEN = ['@kubernetes/client-node', 'prom-client', 'yargs', '@grpc/grpc-js'];
const BUILTINS = new Set(builtinModules);
const REQUIRE = /\brequire\(\s*(['"])([^'"]+)\1\s*\)/g;

/** The package a node_modules path belongs to: its root dir and name (scoped names included). */
function packageOf(file) {
  const marker = `${path.sep}node_modules${path.sep}`;
  const at = file.lastIndexOf(marker);
  if (at < 0) return undefined;
  const rest = file.slice(at + marker.length).split(path.sep);
  const name = rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0];
  return { name, dir: file.slice(0, at + marker.length) + name };
}

/**
 * Where a source file goes in the engine dir: dist/x -> x, <root>/node_modules/p/x -> node_modules/p/x, and a
 * nested copy (<root>/node_modules/p/node_modules/q/x) keeps its nesting, so two versions of q never collide.
 */
function destinationOf(file) {
  const marker = `${path.sep}node_modules${path.sep}`;
  const at = file.indexOf(marker);
  if (at >= 0) return file.slice(at + 1);
  const rel = path.relative(dist, file);
  if (rel.startsWith('..')) throw new Error(`the engine requires ${file}, which is neither in dist/ nor in a package`);
  return rel;
}

function walk() {
  const files = new Set();
  const packages = new Map();
  const unresolved = [];
  const queue = [entry];
  while (queue.length > 0) {
    const file = queue.pop();
    if (files.has(file)) continue;
    files.add(file);
    const pkg = packageOf(file);
    if (pkg) packages.set(pkg.dir, pkg.name);
    if (!file.endsWith('.js')) continue;
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(REQUIRE)) {
      const spec = m[2];
      if (spec.startsWith('node:') || BUILTINS.has(spec)) continue;
      let resolved;
      try {
        resolved = require.resolve(spec, { paths: [path.dirname(file)] });
      } catch {
        unresolved.push(`${spec} (from ${path.relative(root, file)})`);
        continue;
      }
      queue.push(resolved);
    }
  }
  return { files, packages, unresolved };
}

/** Native addons node-gyp-build loads by a computed path: the built binaries of a package, nothing else. */
function addonFiles(pkgDir) {
  const release = path.join(pkgDir, 'build', 'Release');
  if (!fs.existsSync(release)) return [];
  return fs
    .readdirSync(release)
    .filter((f) => f.endsWith('.node'))
    .map((f) => path.join(release, f));
}

/**
 * What `ldd` says these ELF files load: { libraries: Map(soname -> path), loader }. A library that is "not
 * found" fails the build: the engine would not start on the host.
 */
function sharedLibraries(files) {
  const libraries = new Map();
  let loader;
  for (const file of files) {
    let out;
    try {
      out = execFileSync('ldd', [file], { encoding: 'utf8' });
    } catch (err) {
      throw new Error(`ldd ${file} failed (is libc-bin installed?): ${err.message}`);
    }
    for (const line of out.split('\n')) {
      const linked = /^\s*(\S+) => (\S+) \(0x[0-9a-f]+\)$/.exec(line);
      if (linked) {
        libraries.set(linked[1], linked[2]);
        continue;
      }
      if (/=> not found/.test(line)) throw new Error(`${file} needs ${line.trim()}`);
      const interpreter = /^\s*(\/\S+) \(0x[0-9a-f]+\)$/.exec(line);
      if (interpreter) loader = interpreter[1];
    }
  }
  if (!loader) throw new Error(`ldd named no ELF loader for ${files[0]}`);
  return { libraries, loader };
}

/** The node runtime into <staging>/runtime (see the header). */
function bundleRuntime(staging, addons) {
  const node = fs.realpathSync(process.execPath);
  const { libraries, loader } = sharedLibraries([node, ...addons]);
  const runtime = path.join(staging, 'runtime');
  copy(node, path.join(runtime, 'node'));
  copy(fs.realpathSync(loader), path.join(runtime, 'ld.so'));
  fs.chmodSync(path.join(runtime, 'ld.so'), 0o755);
  for (const [soname, file] of libraries) copy(fs.realpathSync(file), path.join(runtime, 'lib', soname));
  return [...libraries.keys()].sort();
}

/** A module on the engine's path that spawns process.execPath would run the loader, not node. */
function respawnsExecPath(files) {
  return [...files].filter((f) => f.endsWith('.js') && !f.includes(`${path.sep}node_modules${path.sep}`) && /\bprocess\.execPath\b/.test(fs.readFileSync(f, 'utf8')));
}

function copy(from, to) {
  fs.mkdirSync(path.dirname(to), { recursive: true });
  fs.copyFileSync(from, to);
  fs.chmodSync(to, fs.statSync(from).mode & 0o755);
}

function main() {
  if (!fs.existsSync(entry)) throw new Error(`${path.relative(root, entry)} is missing: run tsc first`);
  const { files, packages, unresolved } = walk();
  const names = new Set(packages.values());
  const forbidden = FORBIDDEN.filter((name) => names.has(name));
  if (forbidden.length > 0) {
    throw new Error(`the standalone engine would load ${forbidden.join(', ')}; keep those imports lazy and off the CNI path`);
  }
  const respawning = respawnsExecPath(files);
  if (respawning.length > 0) {
    throw new Error(`${respawning.map((f) => path.relative(root, f)).join(', ')} use process.execPath, which is the ELF loader when the shim runs the shipped runtime`);
  }
  const staging = `${outDir}.tmp-${process.pid}`;
  fs.rmSync(staging, { recursive: true, force: true });
  for (const file of files) copy(file, path.join(staging, destinationOf(file)));
  const addons = [];
  for (const dir of packages.keys()) {
    copy(path.join(dir, 'package.json'), path.join(staging, destinationOf(path.join(dir, 'package.json'))));
    for (const addon of addonFiles(dir)) {
      copy(addon, path.join(staging, destinationOf(addon)));
      addons.push(addon);
    }
  }
  const libraries = bundleRuntime(staging, addons);
  const main = path.relative(dist, entry).split(path.sep).join('/');
  fs.writeFileSync(
    path.join(staging, ENTRY_NAME),
    `#!/usr/bin/env node\n'use strict';\n// The standalone mesh-cni engine; built by scripts/build-engine.js.\nrequire('./${main}');\n`,
    { mode: 0o644 },
  );
  fs.rmSync(outDir, { recursive: true, force: true });
  fs.renameSync(staging, outDir);
  const bytes = [...listFiles(outDir)].reduce((sum, f) => sum + fs.statSync(f).size, 0);
  process.stdout.write(
    `built ${path.relative(root, outDir)}/: ${files.size} modules, packages ${[...names].sort().join(', ')}; runtime node ${process.version} with ${libraries.join(', ')}; ${(bytes / 1024 / 1024).toFixed(1)} MiB\n`,
  );
  for (const u of unresolved) process.stdout.write(`  not bundled (optional, unresolvable here): ${u}\n`);
}

function* listFiles(dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* listFiles(p);
    else yield p;
  }
}

try {
  main();
} catch (err) {
  process.stderr.write(`mesh-cni: building the standalone engine failed: ${err.message}\n`);
  process.exitCode = 1;
}
