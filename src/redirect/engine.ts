/**
 * STUB — placeholder for the redirect engine, written on branch `cni` only so that src/cni/ compiles against
 * the agreed signatures. Replaced wholesale by the real src/redirect/engine.ts at merge; every function here
 * throws so that nothing can silently pass through it.
 */
import type { RedirectConfig } from './config';

export type BackendName = 'auto' | 'iptables' | 'iptables-nft' | 'iptables-legacy' | 'nftables';

export interface ApplyReport {
  backend: string;
  families: ('ipv4' | 'ipv6')[];
  rules: number;
  durationMs: number;
}

/** atomic; on failure nothing is left behind and a MeshCniError subclass is thrown */
export function applyRedirect(_o: { netns: string; config: RedirectConfig; backend?: BackendName }): Promise<ApplyReport> {
  throw new Error('engine not merged yet');
}

/** throws NetnsNotFoundError when the netns path is gone */
export function removeRedirect(_o: { netns: string; backend?: BackendName }): Promise<{ removed: number }> {
  throw new Error('engine not merged yet');
}

export function checkRedirect(_o: {
  netns: string;
  config: RedirectConfig;
  backend?: BackendName;
}): Promise<{ ok: boolean; problems: string[] }> {
  throw new Error('engine not merged yet');
}
