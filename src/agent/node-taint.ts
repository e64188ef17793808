/**
 * Optional node readiness (`--remove-not-ready-taint`, RBAC in install/optional/node-readiness-rbac.yaml):
 * nodes can be provisioned with the taint `cni.istio.io/not-ready:NoSchedule`, so that no pod is scheduled
 * there before mesh-cni can redirect it (our DaemonSet tolerates every taint). Once the agent is installed and
 * ready, it takes that taint off its own node. Istio uses the same key, removed by istiod; with mesh-cni the
 * node's own agent does it, and only once it is really ready.
 *
 * The patch is a JSON patch that first tests the taints it read, so a taint another controller adds or removes
 * in between is never lost: the test fails (422) and the agent reads again.
 */
import type { CoreV1Api, KubeConfig, V1Taint } from '@kubernetes/client-node';

import { NOT_READY_TAINT_KEY } from '../mesh/istio-names';

export type UntaintResult = 'removed' | 'absent';

export async function removeNotReadyTaint(kubeConfig: KubeConfig, nodeName: string, key = NOT_READY_TAINT_KEY): Promise<UntaintResult> {
  const k8s = await import('@kubernetes/client-node');
  const core: CoreV1Api = kubeConfig.makeApiClient(k8s.CoreV1Api);
  for (let attempt = 1; ; attempt++) {
    const node = await core.readNode({ name: nodeName });
    const taints: V1Taint[] = node.spec?.taints ?? [];
    const kept = taints.filter((t) => t.key !== key);
    if (kept.length === taints.length) return 'absent';
    const patch = [
      { op: 'test', path: '/spec/taints', value: taints },
      { op: 'replace', path: '/spec/taints', value: kept },
    ];
    try {
      await core.patchNode({ name: nodeName, body: patch }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.JsonPatch));
      return 'removed';
    } catch (err) {
      // 422: the taints changed since we read them; read again (a few times, then let the caller retry later).
      if ((err as { code?: number }).code !== 422 || attempt >= 5) throw err;
    }
  }
}

/**
 * Waits for `ready()` and then removes the taint once, retrying failures with backoff. Returns a stop function.
 */
export function untaintWhenReady(options: {
  kubeConfig: KubeConfig;
  nodeName: string;
  ready: () => boolean;
  log: (line: Record<string, unknown>) => void;
  pollMs?: number;
}): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let backoffMs = 1_000;
  const poll = options.pollMs ?? 1_000;
  const schedule = (ms: number) => {
    if (stopped) return;
    timer = setTimeout(tick, ms);
    timer.unref();
  };
  const tick = () => {
    if (!options.ready()) return schedule(poll);
    removeNotReadyTaint(options.kubeConfig, options.nodeName).then(
      (result) => options.log({ level: 'info', msg: result === 'removed' ? `ready: removed the ${NOT_READY_TAINT_KEY} taint from the node` : `ready: the node has no ${NOT_READY_TAINT_KEY} taint`, node: options.nodeName }),
      (err: unknown) => {
        const code = (err as { code?: number }).code;
        const hint = code === 403 ? ' (apply install/optional/node-readiness-rbac.yaml)' : '';
        options.log({ level: 'warn', msg: `cannot remove the ${NOT_READY_TAINT_KEY} taint${hint}; retrying`, node: options.nodeName, error: String((err as Error).message ?? err).split('\n')[0] });
        schedule(backoffMs);
        backoffMs = Math.min(backoffMs * 2, 30_000);
      },
    );
  };
  schedule(0);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
