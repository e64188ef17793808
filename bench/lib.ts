/**
 * What every benchmark shares: timing, medians and percentiles, netns that are always removed, a bound on
 * time, the printed table, the JSON file under bench/results/, and the summary line
 * `NAME: VALUE UNIT (target TARGET) ok|MISSED`.
 */
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sweepDeadNetns as sweepDeadNetnsNamed } from '../test/support/netns';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const RESULTS_DIR = path.join(REPO_ROOT, 'bench', 'results');
export const SHIM = path.join(REPO_ROOT, 'build', 'mesh-cni');
export const ENGINE_DIR = path.join(REPO_ROOT, 'build', 'engine');
export const CLI = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');
export const MINIMAL_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface Summary {
  name: string;
  value: number;
  unit: string;
  target: number;
  /** true when smaller is better (latency, memory); false when the value must reach the target */
  atMost: boolean;
  note?: string;
}

export function ok(s: Summary): boolean {
  return s.atMost ? s.value <= s.target : s.value >= s.target;
}

export function summaryLine(s: Summary): string {
  const digits = s.unit === 'x' ? 2 : s.value >= 100 ? 0 : 1;
  return `${s.name}: ${s.value.toFixed(digits)} ${s.unit} (target ${s.target}) ${ok(s) ? 'ok' : 'MISSED'}${s.note ? `  [${s.note}]` : ''}`;
}

export function now(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

export const median = (values: readonly number[]) => quantile(values, 0.5);

/** A table with right-aligned numeric columns. */
export function table(headers: string[], rows: Array<Array<string | number>>): string {
  const cells = rows.map((r) => r.map((c) => (typeof c === 'number' ? (Number.isInteger(c) ? String(c) : c.toFixed(2)) : c)));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line)].join('\n');
}

export function writeResult(name: string, data: unknown): string {
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${name}.json`);
  const meta = { benchmark: name, at: new Date().toISOString(), host: os.hostname(), cpus: os.cpus().length, node: process.version, kernel: os.release() };
  fs.writeFileSync(file, `${JSON.stringify({ ...meta, ...(data as object) }, null, 2)}\n`);
  return file;
}

export function sh(program: string, args: string[], input?: string): string {
  const r = spawnSync(program, args, { input, encoding: 'utf8', timeout: 60_000 });
  if (r.error || r.status !== 0) throw new Error(`${program} ${args.join(' ')} failed (${r.status ?? r.error?.message}): ${r.stderr}`);
  return r.stdout;
}

// ---------------------------------------------------------------------------------------------------------
// Network namespaces named after this process, always removed (and swept when a run died).

const NETNS_PREFIX = 'mcni-b-';
const created = new Set<string>();
let counter = 0;

export function sweepDeadNetns(): void {
  sweepDeadNetnsNamed(NETNS_PREFIX);
}

/** A fresh netns with lo up; returns its path. */
export function freshNetns(): string {
  const name = `${NETNS_PREFIX}${process.pid}-${++counter}`;
  sh('ip', ['netns', 'add', name]);
  created.add(name);
  sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return `/var/run/netns/${name}`;
}

/** Many fresh netns in one `ip -batch` (500 one by one take seconds). */
export function freshNetnsBatch(n: number): string[] {
  const names = Array.from({ length: n }, () => `${NETNS_PREFIX}${process.pid}-${++counter}`);
  sh('ip', ['-batch', '-'], names.map((name) => `netns add ${name}\n`).join(''));
  for (const name of names) created.add(name);
  for (const name of names) sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return names.map((name) => `/var/run/netns/${name}`);
}

export function removeNetns(p: string): void {
  const name = path.basename(p);
  if (!created.delete(name)) return;
  spawnSync('ip', ['netns', 'del', name]);
}

export function removeAllNetns(): void {
  const names = [...created];
  created.clear();
  if (names.length > 0) spawnSync('ip', ['-force', '-batch', '-'], { input: names.map((n) => `netns del ${n}\n`).join('') });
}

// ---------------------------------------------------------------------------------------------------------
// Processes.

export interface Exec {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a program to completion and times it from spawn to exit. */
export function exec(program: string, args: string[], options: SpawnOptions & { input?: string; timeoutMs?: number } = {}): Promise<Exec> {
  return new Promise((resolve, reject) => {
    const started = now();
    const child = spawn(program, args, { ...options, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.stdout!.on('data', (c: Buffer) => out.push(c));
    child.stderr!.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), ms: now() - started });
    });
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(options.input ?? '');
  });
}

/** Rejects when `work` takes longer than `ms`; the benchmark's cleanup still runs. */
export async function bounded<T>(what: string, ms: number, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms; stopped`)), ms);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export function rssKb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `mesh-cni-bench-${prefix}-`));
}

/** Milliseconds until `done` holds, polling every millisecond; throws naming `what` after `limitMs`. */
export async function pollUntil(what: string, done: () => boolean, limitMs: number): Promise<number> {
  const start = now();
  while (!done()) {
    if (now() - start > limitMs) throw new Error(`not ${what} within ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, 1));
  }
  return now() - start;
}

/** A node's CNI dirs and an image's shim and engine under `root`, for installer benches (no real node path). */
export function installerDirs(root: string): { confDir: string; binDir: string; shimPath: string; enginePath: string; stateDir: string } {
  const confDir = path.join(root, 'etc/cni/net.d');
  const binDir = path.join(root, 'opt/cni/bin');
  const image = path.join(root, 'image');
  for (const d of [confDir, binDir, path.join(image, 'engine')]) fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(image, 'mesh-cni'), '#!/bin/sh\n', { mode: 0o755 });
  fs.writeFileSync(path.join(image, 'engine', 'mesh-cni.js'), '// engine\n');
  return { confDir, binDir, shimPath: path.join(image, 'mesh-cni'), enginePath: path.join(image, 'engine'), stateDir: path.join(root, 'state') };
}
