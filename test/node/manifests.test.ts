/**
 * install/ and the chart's renderings against a real kube-apiserver (RBAC on, admission on): `kubectl apply
 * --dry-run=server` runs every object through validation, defaulting and admission without persisting it.
 * Namespaced objects need their Namespace to exist even in a dry run, so the Namespace is applied for real
 * first, as `kubectl apply -f install/` would do (files in lexical order).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { REPO_ROOT } from '../support/paths';
import { startKube, type Kube } from '../support/kube';
import { helmTemplate, requireHelm } from '../support/helm';

const INSTALL = path.join(REPO_ROOT, 'install');
let kube: Kube | undefined;

test.before(async () => {
  if (spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' }).status !== 0) {
    throw new Error('kubectl is missing: install Debian\'s kubernetes-client (scripts/setup-node-deps.sh does)');
  }
  requireHelm();
  kube = await startKube({ authorizationMode: 'RBAC' });
  const ns = kubectl(['apply', '-f', path.join(INSTALL, '00-namespace.yaml')]);
  if (ns.code !== 0) throw new Error(ns.out);
});

test.after.always(async () => {
  if (kube) await kube.stop();
});

function kubectl(args: string[], input?: string) {
  const r = spawnSync('kubectl', ['--kubeconfig', kube!.kubeconfig, ...args], { encoding: 'utf8', timeout: 60_000, input });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

function accepted(t: any, out: string, objects: string[]) {
  for (const object of objects) {
    t.regex(out, new RegExp(`${object.replace(/\./g, '\\.')} (created|configured|unchanged) \\(server dry run\\)`), out);
  }
  t.notRegex(out, /Warning|error/i, out);
}

test.serial('kubectl apply --dry-run=server accepts every manifest in install/ and install/optional/', (t) => {
  const dry = kubectl(['apply', '--dry-run=server', '-f', INSTALL, '-f', path.join(INSTALL, 'optional')]);
  t.is(dry.code, 0, dry.out);
  accepted(t, dry.out, [
    'serviceaccount/mesh-cni',
    'clusterrole.rbac.authorization.k8s.io/mesh-cni',
    'clusterrolebinding.rbac.authorization.k8s.io/mesh-cni',
    'configmap/mesh-cni-config',
    'daemonset.apps/mesh-cni',
    'clusterrole.rbac.authorization.k8s.io/mesh-cni-repair-label',
    'clusterrole.rbac.authorization.k8s.io/mesh-cni-repair-delete',
    'clusterrole.rbac.authorization.k8s.io/mesh-cni-node-readiness',
    'clusterrole.rbac.authorization.k8s.io/mesh-cni-ambient',
  ]);
});

/** The chart with each profile, and with every value that renders more objects. */
const RENDERINGS: Array<[string, string[], string[]]> = [
  ['the defaults', [], ['daemonset.apps/mesh-cni', 'configmap/mesh-cni-config', 'clusterrole.rbac.authorization.k8s.io/mesh-cni']],
  ...['k3s', 'k3d', 'microk8s', 'minikube'].map((p): [string, string[], string[]] => [`global.platform=${p}`, [`global.platform=${p}`], ['daemonset.apps/mesh-cni']]),
  ['global.platform=openshift', ['global.platform=openshift'], ['daemonset.apps/mesh-cni', 'clusterrole.rbac.authorization.k8s.io/mesh-cni']],
  ['global.platform=gke', ['global.platform=gke'], ['daemonset.apps/mesh-cni', 'resourcequota/mesh-cni-resource-quota']],
  [
    'label repair, the taint, and every pod value',
    ['repair.repairPods=false', 'repair.labelPods=true', 'removeNotReadyTaint=true', 'env.MESH_CNI_IPTABLES=restore', 'podAnnotations.a=b', 'seLinuxOptions.level=s0', 'affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=mesh', 'affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists', 'global.imagePullSecrets[0]=pull'],
    ['daemonset.apps/mesh-cni', 'clusterrole.rbac.authorization.k8s.io/mesh-cni-repair-label', 'clusterrole.rbac.authorization.k8s.io/mesh-cni-node-readiness', 'serviceaccount/mesh-cni'],
  ],
  ['delete repair', ['repair.repairPods=false', 'repair.deletePods=true'], ['clusterrole.rbac.authorization.k8s.io/mesh-cni-repair-delete']],
  ['ambient', ['ambient.enabled=true'], ['clusterrole.rbac.authorization.k8s.io/mesh-cni-ambient', 'clusterrolebinding.rbac.authorization.k8s.io/mesh-cni-ambient', 'configmap/mesh-cni-config', 'daemonset.apps/mesh-cni']],
];

for (const [what, set, objects] of RENDERINGS) {
  test.serial(`helm template with ${what}: kubectl apply --dry-run=server accepts it`, (t) => {
    const rendered = helmTemplate(set);
    t.is(rendered.code, 0, rendered.stderr);
    const dry = kubectl(['apply', '--dry-run=server', '-f', '-'], rendered.stdout);
    t.is(dry.code, 0, dry.out);
    accepted(t, dry.out, objects);
  });
}
