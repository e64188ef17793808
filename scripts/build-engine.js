#!/usr/bin/env node
'use strict';
/*
 * Builds the standalone engine, build/engine/: what the installer copies to <cni-bin-dir>/mesh-cni.d/ and the
 * shim runs when the agent is not there. Run by `npm run build` after tsc.
 *
 * The engine is one file, engine.js, bundled by esbuild from dist/src/standalone/main.js with every module and npm
 * package it reaches, and started by mesh-cni.js with a V8 code cache of it (LOADER below). Node resolving, reading and wrapping some 75 separate modules cost about a quarter of a
 * standalone ADD's CPU; one file is read and compiled once. The bundle keeps each CommonJS module in its own
 * lazily run wrapper, so a require() inside a function (the engine, koffi, the kubeconfig reader) still runs
 * only when the request needs it: VERSION never loads the ffi addon.
 *
 * The one native addon, koffi's, cannot be bundled. koffi's loader finds its prebuilt binary in the
 * @koromix/koffi-<os>-<arch> package npm installed for this machine; the plugin below replaces `require('koffi')`
 * with a require of that binary copied to addons/koffi.node beside the bundle (the binary is the whole API;
 * the loader only picks it and adds deprecated aliases we do not use; esbuild leaves a .node require as it is).
 *
 * The build fails when the bundle takes in a package that must never load on the standalone ADD path
 * (FORBIDDEN below, checked on esbuild's metafile): that is what keeps the plugin's start cost near a bare
 * `node -e 0`.
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
const { execFileSync } = require('node:child_process');
const vm = require('node:vm');
const Module = require('node:module');
const os = require('node:os');

const root = path.join(__dirname, '..');
const dist = path.join(root, 'dist');
const entry = path.join(dist, 'src', 'standalone', 'main.js');
const outDir = path.join(root, 'build', 'engine');
const ENTRY_NAME = 'mesh-cni.js';
const BUNDLE_NAME = 'engine.js';
const CACHE_NAME = 'engine.cache';
/**
 * The bundle's script name, in stack traces. V8 keeps the name a function was compiled under in the code cache,
 * so the loader compiling with the installed path would still show the build's temp dir for every cached
 * function; the trainer and the loader both use this one instead.
 */
const SCRIPT_NAME = `mesh-cni.d/${BUNDLE_NAME}`;
const ADDON_DIR = 'addons';
const FORBIDDEN = ['@kubernetes/client-node', 'prom-client', 'yargs', '@grpc/grpc-js'];
/** The packages whose require is replaced by a require of addons/<name>.node. */
const ADDON_PACKAGES = ['koffi'];

/** The package a node_modules path belongs to (scoped names included). */
function packageNameOf(file) {
  const marker = 'node_modules/';
  const at = file.lastIndexOf(marker);
  if (at < 0) return undefined;
  const rest = file.slice(at + marker.length).split('/');
  return rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0];
}

/** koffi's prebuilt binary for this machine (glibc: the runtime shipped beside it is glibc's node). */
function addonBinary(pkg) {
  if (pkg !== 'koffi') throw new Error(`no addon binary known for ${pkg}`);
  const arch = process.arch;
  try {
    return require.resolve(`@koromix/koffi-linux-${arch}/linux_${arch}/koffi.node`, { paths: [root] });
  } catch (err) {
    throw new Error(`koffi has no prebuilt binary for linux ${arch} here (npm ci installs @koromix/koffi-linux-${arch}): ${err.message}`);
  }
}

const addonFileName = (pkg) => `${pkg.split('/').pop()}.node`;

/** The addon packages the bundle requires (filled while bundling). */
const requestedAddons = new Set();

/** esbuild plugin: require('koffi') becomes require('./addons/koffi.node'). */
const addonsPlugin = {
  name: 'mesh-cni-addons',
  setup(build) {
    build.onResolve({ filter: /^koffi$/ }, (args) => {
      requestedAddons.add(args.path);
      return { path: args.path, namespace: 'mesh-cni-addon' };
    });
    build.onLoad({ filter: /.*/, namespace: 'mesh-cni-addon' }, (args) => ({
      contents: `module.exports = require('./${ADDON_DIR}/${addonFileName(args.path)}');\n`,
      loader: 'js',
    }));
    build.onResolve({ filter: /\.node$/ }, (args) => ({ path: args.path, external: true }));
  },
};

