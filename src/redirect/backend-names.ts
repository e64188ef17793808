/** The backends by name, with nothing to load: netconf and the CLI's options check names without the engine. */
export type BackendName = 'auto' | 'iptables' | 'iptables-nft' | 'iptables-legacy' | 'nftables';
export const BACKEND_NAMES: readonly BackendName[] = ['auto', 'iptables', 'iptables-nft', 'iptables-legacy', 'nftables'];
