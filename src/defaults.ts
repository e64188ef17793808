/**
 * What several rooms agree on, with nothing to load: the node's paths, the names of the files in the state
 * dir, the backend names and the agent's own pods. The netconf, the agent's flags, the CLI, the installer and
 * uninstall all read these here, so each is spelled once.
 */

/** The state dir: attachment records, the install record, the kept backend detection, the agent's socket. */
export const DEFAULT_STATE_DIR = '/var/run/mesh-cni';
/** The agent's socket; the native shim has the same default compiled in (native/mesh-cni-shim.c). */
export const DEFAULT_AGENT_SOCKET = '/var/run/mesh-cni/agent.sock';
/** The agent's /healthz, /readyz, /metrics and /pods port; the CLI's completion asks it on loopback. */
export const DEFAULT_HEALTH_PORT = 8000;

/** The files and dirs inside a state dir, by owner: uninstall removes each. */
export const STATE_FILES = {
  /** one record per attachment ADD programmed (src/state/attachments.ts), read by repair and the CLI */
  attachments: 'attachments',
  /** what `backend: auto` found, kept for a minute by the standalone plugin (src/redirect/choose-backend.ts) */
  keptDetection: 'auto-backend.json',
  /** what the installer changed, so uninstall can restore it (src/installer/state.ts) */
  installState: 'install-state.json',
  /** a primary CNI that keeps removing our entry: the installer's hold, while it lasts (src/installer/fight.ts) */
  installHold: 'install-held.json',
} as const;

/** The backends by name: the netconf and the CLI's options check names without loading the engine. */
export type BackendName = 'auto' | 'iptables' | 'iptables-nft' | 'iptables-legacy' | 'nftables';
export const BACKEND_NAMES: readonly BackendName[] = ['auto', 'iptables', 'iptables-nft', 'iptables-legacy', 'nftables'];

/** The agent's own pods: its DaemonSet's namespace and pod-name prefix (install/30-daemonset.yaml). */
export const DEFAULT_AGENT_NAMESPACE = 'mesh-cni-system';
export const DEFAULT_AGENT_POD_PREFIX = 'mesh-cni-';