async function bundle(outfile) {
  let esbuild;
  try {
    esbuild = require('esbuild');
  } catch (err) {
    throw new Error(`esbuild is missing (a devDependency: run npm ci): ${err.message}`);
  }
  const result = await esbuild.build({
    absWorkingDir: root,
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    metafile: true,
    plugins: [addonsPlugin],
    logLevel: 'silent',
    legalComments: 'none',
  });
  for (const w of result.warnings) process.stdout.write(`  esbuild: ${w.text}${w.location ? ` (${w.location.file})` : ''}\n`);
  return Object.keys(result.metafile.inputs).filter((f) => !f.startsWith('mesh-cni-addon:'));
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

/** A module of ours in the bundle that spawns process.execPath would run the loader, not node. */
function respawnsExecPath(inputs) {
  return inputs.filter((f) => !f.includes('node_modules/') && /\bprocess\.execPath\b/.test(fs.readFileSync(path.join(root, f), 'utf8')));
}

function copy(from, to) {
  fs.mkdirSync(path.dirname(to), { recursive: true });
  fs.copyFileSync(from, to);
  fs.chmodSync(to, fs.statSync(from).mode & 0o755);
}

/**
 * mesh-cni.js, the entry the shim runs: compiles engine.js with the V8 code cache made here (engine.cache),
 * so the 460 KiB bundle is not parsed again on every request. V8 checks the cache against its own version and
 * flags and ignores one that does not match (another node, other V8 flags): then the bundle is compiled from
 * source as without a cache, so a stale cache costs time, never correctness.
 */
const LOADER = `#!/usr/bin/env node
'use strict';
// The standalone mesh-cni engine's entry; built by scripts/build-engine.js (engine.js is the bundle).
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const Module = require('node:module');
const file = path.join(__dirname, '${BUNDLE_NAME}');
let cachedData;
try {
  cachedData = fs.readFileSync(path.join(__dirname, '${CACHE_NAME}'));
} catch {
  cachedData = undefined;
}
// The name stack traces show: V8 keeps the one the cache was made under (the build's), so both use this.
const script = new vm.Script(Module.wrap(fs.readFileSync(file, 'utf8')), { filename: '${SCRIPT_NAME}', cachedData });
script.runInThisContext()(exports, Module.createRequire(file), module, file, __dirname);
`;

/**
 * Trains the code cache (src/standalone/warm-up.ts has why): a child process of the node that is shipped as
 * runtime/node compiles the bundle as the loader does, loads it as a library (so no request starts), runs its
 * warm-up in a temp dir, and only then writes the cache, which then holds every function that run compiled.
 * NODE_OPTIONS is dropped: V8 rejects a cache made under other flags than the engine's.
 */
const TRAINER = `
const fs = require('node:fs'), path = require('node:path'), vm = require('node:vm'), Module = require('node:module');
const [bundle, out, dir] = process.argv.slice(1);
const script = new vm.Script(Module.wrap(fs.readFileSync(bundle, 'utf8')), { filename: '${SCRIPT_NAME}' });
const library = { exports: {} };
script.runInThisContext()(library.exports, Module.createRequire(bundle), library, bundle, path.dirname(bundle));
library.exports.warmUpForCodeCache(dir).then(() => fs.writeFileSync(out, script.createCachedData(), { mode: 0o644 }));
`;

/** Whether V8 takes the cache for the bundle, in a fresh process, as the loader would. */
const CACHE_CHECK = `
const fs = require('node:fs'), vm = require('node:vm'), Module = require('node:module');
const [bundle, cache] = process.argv.slice(1);
const script = new vm.Script(Module.wrap(fs.readFileSync(bundle, 'utf8')), { filename: '${SCRIPT_NAME}', cachedData: fs.readFileSync(cache) });
process.stdout.write(script.cachedDataRejected ? 'rejected' : 'accepted');
`;

function writeCodeCache(bundleFile, cacheFile) {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-cni-warm-up-'));
  try {
    execFileSync(process.execPath, ['-e', TRAINER, bundleFile, cacheFile, dir], { env, cwd: dir, stdio: ['ignore', 'ignore', 'inherit'], timeout: 60_000 });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const verdict = execFileSync(process.execPath, ['-e', CACHE_CHECK, bundleFile, cacheFile], { env, encoding: 'utf8', timeout: 60_000 });
  if (verdict !== 'accepted') throw new Error(`V8 ${verdict} the trained code cache of ${BUNDLE_NAME}`);
}

async function main() {
  if (!fs.existsSync(entry)) throw new Error(`${path.relative(root, entry)} is missing: run tsc first`);
  const staging = `${outDir}.tmp-${process.pid}`;
  fs.rmSync(staging, { recursive: true, force: true });
  try {
    const bundleFile = path.join(staging, BUNDLE_NAME);
    const inputs = await bundle(bundleFile);
    const names = new Set(inputs.map(packageNameOf).filter(Boolean));
    const forbidden = FORBIDDEN.filter((name) => names.has(name));
    if (forbidden.length > 0) {
      throw new Error(`the standalone engine would load ${forbidden.join(', ')}; keep those imports lazy and off the CNI path`);
    }
    const respawning = respawnsExecPath(inputs);
    if (respawning.length > 0) {
      throw new Error(`${respawning.join(', ')} use process.execPath, which is the ELF loader when the shim runs the shipped runtime`);
    }
    const addons = [];
    for (const pkg of ADDON_PACKAGES.filter((p) => requestedAddons.has(p))) {
      const binary = addonBinary(pkg);
      copy(binary, path.join(staging, ADDON_DIR, addonFileName(pkg)));
      addons.push(binary);
    }
    // The bundle is compiled inside Module.wrap's function, where a #! line would be a syntax error.
    fs.writeFileSync(bundleFile, fs.readFileSync(bundleFile, 'utf8').replace(/^#!.*\n/, ''), { mode: 0o644 });
    fs.chmodSync(bundleFile, 0o644);
    writeCodeCache(bundleFile, path.join(staging, CACHE_NAME));
    fs.writeFileSync(path.join(staging, ENTRY_NAME), LOADER, { mode: 0o644 });
    const libraries = bundleRuntime(staging, addons);
    fs.rmSync(outDir, { recursive: true, force: true });
    fs.renameSync(staging, outDir);
    const bytes = [...listFiles(outDir)].reduce((sum, f) => sum + fs.statSync(f).size, 0);
    const bundled = fs.statSync(path.join(outDir, BUNDLE_NAME)).size;
    process.stdout.write(
      `built ${path.relative(root, outDir)}/: ${BUNDLE_NAME} of ${inputs.length} modules (${(bundled / 1024).toFixed(0)} KiB, with a V8 code cache, entry ${ENTRY_NAME}), packages ${[...names].sort().join(', ')}; runtime node ${process.version} with ${libraries.join(', ')}; ${(bytes / 1024 / 1024).toFixed(1)} MiB\n`,
    );
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

function* listFiles(dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* listFiles(p);
    else yield p;
  }
}

main().catch((err) => {
  process.stderr.write(`mesh-cni: building the standalone engine failed: ${err.message}\n`);
  process.exitCode = 1;
});
