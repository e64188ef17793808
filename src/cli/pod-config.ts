/** The redirect config the plugin would program for a pod read from the API (`apply --pod`, `plan --pod`). */
import type { V1Pod } from '@kubernetes/client-node';
import { decideMeshing } from '../mesh/decision';
import { podInfoFromPod } from '../kube/pod-api';
import { MeshCniError } from '../errors';
import { redirectConfigFromAnnotations, type RedirectConfig } from '../redirect/config';

/** The config the plugin would program for this pod; a pod the plugin would leave alone is an error here. */
export function podConfig(pod: V1Pod, excludeNamespaces: readonly string[]): RedirectConfig {
  const id = `${pod.metadata?.namespace}/${pod.metadata?.name}`;
  if (pod.spec?.hostNetwork) throw new MeshCniError(`pod ${id} uses the host network; mesh-cni never redirects it`);
  const decision = decideMeshing(podInfoFromPod(pod), { excludeNamespaces });
  if (!decision.meshed) {
    throw new MeshCniError(`pod ${id} is not meshed (${decision.reason}); the plugin leaves it alone`, {
      hint: `mesh-cni explain ${id} shows why; to program it anyway pass --netns with -a annotations`,
    });
  }
  if (decision.dataplane === 'ambient') {
    throw new MeshCniError(`pod ${id} is ambient: its traffic goes to the node's ztunnel, not a sidecar`, { hint: `mesh-cni plan --dataplane ambient --pod ${id} shows its rules` });
  }
  return redirectConfigFromAnnotations(decision.annotations, decision.proxy);
}
