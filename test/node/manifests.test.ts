/**
 * install/ and the chart's renderings against a real kube-apiserver (RBAC on, admission on): `kubectl apply
 * --dry-run=server` runs every object through validation, defaulting and admission without persisting it.
 * Namespaced objects need their Namespace to exist even in a dry run, so the Namespace is applied for real
 * first, as `kubectl apply -f install/` would do (files in lexical order). Multus's NetworkAttachmentDefinition
 * CRD (test/node/fixtures/multus-nad-crd.yaml, copied from Multus) is created for real too, as on a cluster with
 * Multus; the renderings' NetworkAttachmentDefinition is judged against the schema that apiserver then serves.
 *
 * Not by creating it: this kube-apiserver (Debian's 1.20.2 source, built with Go 1.19) segfaults on every
 * custom resource it decodes (`fatal error: fault` in json-iterator's map encoder, objectmeta.GetObjectMeta:
 * the vendored modern-go/reflect2 1.0.1 predates Go 1.18's map iterator), dry run included. So the NAD goes
 * through kubectl's strict validation against the apiserver's published OpenAPI for the CRD, and the rest of
 * each rendering through the server dry run.
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

/** The rendering's documents split: NetworkAttachmentDefinitions (see the header) and the rest. */
function splitNads(yaml: string): { nads: string; rest: string } {
  const docs = yaml.split(/^---$/m);
  const isNad = (d: string) => /^kind: NetworkAttachmentDefinition$/m.test(d);
  return { nads: docs.filter(isNad).join('---'), rest: docs.filter((d) => !isNad(d)).join('---') };
}

for (const [what, set, objects] of RENDERINGS) {
  test.serial(`helm template with ${what}: kubectl apply --dry-run=server accepts it`, (t) => {
    const rendered = helmTemplate(set);
    t.is(rendered.code, 0, rendered.stderr);
    const { nads, rest } = splitNads(rendered.stdout);
    const dry = kubectl(['apply', '--dry-run=server', '-f', '-'], rest);
    t.is(dry.code, 0, dry.out);
    accepted(t, dry.out, objects.filter((o) => o !== NAD));
    t.is(objects.includes(NAD), nads !== '', 'a NetworkAttachmentDefinition exactly where one is expected');
    if (nads !== '') {
      const nad = kubectl(['apply', '--dry-run=client', '--validate=strict', '-f', '-'], nads);
      t.is(nad.code, 0, nad.out);
      t.regex(nad.out, /networkattachmentdefinition\.k8s\.cni\.cncf\.io\/istio-cni created \(dry run\)/);
    }
  });
}

test.serial('provider=multus: the NetworkAttachmentDefinition meets the CRD the apiserver serves (Istio\'s shape: default/istio-cni, no spec)', (t) => {
  const rendered = helmTemplate(['chained=false', 'provider=multus'], ['--show-only', 'templates/network-attachment-definition.yaml']);
  t.is(rendered.code, 0, rendered.stderr);
  t.is(kubectl(['get', 'crd', 'network-attachment-definitions.k8s.cni.cncf.io', '-o', 'jsonpath={.status.conditions[?(@.type=="Established")].status}']).out, 'True');
  const ok = kubectl(['apply', '--dry-run=client', '--validate=strict', '-o', 'json', '-f', '-'], rendered.stdout);
  t.is(ok.code, 0, ok.out);
  t.like(JSON.parse(ok.out), { apiVersion: 'k8s.cni.cncf.io/v1', kind: 'NetworkAttachmentDefinition', metadata: { name: 'istio-cni', namespace: 'default' } });
  // The validation is the served schema's: a field the CRD does not have is refused.
  const bad = kubectl(['apply', '--dry-run=client', '--validate=strict', '-f', '-'], `${rendered.stdout.trimEnd()}\nspec:\n  confg: "{}"\n`);
  t.not(bad.code, 0, bad.out);
  t.regex(bad.out, /unknown field "confg" in io\.cncf\.cni\.k8s\.v1\.NetworkAttachmentDefinition\.spec/);
});
