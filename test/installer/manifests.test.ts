/**
 * The install/ manifests, parsed with @kubernetes/client-node's loadAllYaml, checked for the invariants the
 * DaemonSet depends on. What only an API server can judge (schema, admission) is for a server-side dry run.
 */
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { dumpYaml, loadAllYaml, type V1ClusterRole, type V1ClusterRoleBinding, type V1ConfigMap, type V1DaemonSet, type V1Namespace, type V1ServiceAccount } from '@kubernetes/client-node';
import { REPO_ROOT } from '../support/paths';

const INSTALL = join(REPO_ROOT, 'install');
const NAMESPACE = 'mesh-cni-system';

interface Manifest {
  file: string;
  text: string;
  objects: Array<{ apiVersion?: string; kind?: string; metadata?: { name?: string; namespace?: string } } & Record<string, any>>;
}

function load(dir: string, prefix = ''): Manifest[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    if (e.isDirectory()) return load(join(dir, e.name), `${prefix}${e.name}/`);
    if (!e.name.endsWith('.yaml')) return [];
    const text = readFileSync(join(dir, e.name), 'utf8');
    return [{ file: `${prefix}${e.name}`, text, objects: loadAllYaml(text).filter(Boolean) }];
  });
}

const manifests = load(INSTALL);
const base = manifests.filter((m) => !m.file.startsWith('optional/')).flatMap((m) => m.objects);
const optional = manifests.filter((m) => m.file.startsWith('optional/')).flatMap((m) => m.objects);
const one = <T>(objects: Manifest['objects'], kind: string, name?: string): T => {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata?.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0] as T;
};

const ds = one<V1DaemonSet>(base, 'DaemonSet');
const pod = ds.spec!.template.spec!;
const agent = pod.containers.find((c) => c.name === 'agent')!;
const config = one<V1ConfigMap>(base, 'ConfigMap');

test('every file parses, and every object has apiVersion, kind and name', (t) => {
  t.true(manifests.length >= 5);
  for (const m of manifests) {
    t.true(m.objects.length > 0, m.file);
    for (const o of m.objects) {
      t.truthy(o.apiVersion, `${m.file}: apiVersion`);
      t.truthy(o.kind, `${m.file}: kind`);
      t.truthy(o.metadata?.name, `${m.file}: ${o.kind} has a name`);
    }
  }
});

