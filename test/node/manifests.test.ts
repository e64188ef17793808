/**
 * install/ and the chart's renderings against a real kube-apiserver (RBAC on, admission on): `kubectl apply
 * --dry-run=server` runs every object through validation, defaulting and admission without persisting it.
 * Namespaced objects need their Namespace to exist even in a dry run, so the Namespace is applied for real
 * first, as `kubectl apply -f install/` would do (files in lexical order). Multus's NetworkAttachmentDefinition
 * CRD (test/node/fixtures/multus-nad-crd.yaml, copied from Multus) is created for real too, as on a cluster with
 * Multus, so the renderings' NetworkAttachmentDefinition goes through the server dry run like every other object,
 * and the provider=multus test creates it for real. (Debian's 1.20.2 source vendors modern-go/reflect2 1.0.1,
 * whose map iterator predates Go 1.18: built with Go 1.19 that apiserver segfaulted on every custom resource.
 * scripts/setup-node-deps.sh builds it with Debian's reflect2 1.0.2.)
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { REPO_ROOT } from '../support/paths';
import { startKube, type Kube } from '../support/kube';
import { helmTemplate, requireHelm } from '../support/helm';

const INSTALL = path.join(REPO_ROOT, 'install');
const NAD_CRD = path.join(REPO_ROOT, 'test/node/fixtures/multus-nad-crd.yaml');
const NAD = 'networkattachmentdefinition.k8s.cni.cncf.io/istio-cni';
let kube: Kube | undefined;

test.before(async () => {
  if (spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' }).status !== 0) {
    throw new Error('kubectl is missing: install Debian\'s kubernetes-client (scripts/setup-node-deps.sh does)');
  }
  requireHelm();
  kube = await startKube({ authorizationMode: 'RBAC' });
  const ns = kubectl(['apply', '-f', path.join(INSTALL, '00-namespace.yaml')]);
  if (ns.code !== 0) throw new Error(ns.out);
  const crd = kubectl(['apply', '-f', NAD_CRD]);
  if (crd.code !== 0) throw new Error(crd.out);
  const established = kubectl(['wait', '--for=condition=established', '--timeout=60s', 'crd/network-attachment-definitions.k8s.cni.cncf.io']);
  if (established.code !== 0) throw new Error(established.out);
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
  ['global.platform=openshift', ['global.platform=openshift'], ['daemonset.apps/mesh-cni', 'clusterrole.rbac.authorization.k8s.io/mesh-cni', NAD]],
  ['standalone with Multus', ['chained=false', 'provider=multus'], ['configmap/mesh-cni-config', 'daemonset.apps/mesh-cni', NAD]],
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
    t.is(objects.includes(NAD), /^kind: NetworkAttachmentDefinition$/m.test(rendered.stdout), 'a NetworkAttachmentDefinition exactly where one is expected');
  });
}

test.serial('provider=multus: the apiserver creates the NetworkAttachmentDefinition (Istio\'s shape: default/istio-cni, no spec) and serves it back', (t) => {
  const rendered = helmTemplate(['chained=false', 'provider=multus'], ['--show-only', 'templates/network-attachment-definition.yaml']);
  t.is(rendered.code, 0, rendered.stderr);
  t.is(kubectl(['get', 'crd', 'network-attachment-definitions.k8s.cni.cncf.io', '-o', 'jsonpath={.status.conditions[?(@.type=="Established")].status}']).out, 'True');
  t.teardown(() => void kubectl(['delete', '--ignore-not-found', '-n', 'default', 'network-attachment-definitions.k8s.cni.cncf.io', 'istio-cni']));
  const created = kubectl(['create', '-f', '-'], rendered.stdout);
  t.is(created.code, 0, created.out);
  t.regex(created.out, /networkattachmentdefinition\.k8s\.cni\.cncf\.io\/istio-cni created/);
  const got = kubectl(['get', '-n', 'default', 'network-attachment-definitions.k8s.cni.cncf.io', 'istio-cni', '-o', 'json']);
  t.is(got.code, 0, got.out);
  const nad = JSON.parse(got.out);
  t.like(nad, { apiVersion: 'k8s.cni.cncf.io/v1', kind: 'NetworkAttachmentDefinition', metadata: { name: 'istio-cni', namespace: 'default' } });
  t.is(nad.spec, undefined, 'no spec.config: Multus reads the network from its conf dir by this name');
  t.truthy(nad.metadata.uid, 'stored by the apiserver');
  // The served schema's: a field the CRD does not have is refused by strict validation.
  const bad = kubectl(['apply', '--dry-run=client', '--validate=strict', '-f', '-'], `${rendered.stdout.trimEnd()}\nspec:\n  confg: "{}"\n`);
  t.not(bad.code, 0, bad.out);
  t.regex(bad.out, /unknown field "confg" in io\.cncf\.cni\.k8s\.v1\.NetworkAttachmentDefinition\.spec/);
});
