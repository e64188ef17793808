/** The agent's Prometheus metrics (prom-client), on their own registry so tests and embedders stay isolated. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class AgentMetrics {
  readonly registry = new Registry();
  readonly requests = this.counter('mesh_cni_requests_total', 'CNI requests served by the agent, by command and result (ok or the CNI error code)', ['command', 'result'] as const);
  readonly addDuration = new Histogram({
    name: 'mesh_cni_add_duration_seconds',
    help: 'Time to serve a CNI ADD, from request to answer',
    labelNames: ['decision'] as const,
    buckets: [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30],
    registers: [this.registry],
  });
  /**
   * An answered ADD's time by phase (src/cni/phases.ts): parse, decide, plan, render, apply (the restore or nft
   * transaction and what it waits for), record, log. Everything but apply is the agent's own work.
   */
  readonly addPhase = this.histogram('mesh_cni_add_phase_seconds', 'Time a successful CNI ADD spent in each phase: parse, decide, plan, render, apply (packet filter transaction), record (attachment state), log; backend is `none` for a pod not meshed', ['phase', 'backend'] as const, [
    // Fine where the phases fall (tens of microseconds for the agent's work, a few milliseconds for a restore),
    // so a quantile interpolated within a bucket is close to the real one.
    0.00002, 0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0065, 0.008, 0.01, 0.015, 0.02,
    0.03, 0.05, 0.1, 0.5, 2,
  ]);
  /** One series per skip reason of src/mesh/decision.ts (SKIP_REASONS), plus `meshed`: the decision's own strings. */
  readonly addDecisions = this.counter('mesh_cni_add_decisions_total', 'CNI ADDs answered by the agent by pod decision: reason is `meshed` or the stable skip reason (no-istio-proxy, proxyless, not-a-sidecar, ...)', ['decision', 'reason'] as const);
  readonly rulesProgrammed = this.counter('mesh_cni_rules_programmed_total', 'Redirect rules written into pod network namespaces', ['backend'] as const);
  readonly repairActions = this.counter('mesh_cni_repair_actions_total', 'Actions the reconciler took on broken pods, by action and result', ['action', 'result'] as const);
  readonly badPods = this.counter('mesh_cni_pod_cache_bad_objects_total', 'Pods from the API server (list or watch) the agent could not read and left out of its cache');
  readonly reinsertions = this.counter('mesh_cni_install_reinsertions_total', 'Times the agent put its entry back into the primary CNI config after another component removed it');
  /** 1 while held (src/installer/fight.ts); the labels name the file and what to change. Reset when the hold ends. */
  readonly installHeld = new Gauge({
    name: 'mesh_cni_install_held',
    help: 'The primary CNI keeps removing our entry: 1 while the agent has stopped re-inserting it; config is the file, primary its plugin type, advice what to change',
    labelNames: ['config', 'primary', 'advice'] as const,
    registers: [this.registry],
  });
  readonly podsCached = new Gauge({
    name: 'mesh_cni_pods_cached',
    help: "Pods on this node in the agent's watch cache",
    registers: [this.registry],
  });
  /** ZDS, ztunnel's socket (src/agent/zds-server.ts). */
  readonly ztunnelConnected = new Gauge({
    name: 'mesh_cni_ztunnel_connected',
    help: "ztunnel connections to the agent's ZDS socket (normally 1; 2 while a ztunnel is replaced)",
    registers: [this.registry],
  });
  readonly zdsSent = this.counter('mesh_cni_zds_workloads_sent_total', 'ZDS requests sent to ztunnel and acked, by kind (add, del, keep, snapshot-sent) and whether they were part of a snapshot', ['kind', 'snapshot'] as const);
  readonly zdsAcksFailed = this.counter('mesh_cni_zds_acks_failed_total', 'ZDS requests ztunnel did not ack: no answer in time, an ack carrying an error, or the connection lost', ['reason'] as const);
  readonly ambientPods = new Gauge({
    name: 'mesh_cni_ambient_pods',
    help: 'Ambient pods on this node whose rules are in place and whose netns the agent holds for ztunnel',
    registers: [this.registry],
  });
  readonly peerRejections = this.counter('mesh_cni_socket_rejections_total', 'Connections to the agent socket refused (non-root peer, malformed or oversized frame)', ['reason'] as const);

  /** Constant 1; the labels say what the agent runs (for `mesh-cni status` and dashboards). */
  readonly info = new Gauge({
    name: 'mesh_cni_agent_info',
    help: 'What the agent runs: package version, sha256 of the shim and engine it ships, repair mode and backend setting',
    labelNames: ['version', 'shim_sha256', 'engine_sha256', 'repair_mode', 'backend'] as const,
    registers: [this.registry],
  });

  /** A histogram on this registry. */
  private histogram<L extends string>(name: string, help: string, labelNames: readonly L[], buckets: number[]): Histogram<L> {
    return new Histogram({ name, help, labelNames, buckets, registers: [this.registry] });
  }

  /** A counter on this registry; its labels are typed from `labelNames`. */
  private counter<L extends string>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> {
    return new Counter({ name, help, labelNames, registers: [this.registry] });
  }

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'mesh_cni_agent_' });
  }
}
