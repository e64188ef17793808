/**
 * Which backend programs a netns: the one named, or for `auto` the packet filter the host already uses
 * (detect.ts), optionally remembered for a while by a long-running process.
 */
import type { BackendName } from './backend-names';
import { IptablesBackend } from './backend/iptables';
import { NftablesBackend } from './backend/nftables';
import type { Backend } from './backend/types';
import { detectBackend, type BackendChoice } from './detect';

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

/** The backend to use and why: the named one, or for `auto` what the host already uses. */
export async function chooseBackend(o: { backend?: BackendName; hostNetns?: string; backendInstance?: Backend }): Promise<{ backend: Backend; reason: string }> {
  if (o.backendInstance) return { backend: o.backendInstance, reason: 'given by the caller' };
  const name = o.backend ?? 'auto';
  if (name !== 'auto') return { backend: backendFor(name), reason: 'named with --backend' };
  const choice = await detections.detect(o.hostNetns);
  return { backend: backendFor(choice.backend), reason: `auto: ${choice.reason}` };
}
