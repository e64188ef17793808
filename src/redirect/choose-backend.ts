/**
 * Which backend programs a netns: the one named, or for `auto` the packet filter the host already uses
 * (detect.ts), optionally remembered for a while: in memory by a long-running process (the agent), in a file
 * of the state dir by processes that serve one request each (the standalone plugin).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { STATE_FILES, type BackendName } from '../defaults';
import { IptablesBackend } from './iptables/backend';
import { NftablesBackend } from './nftables/backend';
import type { Backend } from './backend';
import { detectBackend, type BackendChoice, type ConcreteBackend } from './detect';
import { netnsIdentity } from '../netns/identity';

/** A backend by its explicit name; `auto` must be resolved first (`chooseBackend`), it depends on the host. */
export function backendFor(name: Exclude<BackendName, 'auto'>): Backend {
  switch (name) {
    case 'iptables':
      return new IptablesBackend('default');
    case 'iptables-nft':
      return new IptablesBackend('nft');
    case 'iptables-legacy':
      return new IptablesBackend('legacy');
    case 'nftables':
      return new NftablesBackend();
  }
}

interface CachedChoice {
  choice: Promise<BackendChoice>;
  at: number;
  refreshing?: boolean;
}

/** `auto` detections kept by host netns for `ttlMs` (0: none kept, every call detects). */
class DetectionCache {
  private readonly entries = new Map<string, CachedChoice>();
  private ttlMs = 0;

  reset(ttlMs: number): void {
    this.ttlMs = ttlMs;
    this.entries.clear();
  }

  get remembering(): boolean {
    return this.ttlMs > 0;
  }

  detect(hostNetns: string | undefined): Promise<BackendChoice> {
    if (this.ttlMs <= 0) return detectBackend(hostNetns);
    const key = hostNetns ?? '';
    const cached = this.entries.get(key);
    const fresh = () => {
      const entry: CachedChoice = { choice: detectBackend(hostNetns), at: Date.now() };
      // A failed detection is not remembered.
      entry.choice.catch(() => this.entries.delete(key));
      return entry;
    };
    if (!cached) {
      const entry = fresh();
      this.entries.set(key, entry);
      return entry.choice;
    }
    if (Date.now() - cached.at > this.ttlMs && !cached.refreshing) {
      cached.refreshing = true;
      const next = fresh();
      next.choice.then(() => this.entries.set(key, next), () => (cached.refreshing = false));
    }
    return cached.choice;
  }
}

/** One per process: the agent turns it on once, and every request in that process shares it. */
const detections = new DetectionCache();

/**
 * Keeps what `auto` found for `ttlMs` instead of running its five programs on every call. The agent asks
 * for this: the host's packet filter changes rarely, and a pod's ADD should not pay for looking. After the
 * TTL the last answer is still used while a new detection runs in the background. 0 turns it off.
 */
export function rememberAutoDetection(ttlMs: number): void {
  detections.reset(ttlMs);
}

/** The file in a state dir where `auto`'s answer is kept, and for how long it is believed. */
export const KEPT_DETECTION_FILE = STATE_FILES.keptDetection;
export const KEPT_DETECTION_TTL_MS = 60_000;

const CONCRETE: readonly ConcreteBackend[] = ['nftables', 'iptables-nft', 'iptables-legacy'];

interface KeptDetection {
  /** the host netns it was made in, by identity (dev:inode of its nsfs file) */
  hostNetns: string;
  backend: ConcreteBackend;
  reason: string;
  /** Date.now() when it was made */
  detectedAt: number;
}


/** The kept answer if it is this host netns's, from the last KEPT_DETECTION_TTL_MS (a clock gone back: not). */
function readKept(file: string, identity: string, now: number): BackendChoice | undefined {
  let kept: Partial<KeptDetection>;
  try {
    kept = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<KeptDetection>;
  } catch {
    return undefined;
  }
  const age = now - (typeof kept.detectedAt === 'number' ? kept.detectedAt : NaN);
  if (kept.hostNetns !== identity || !(age >= 0 && age <= KEPT_DETECTION_TTL_MS)) return undefined;
  if (!CONCRETE.includes(kept.backend as ConcreteBackend) || typeof kept.reason !== 'string') return undefined;
  return { backend: kept.backend as ConcreteBackend, reason: `${kept.reason} (detected ${Math.round(age / 1000)} s ago)` };
}

/** Written whole or not at all (temp file, then rename); a failure only means the next request detects again. */
function keep(dir: string, file: string, kept: KeptDetection): void {
  const temp = `${file}.${process.pid}.tmp`;
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(temp, `${JSON.stringify(kept)}\n`, { mode: 0o600 });
    fs.renameSync(temp, file);
  } catch {
    fs.rmSync(temp, { force: true });
  }
}

/**
 * `auto` for a process that cannot remember it itself: the answer of any mesh-cni process in the last minute,
 * from `<dir>/auto-backend.json`, made in the same host netns; else a detection, which is then kept there.
 * Invalidated by age (KEPT_DETECTION_TTL_MS, as the agent keeps its own), by another host netns, or by a file
 * that does not parse. Whichever filter it names, the pod is fully programmed: a stale answer can only put the
 * pod's rules in the packet filter the host used a minute ago.
 */
async function detectKeptIn(dir: string, hostNetns: string | undefined): Promise<BackendChoice> {
  const identity = netnsIdentity(hostNetns ?? '/proc/self/ns/net');
  if (identity === undefined) return detectBackend(hostNetns);
  const file = path.join(dir, KEPT_DETECTION_FILE);
  const kept = readKept(file, identity, Date.now());
  if (kept) return kept;
  const choice = await detectBackend(hostNetns);
  keep(dir, file, { hostNetns: identity, backend: choice.backend, reason: choice.reason, detectedAt: Date.now() });
  return choice;
}

/** The backend to use and why: the named one, or for `auto` what the host already uses. */
export async function chooseBackend(o: { backend?: BackendName; hostNetns?: string; backendInstance?: Backend; keepDetectionIn?: string }): Promise<{ backend: Backend; reason: string }> {
  if (o.backendInstance) return { backend: o.backendInstance, reason: 'given by the caller' };
  const name = o.backend ?? 'auto';
  if (name !== 'auto') return { backend: backendFor(name), reason: 'named with --backend' };
  const choice = o.keepDetectionIn && !detections.remembering ? await detectKeptIn(o.keepDetectionIn, o.hostNetns) : await detections.detect(o.hostNetns);
  return { backend: backendFor(choice.backend), reason: `auto: ${choice.reason}` };
}
