/**
 * install/ against a real kube-apiserver (RBAC on, admission on): `kubectl apply --dry-run=server` runs
 * every object through validation, defaulting and admission without persisting it. Namespaced objects need
 * their Namespace to exist even in a dry run, so the Namespace is applied for real first, as
 * `kubectl apply -f install/` would do (files in lexical order).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { REPO_ROOT } from '../support/paths';
import { startKube, type Kube } from '../support/kube';

const INSTALL = path.join(REPO_ROOT, 'install');
let kube: Kube | undefined;

test.before(async () => {
  if (spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' }).status !== 0) {
    throw new Error('kubectl is missing: install Debian\'s kubernetes-client (scripts/setup-node-deps.sh does)');
  }
  kube = await startKube({ authorizationMode: 'RBAC' });
});

test.after.always(async () => {
  if (kube) await kube.stop();
});

function kubectl(...args: string[]) {
  const r = spawnSync('kubectl', ['--kubeconfig', kube!.kubeconfig, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

test.serial('kubectl apply --dry-run=server accepts every manifest in install/ and install/optional/', (t) => {
  const ns = kubectl('apply', '-f', path.join(INSTALL, '00-namespace.yaml'));
  t.is(ns.code, 0, ns.out);
  const dry = kubectl('apply', '--dry-run=server', '-f', INSTALL, '-f', path.join(INSTALL, 'optional'));
  t.is(dry.code, 0, dry.out);
  for (const object of ['serviceaccount/mesh-cni', 'clusterrole.rbac.authorization.k8s.io/mesh-cni', 'clusterrolebinding.rbac.authorization.k8s.io/mesh-cni', 'configmap/mesh-cni-config', 'daemonset.apps/mesh-cni', 'clusterrole.rbac.authorization.k8s.io/mesh-cni-repair', 'clusterrole.rbac.authorization.k8s.io/mesh-cni-node-readiness']) {
    t.regex(dry.out, new RegExp(`${object.replace(/\./g, '\\.')} (created|configured|unchanged) \\(server dry run\\)`), dry.out);
  }
  t.notRegex(dry.out, /Warning|error/i, dry.out);
});
