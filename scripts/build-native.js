#!/usr/bin/env node
'use strict';
/*
 * Builds native/mesh-cni-shim.c into build/mesh-cni (run by `npm install`). Plain JavaScript because it runs
 * before TypeScript is compiled. The compiler gets an argument array, never a shell line.
 *
 * Linked statically: the shim runs on the host, not in our image, and a dynamic build needs the glibc of the
 * machine that built it (the bookworm build image: GLIBC_2.34), which Debian 11, Ubuntu 20.04 or RHEL 8 nodes
 * lack. Static, it needs only the kernel (~770 KB; it calls nothing of libc that needs NSS or dlopen).
 *
 * Environment (all optional), fixed into the binary at build time:
 *   CC                     compiler (default cc)
 *   MESH_CNI_ENGINE_PATH   absolute path of the standalone engine (default: found relative to the binary)
 *   MESH_CNI_NODE_PATH     absolute path of node (default: the node running this script)
 */
const { execFileSync } = require('node:child_process');
const { mkdirSync, renameSync, rmSync } = require('node:fs');
const { join } = require('node:path');

const root = join(__dirname, '..');
const source = join(root, 'native', 'mesh-cni-shim.c');
const output = join(root, 'build', 'mesh-cni');

function pathDefine(name, value) {
  if (value === '') return [];
  if (!/^\/[A-Za-z0-9._\/+-]*$/.test(value)) {
    throw new Error(`${name} must be an absolute path of plain characters, got ${JSON.stringify(value)}`);
  }
  return [`-D${name}="${value}"`];
}

function main() {
  mkdirSync(join(root, 'build'), { recursive: true });
  const temp = `${output}.tmp-${process.pid}`;
  const args = [
    '-std=c11',
    '-Wall',
    '-Wextra',
    '-Werror',
    '-O2',
    '-static',
    ...pathDefine('MESH_CNI_ENGINE_PATH', process.env.MESH_CNI_ENGINE_PATH ?? ''),
    ...pathDefine('MESH_CNI_NODE_PATH', process.env.MESH_CNI_NODE_PATH ?? process.execPath),
    '-o',
    temp,
    source,
  ];
  // Linked beside it and renamed over it: whoever copies or runs build/mesh-cni meanwhile (a test installing
  // it) gets the old binary or the new one, never a half-written file.
  try {
    execFileSync(process.env.CC || 'cc', args, { stdio: 'inherit' });
    renameSync(temp, output);
  } finally {
    rmSync(temp, { force: true });
  }
  process.stdout.write(`built ${output}\n`);
}

try {
  main();
} catch (err) {
  process.stderr.write(`mesh-cni: building the native shim failed: ${err.message}\n`);
  process.exitCode = 1;
}