test('no field is misspelt: every key written survives the typed model (unknown keys would be dropped)', (t) => {
  for (const m of manifests) {
    const known = new Set<string>();
    for (const o of m.objects) for (const k of dumpYaml(o).matchAll(/^[\s-]*"?([^\s:"]+)"?:/gm)) known.add(k[1]!);
    const written = m.text
      .split('\n')
      .map((line) => line.replace(/(^|\s)#.*$/, ''))
      .flatMap((line) => [...line.matchAll(/(?:^[\s-]*|[{,]\s*)([A-Za-z][\w./-]*):(?:\s|$)/g)].map((k) => k[1]!));
    const lost = written.filter((k) => !known.has(k));
    t.deepEqual(lost, [], `${m.file}: keys the Kubernetes model does not know`);
  }
});

test('the kinds are all there, in one namespace', (t) => {
  t.deepEqual([...new Set(base.map((o) => o.kind))].sort(), ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'DaemonSet', 'Namespace', 'ServiceAccount']);
  const ns = one<V1Namespace>(base, 'Namespace');
  t.is(ns.metadata!.name, NAMESPACE);
  // hostPath, hostNetwork and added capabilities are refused under the baseline and restricted levels.
  t.is(ns.metadata!.labels!['pod-security.kubernetes.io/enforce'], 'privileged');
  for (const o of [...base, ...optional]) {
    if (['Namespace', 'ClusterRole', 'ClusterRoleBinding'].includes(o.kind!)) t.is(o.metadata!.namespace, undefined);
    else t.is(o.metadata!.namespace, NAMESPACE, `${o.kind} ${o.metadata!.name}`);
  }
});

test('RBAC: pods read and events create by default; patch and delete only in the optional pair', (t) => {
  const sa = one<V1ServiceAccount>(base, 'ServiceAccount');
  const verbsOn = (role: V1ClusterRole, resource: string): string[] => role.rules!.filter((r) => r.resources!.includes(resource) && r.apiGroups!.includes('')).flatMap((r) => r.verbs);
  const role = one<V1ClusterRole>(base, 'ClusterRole');
  t.deepEqual(verbsOn(role, 'pods').sort(), ['get', 'list', 'watch']);
  t.deepEqual(verbsOn(role, 'pods/status'), []);
  t.true(verbsOn(role, 'events').includes('create'));
  // pods/explain in the agent pod read the Events back (LAST ACTION); without it they got a 403
  t.true(verbsOn(role, 'events').includes('list'));
  // SIGTERM: restart or uninstall is told from the agent's own DaemonSet and node (src/agent/stop-decision.ts)
  t.deepEqual(role.rules!.filter((r) => r.apiGroups!.includes('apps')).map((r) => ({ resources: r.resources, verbs: r.verbs })), [{ resources: ['daemonsets'], verbs: ['get'] }]);
  t.deepEqual(verbsOn(role, 'nodes'), ['get']);
  t.deepEqual(verbsOn(role, 'namespaces'), ['get']);
  t.false(role.rules!.some((r) => r.verbs.includes('*') || r.resources?.includes('*')));

  const repairLabel = one<V1ClusterRole>(optional, 'ClusterRole', 'mesh-cni-repair-label');
  const repairDelete = one<V1ClusterRole>(optional, 'ClusterRole', 'mesh-cni-repair-delete');
  const readiness = one<V1ClusterRole>(optional, 'ClusterRole', 'mesh-cni-node-readiness');
  // --remove-not-ready-taint patches its node's taints; nothing else
  t.deepEqual(readiness.rules!.map((r) => ({ groups: r.apiGroups, resources: r.resources, verbs: r.verbs })), [{ groups: [''], resources: ['nodes'], verbs: ['patch'] }]);
  t.deepEqual(verbsOn(role, 'nodes'), ['get'], 'the base role reads nodes only');
  // label mode patches through pods/status only (no write access to pod specs); delete mode deletes pods only
  t.deepEqual(repairLabel.rules!.map((r) => ({ groups: r.apiGroups, resources: r.resources, verbs: r.verbs })), [{ groups: [''], resources: ['pods/status'], verbs: ['patch'] }]);
  t.deepEqual(repairDelete.rules!.map((r) => ({ groups: r.apiGroups, resources: r.resources, verbs: r.verbs })), [{ groups: [''], resources: ['pods'], verbs: ['delete'] }]);

  for (const [objects, r] of [[base, role], [optional, repairLabel], [optional, repairDelete], [optional, readiness]] as const) {
    const binding = one<V1ClusterRoleBinding>(objects, 'ClusterRoleBinding', r.metadata!.name);
    t.is(binding.roleRef.name, r.metadata!.name!);
    t.is(binding.roleRef.kind, 'ClusterRole');
    t.deepEqual(binding.subjects!.map((s) => ({ ...s })), [{ kind: 'ServiceAccount', name: sa.metadata!.name, namespace: NAMESPACE }]);
  }
  t.is(pod.serviceAccountName, sa.metadata!.name);
});

test('DaemonSet: node-level scheduling (host network, critical priority, every taint tolerated)', (t) => {
  t.true(pod.hostNetwork);
  t.is(pod.dnsPolicy, 'ClusterFirstWithHostNet');
  t.falsy(pod.hostPID, 'netns paths are read through /host/proc; the host PID namespace is not needed');
  t.is(pod.priorityClassName, 'system-node-critical');
  t.true(pod.tolerations!.some((tol) => tol.operator === 'Exists' && tol.key === undefined && tol.effect === undefined));
  t.deepEqual(ds.spec!.selector.matchLabels, { 'app.kubernetes.io/name': 'mesh-cni' });
  t.like(ds.spec!.template.metadata!.labels, ds.spec!.selector.matchLabels!);
  t.true((pod.terminationGracePeriodSeconds ?? 30) >= 10, 'time to uninstall on SIGTERM');
});

test('DaemonSet: probes on the health port, which the ConfigMap passes as --health-port', (t) => {
  const port = agent.ports!.find((p) => p.name === 'health')!;
  t.is(agent.readinessProbe!.httpGet!.path, '/readyz');
  t.is(agent.livenessProbe!.httpGet!.path, '/healthz');
  for (const probe of [agent.readinessProbe!, agent.livenessProbe!]) t.true(probe.httpGet!.port === 'health' || probe.httpGet!.port === port.containerPort);
  t.is(config.data!['health-port'], String(port.containerPort));
});

test('DaemonSet: every ConfigMap setting becomes an agent flag, and the image entrypoint is kept', (t) => {
  t.is(agent.command, undefined, 'args only: the image ENTRYPOINT is `mesh-cni agent`');
  const envs = new Map(agent.env!.map((e) => [e.name, e]));
  const settings = agent.args!.filter((a) => a.includes('$('));
  const flags = new Map(settings.map((a) => /^--([a-z0-9-]+)=\$\(([A-Z0-9_]+)\)$/.exec(a)!).map((m) => [m[1]!, m[2]!]));
  t.deepEqual([...flags.keys()].sort(), ['ambient', 'ambient-dns-capture', 'ambient-enablement-selectors', 'ambient-ipv6', 'backend', 'chained', 'cni-bin-dir', 'cni-conf-dir', 'cni-conf-file-name', 'cri-socket', 'exclude-namespaces', 'fight-quiet-seconds', 'fight-removals', 'fight-window-seconds', 'health-port', 'host-cni-conf-dir', 'log-level', 'owned-cni-config', 'owned-cni-config-file-name', 'remove-not-ready-taint', 'repair-mode']);
  // Fixed by the pod's own layout, not a setting: the host's /proc is mounted at /host/proc.
  t.deepEqual(agent.args!.filter((a) => !a.includes('$(')), ['--proc-root=/host/proc']);
  t.deepEqual([...flags.keys()].sort(), Object.keys(config.data!).sort());
  for (const [flag, variable] of flags) {
    const ref = envs.get(variable)?.valueFrom?.configMapKeyRef;
    t.deepEqual({ name: ref?.name, key: ref?.key }, { name: config.metadata!.name, key: flag }, `--${flag}`);
  }
  t.is(envs.get('NODE_NAME')?.valueFrom?.fieldRef?.fieldPath, 'spec.nodeName');
  t.is(config.data!['remove-not-ready-taint'], 'false', 'node readiness is opt-in (it needs the optional RBAC)');
  t.is(config.data!.ambient, 'false', 'ambient is opt-in (it needs the optional RBAC and ztunnel)');
  t.is(config.data!['owned-cni-config'], 'false', "the owned config is opt-in (Istio's istioOwnedCNIConfig)");
  t.is(config.data!['owned-cni-config-file-name'], '02-mesh-cni.conflist');
  t.is(config.data!.chained, 'true', 'chained into the primary by default; false is standalone (Multus)');
  t.true(agent.args!.includes('--chained=$(CHAINED_CNI_PLUGIN)'), "Istio's variable name");
  t.is(config.data!['cni-bin-dir'], '/host/opt/cni/bin');
  t.is(config.data!['cni-conf-dir'], '/host/etc/cni/net.d');
});

test('DaemonSet: capabilities, never privileged', (t) => {
  for (const m of manifests) t.false(/privileged:\s*true/.test(m.text), m.file);
  const sc = agent.securityContext!;
  t.false(sc.privileged);
  t.deepEqual(sc.capabilities!.drop, ['ALL']);
  for (const cap of ['NET_ADMIN', 'SYS_ADMIN']) t.true(sc.capabilities!.add!.includes(cap), cap);
  t.is(sc.runAsUser, 0);
  t.false(pod.initContainers?.some((c) => c.securityContext?.privileged) ?? false);
});

test('DaemonSet: host paths mounted where the agent and the installer expect them', (t) => {
  const volumes = new Map(pod.volumes!.map((v) => [v.name, v]));
  const mounts = new Map(agent.volumeMounts!.map((m) => [m.mountPath, m]));
  const expected: Array<[host: string, inPod: string]> = [
    ['/opt/cni/bin', config.data!['cni-bin-dir']!],
    ['/etc/cni/net.d', config.data!['cni-conf-dir']!],
    ['/var/run/mesh-cni', '/var/run/mesh-cni'],
    ['/var/run/netns', '/var/run/netns'],
    ['/proc', '/host/proc'],
    // the plugin's request log outlives the container
    ['/var/log/mesh-cni', '/var/log/mesh-cni'],
  ];
  for (const [host, inPod] of expected) {
    const mount = mounts.get(inPod);
    t.truthy(mount, `${inPod} mounted`);
    t.is(volumes.get(mount!.name)?.hostPath?.path, host, `${inPod} is the host's ${host}`);
  }
  t.is(mounts.get('/var/run/netns')!.mountPropagation, 'HostToContainer', 'netns created after start must be visible');
  t.true(mounts.get('/host/proc')!.readOnly);
  for (const m of agent.volumeMounts!) t.true(volumes.has(m.name), `volume ${m.name} exists`);
});
