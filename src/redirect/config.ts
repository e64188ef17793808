/**
 * STUB — placeholder for the redirect engine's config module, written on branch `cni` only so that src/cni/
 * compiles against the agreed signatures. Replaced wholesale by the real src/redirect/config.ts at merge.
 * Nothing here may be relied on beyond the declared types and signatures.
 */
export type InterceptionMode = 'REDIRECT' | 'TPROXY' | 'NONE';

export interface ProxySettings {
  proxyUid?: number;
  proxyGid?: number;
  dnsCapture?: boolean;
}

export interface RedirectConfig {
  mode: InterceptionMode;
}

/** throws InvalidConfigError (src/errors.ts) naming the annotation, the value and why */
export function redirectConfigFromAnnotations(
  _annotations: Record<string, string>,
  _proxy?: ProxySettings,
): RedirectConfig {
  throw new Error('engine not merged yet');
}
