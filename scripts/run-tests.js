#!/usr/bin/env node
/**
 * Runs the ava suite with the TAP reporter, passes its output through, and ends with one plain line
 * `N passed, N failed` (CI and people read the same summary). Exit code: ava's.
 * Arguments are passed to ava (e.g. a file glob: npm test -- dist/test/redirect/kernel.test.js).
 */
'use strict';
const { spawn } = require('node:child_process');
const path = require('node:path');

const ava = path.join(__dirname, '..', 'node_modules', 'ava', 'entrypoints', 'cli.mjs');
// npm puts node_modules/.bin first on PATH, and a dev dependency installs a program named `nft` there (not
// nftables'). The tests run programs as a node does, so they get the system's PATH.
const PATH = (process.env.PATH ?? '')
  .split(path.delimiter)
  .filter((dir) => !dir.split(path.sep).includes('node_modules'))
  .join(path.delimiter);
const child = spawn(process.execPath, [ava, '--tap', ...process.argv.slice(2)], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, PATH } });
let passed = 0;
let failed = 0;
let skipped = 0;
let buffered = '';
child.stdout.on('data', (chunk) => {
  process.stdout.write(chunk);
  buffered += chunk.toString();
  let nl;
  while ((nl = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, nl);
    buffered = buffered.slice(nl + 1);
    if (/^not ok \d+/.test(line)) failed++;
    else if (/^ok \d+ .*# SKIP/.test(line)) skipped++;
    else if (/^ok \d+/.test(line)) passed++;
  }
});
child.on('close', (code) => {
  // Uncaught exceptions and timeouts make ava fail without a "not ok" line of their own.
  if (code !== 0 && failed === 0) failed = 1;
  process.stdout.write(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
  process.exit(code ?? 1);
});
