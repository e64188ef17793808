/** Paths on the node that several rooms agree on: the plugin, the agent, the installer and the CLI. */
export const DEFAULT_STATE_DIR = '/var/run/mesh-cni';
/** The agent's socket; the native shim has the same default compiled in (native/mesh-cni-shim.c). */
export const DEFAULT_AGENT_SOCKET = '/var/run/mesh-cni/agent.sock';
/** The agent's /healthz, /readyz, /metrics and /pods port; the CLI's completion asks it on loopback. */
export const DEFAULT_HEALTH_PORT = 8000;
