/**
 * The standalone engine as one file. The shim runs `node <cni bin dir>/mesh-cni.js` when the agent is down,
 * on the host, where none of the agent's image (dist/, node_modules/) exists: a copy of dist/src/cni/main.js
 * alone dies on its first `require('./dispatch')`. So the installer packs main.js and everything it
 * requires (our compiled modules and pure-JS packages such as ip-address) into a single CommonJS file with a
 * small module table. Node's built-ins stay real requires; native addons (@2060.io/ffi-napi) cannot travel
 * in a file and are left out: the netns room falls back to `nsenter` when they cannot be loaded.
 */
import { builtinModules } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname, extname, relative } from 'node:path';

/** Packages that hold native code: required at run time if present, never bundled. */
export const NATIVE_PACKAGES: readonly string[] = ['@2060.io/ffi-napi', '@2060.io/ref-napi'];

const REQUIRE_CALL = /\brequire\(\s*(['"])([^'"]+)\1\s*\)/g;
const BUILTINS = new Set(builtinModules);

function isBuiltin(spec: string): boolean {
  return spec.startsWith('node:') || BUILTINS.has(spec) || BUILTINS.has(spec.split('/')[0]!);
}

function isNative(spec: string): boolean {
  return NATIVE_PACKAGES.some((p) => spec === p || spec.startsWith(`${p}/`));
}

interface BundledModule {
  id: string;
  code: string;
  /** what each require() string in this module resolves to, by module id */
  links: Record<string, string>;
}

/** Bundles `entry` (a compiled CommonJS file) and its static requires into one runnable script. */
export function bundleEngine(entry: string): string {
  const root = dirname(entry);
  const modules = new Map<string, BundledModule>();
  // Packages by their path below node_modules, so the bundle does not depend on where they were installed.
  const idOf = (file: string) => {
    const at = file.lastIndexOf('/node_modules/');
    return at >= 0 ? file.slice(at + 1) : relative(root, file) || '.';
  };
  const visit = (file: string): string => {
    const id = idOf(file);
    if (modules.has(id)) return id;
    const source = readFileSync(file, 'utf8');
    const mod: BundledModule = { id, code: extname(file) === '.json' ? `module.exports = ${source};` : source.replace(/^#!.*\n/, '\n'), links: {} };
    modules.set(id, mod);
    if (extname(file) === '.json') return id;
    for (const match of source.matchAll(REQUIRE_CALL)) {
      const spec = match[2]!;
      if (isBuiltin(spec) || isNative(spec) || spec in mod.links) continue;
      mod.links[spec] = visit(require.resolve(spec, { paths: [dirname(file)] }));
    }
    return id;
  };
  const entryId = visit(entry);
  const table = [...modules.values()]
    .map((m) => `${JSON.stringify(m.id)}: [${JSON.stringify(m.links)}, function (exports, require, module, __filename, __dirname) {\n${m.code}\n}]`)
    .join(',\n');
  return `#!/usr/bin/env node
// mesh-cni standalone engine, bundled by the agent's installer from ${modules.size} modules. Do not edit:
// the agent rewrites this file whenever it differs from what its image holds.
'use strict';
(function () {
  const definitions = {
${table}
  };
  const loaded = {};
  function load(id) {
    if (loaded[id]) return loaded[id].exports;
    const [links, define] = definitions[id];
    const module = { exports: {}, id };
    loaded[id] = module;
    const local = (spec) => (spec in links ? load(links[spec]) : require(spec));
    define.call(module.exports, module.exports, local, module, __filename, __dirname);
    return module.exports;
  }
  load(${JSON.stringify(entryId)});
})();
`;
}
