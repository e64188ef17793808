/**
 * The Helm chart (charts/mesh-cni) rendered by a real helm: lint, the platform profiles, values winning over
 * profiles, misspelled values refused, the RBAC each repair mode needs, ambient, the flags it passes the agent
 * (parsed by the agent's own parser), and install/ being its rendering. The API server's verdict on the same renderings is test/node/manifests.test.ts.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CHART, findObject, helmTemplate, HELM, renderChart, requireHelm } from '../support/helm';
import { DEFAULT_ENABLEMENT_SELECTORS } from '../../src/mesh/enablement';
import { mesh } from '../support/cli';
import { REPO_ROOT } from '../support/paths';

const STANDARD = { conf: '/etc/cni/net.d', bin: '/opt/cni/bin', netns: '/var/run/netns' };

/**
 * What each profile sets, as Istio's manifests/charts/istio-cni/files/profile-platform-*.yaml (Istio 86c9f01f)
 * set it, plus our CRI socket (Istio has none). GKE: Istio empties cniBinDir and detects /home/kubernetes/bin
 * from the server version; ours sets it outright.
 */
const PLATFORMS: Record<string, { conf: string; bin: string; netns: string; cri: string }> = {
  k3s: { conf: '/var/lib/rancher/k3s/agent/etc/cni/net.d', bin: '/var/lib/rancher/k3s/data/cni', netns: STANDARD.netns, cri: '/run/k3s/containerd/containerd.sock' },
  k3d: { conf: '/var/lib/rancher/k3s/agent/etc/cni/net.d', bin: '/bin', netns: STANDARD.netns, cri: '/run/k3s/containerd/containerd.sock' },
  microk8s: { conf: '/var/snap/microk8s/current/args/cni-network', bin: '/var/snap/microk8s/current/opt/cni/bin', netns: STANDARD.netns, cri: '/var/snap/microk8s/common/run/containerd.sock' },
  minikube: { conf: STANDARD.conf, bin: STANDARD.bin, netns: '/var/run/docker/netns', cri: '/run/containerd/containerd.sock' },
  openshift: { conf: '/etc/cni/multus/net.d', bin: '/var/lib/cni/bin', netns: STANDARD.netns, cri: '/var/run/crio/crio.sock' },
  gke: { conf: STANDARD.conf, bin: '/home/kubernetes/bin', netns: STANDARD.netns, cri: '/run/containerd/containerd.sock' },
};

test.before(() => requireHelm());

function daemonSet(objects: any[]): any {
  const ds = findObject(objects, 'DaemonSet', 'mesh-cni');
  if (!ds) throw new Error('no DaemonSet mesh-cni rendered');
  return ds;
}

function settings(objects: any[]): Record<string, string> {
  return findObject(objects, 'ConfigMap', 'mesh-cni-config').data;
}

/** The DaemonSet's host paths and mounts that a node layout decides. */
function layoutOf(objects: any[]) {
  const spec = daemonSet(objects).spec.template.spec;
  const hostPath = (name: string) => spec.volumes.find((v: any) => v.name === name)?.hostPath?.path;
  const mount = (name: string) => spec.containers[0].volumeMounts.find((m: any) => m.name === name)?.mountPath;
  return {
    conf: hostPath('cni-conf-dir'),
    bin: hostPath('cni-bin-dir'),
    netns: hostPath('netns'),
    netnsMount: mount('netns'),
    cri: hostPath('cri-socket'),
    criMount: mount('cri-socket'),
    hostConfSetting: settings(objects)['host-cni-conf-dir'],
    criSetting: settings(objects)['cri-socket'],
  };
}

function expectLayout(t: any, objects: any[], want: { conf: string; bin: string; netns: string; cri: string }) {
  t.deepEqual(layoutOf(objects), {
    conf: want.conf,
    bin: want.bin,
    netns: want.netns,
    netnsMount: want.netns,
    cri: want.cri,
    criMount: want.cri,
    hostConfSetting: want.conf,
    criSetting: want.cri,
  });
}

test('helm lint --strict passes, with the defaults and with each platform profile', (t) => {
  for (const set of [[], ...Object.keys(PLATFORMS).map((p) => [`global.platform=${p}`])]) {
    const r = spawnSync(HELM, ['lint', '--strict', CHART, ...set.flatMap((s) => ['--set', s])], { encoding: 'utf8' });
    t.is(r.status, 0, `helm lint --strict ${set.join(' ')}:\n${r.stdout}${r.stderr}`);
  }
});

test('golden: install/ is the chart rendered with its default values (scripts/render-install.js)', (t) => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { renderInstall, differences } = require(path.join(REPO_ROOT, 'scripts/render-install.js'));
  t.deepEqual(differences(renderInstall(HELM)), [], 'run node scripts/render-install.js and commit install/');
});

test('the defaults render the standard layout', (t) => {
  expectLayout(t, renderChart(), { ...STANDARD, cri: '/run/containerd/containerd.sock' });
});

for (const [platform, want] of Object.entries(PLATFORMS)) {
  test(`global.platform=${platform} puts its paths in the DaemonSet and the agent's settings`, (t) => {
    const objects = renderChart([`global.platform=${platform}`]);
    expectLayout(t, objects, want);
    const container = daemonSet(objects).spec.template.spec.containers[0];
    const role = findObject(objects, 'ClusterRole', 'mesh-cni');
    const scc = role.rules.some((r: any) => r.apiGroups.includes('security.openshift.io'));
    t.is(scc, platform === 'openshift', 'the privileged SCC is used on OpenShift only');
    t.deepEqual(container.securityContext.seLinuxOptions, platform === 'openshift' ? { type: 'spc_t' } : undefined);
    t.is(Boolean(findObject(objects, 'ResourceQuota', 'mesh-cni-resource-quota')), platform === 'gke', 'the system-node-critical quota on GKE only');
  });
}

test('an explicit value wins over the profile, at the top or under cni. (Istio\'s spelling), false and empty included', (t) => {
  const k3s = PLATFORMS.k3s!;
  expectLayout(t, renderChart(['global.platform=k3s', 'cniBinDir=/opt/custom/bin']), { ...k3s, bin: '/opt/custom/bin' });
  expectLayout(t, renderChart(['global.platform=k3s', 'cni.cniConfDir=/etc/custom/net.d']), { ...k3s, conf: '/etc/custom/net.d' });
  const noSocket = layoutOf(renderChart(['global.platform=k3s', 'criSocket=']));
  t.is(noSocket.criSetting, '', 'an empty value beats the profile too');
  t.is(noSocket.cri, undefined, 'and no CRI socket is mounted');
  t.falsy(findObject(renderChart(['global.platform=gke', 'resourceQuotas.enabled=false']), 'ResourceQuota', 'mesh-cni-resource-quota'));
  const selinux = daemonSet(renderChart(['global.platform=openshift', 'seLinuxOptions.type=container_t'])).spec.template.spec.containers[0].securityContext;
  t.deepEqual(selinux.seLinuxOptions, { type: 'container_t' });
});

test('an empty cniBinDir is detected as Istio\'s chart does: /home/kubernetes/bin on a GKE server version', (t) => {
  t.is(layoutOf(renderChart(['cniBinDir='], ['--kube-version', 'v1.30.5-gke.1014001'])).bin, '/home/kubernetes/bin');
  t.is(layoutOf(renderChart(['cniBinDir='], ['--kube-version', 'v1.30.5'])).bin, '/opt/cni/bin');
});

const MISSPELLED: Array<[string, RegExp]> = [
  ['cniConfdir=/x', /additional properties 'cniConfdir' not allowed/],
  ['cni.cniBinDirr=/x', /at '\/cni': additional properties 'cniBinDirr' not allowed/],
  ['repair.labelPod=true', /at '\/repair': additional properties 'labelPod' not allowed/],
  ['global.platfrom=k3s', /at '\/global': additional properties 'platfrom' not allowed/],
  ['global.platform=k3z', /at '\/global\/platform': value must be one of/],
  ['backend=ipchains', /at '\/backend': value must be one of/],
  ['repair.initContainerName=my-init', /at '\/repair\/initContainerName': value must be 'istio-validation'/],
  ['seccompProfile.typ=RuntimeDefault', /at '\/seccompProfile': additional properties 'typ' not allowed/],
  ['ambient.enable=true', /at '\/ambient': additional properties 'enable' not allowed/],
  ['cni.ambient.dnsCapture=maybe', /at '\/cni\/ambient\/dnsCapture': got string, want boolean/],
  ['ambient.enablementSelectors[0].podSelektor.matchLabels.a=b', /at '\/ambient\/enablementSelectors\/0': additional properties 'podSelektor' not allowed/],
  ['ambient.enablementSelectors[0].podSelector.matchExpressions[0].key=a,ambient.enablementSelectors[0].podSelector.matchExpressions[0].operator=In', /matchExpressions\/0': missing property 'values'/],
  ['ambient.reconcileIptablesOnStartup=true', /at '\/ambient': additional properties 'reconcileIptablesOnStartup' not allowed/],
];

for (const [value, message] of MISSPELLED) {
  test(`--set ${value} fails helm template, naming the value`, (t) => {
    const r = helmTemplate([value]);
    t.not(r.code, 0, r.stdout);
    t.regex(r.stderr, message);
  });
}

/** Istio's repair booleans → the agent's mode and the one extra RBAC it needs, in Istio's order. */
const REPAIR: Array<[string[], string, string | undefined, string | undefined]> = [
  [[], 'repair', undefined, undefined],
  [['repair.enabled=false'], 'off', undefined, undefined],
  [['repair.repairPods=false'], 'off', undefined, undefined],
  [['repair.repairPods=false', 'repair.labelPods=true'], 'label', 'mesh-cni-repair-label', 'pods/status patch'],
  [['repair.repairPods=false', 'repair.deletePods=true'], 'delete', 'mesh-cni-repair-delete', 'pods delete'],
  [['repair.repairPods=false', 'repair.deletePods=true', 'repair.labelPods=true'], 'delete', 'mesh-cni-repair-delete', 'pods delete'],
  [['repair.labelPods=true'], 'repair', undefined, undefined],
];

for (const [set, mode, role, grant] of REPAIR) {
  test(`repair values ${set.join(' ') || '(defaults)'} → --repair-mode=${mode}${role ? ` and ${role}` : ', no extra RBAC'}`, (t) => {
    const objects = renderChart(set);
    t.is(settings(objects)['repair-mode'], mode);
    const roles = objects.filter((o) => o.kind === 'ClusterRole' && o.metadata.name.startsWith('mesh-cni-repair'));
    t.deepEqual(roles.map((r) => r.metadata.name), role ? [role] : []);
    if (role) {
      t.deepEqual(roles[0].rules.map((r: any) => `${r.resources.join(',')} ${r.verbs.join(',')}`), [grant]);
      const binding = findObject(objects, 'ClusterRoleBinding', role);
      t.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: 'mesh-cni', namespace: 'mesh-cni-system' }]);
    }
  });
}

test("cniConfFileName (Istio's name, also under cni.) becomes the agent's --cni-conf-file-name; a path is refused", (t) => {
  t.is(settings(renderChart())['cni-conf-file-name'], '');
  t.is(settings(renderChart(['cniConfFileName=20-multus.conflist']))['cni-conf-file-name'], '20-multus.conflist');
  t.is(settings(renderChart(['cni.cniConfFileName=10-calico.conflist']))['cni-conf-file-name'], '10-calico.conflist');
  const r = helmTemplate(['cniConfFileName=/etc/cni/net.d/10-calico.conflist']);
  t.not(r.code, 0, r.stdout);
  t.regex(r.stderr, /cniConfFileName/);
});

test("istioOwnedCNIConfig and istioOwnedCNIConfigFileName (Istio's names; also Filename, and under cni.) become --owned-cni-config and --owned-cni-config-file-name; a path or a non-.conflist name is refused", (t) => {
  const defaults = settings(renderChart());
  t.is(defaults['owned-cni-config'], 'false', 'opt-in');
  t.is(defaults['owned-cni-config-file-name'], '02-mesh-cni.conflist', 'empty value: our default name');
  t.is(settings(renderChart(['istioOwnedCNIConfig=true']))['owned-cni-config'], 'true');
  t.is(settings(renderChart(['cni.istioOwnedCNIConfig=true']))['owned-cni-config'], 'true');
  t.is(settings(renderChart(['istioOwnedCNIConfigFileName=01-mesh.conflist']))['owned-cni-config-file-name'], '01-mesh.conflist');
  t.is(settings(renderChart(['istioOwnedCNIConfigFilename=01-other.conflist']))['owned-cni-config-file-name'], '01-other.conflist');
  t.is(settings(renderChart(['istioOwnedCNIConfigFileName=01-a.conflist', 'istioOwnedCNIConfigFilename=01-b.conflist']))['owned-cni-config-file-name'], '01-a.conflist', "Istio's spelling wins");
  const args: string[] = daemonSet(renderChart(['istioOwnedCNIConfig=true'])).spec.template.spec.containers[0].args;
  t.true(args.includes('--owned-cni-config=$(ISTIO_OWNED_CNI_CONFIG)'), args.join(' '));
  t.true(args.includes('--owned-cni-config-file-name=$(ISTIO_OWNED_CNI_CONF_FILENAME)'), args.join(' '));
  for (const bad of ['istioOwnedCNIConfigFileName=/etc/cni/net.d/02-mesh-cni.conflist', 'istioOwnedCNIConfigFileName=02-mesh-cni.conf', 'istioOwnedCNIConfigFilename=../x.conflist', 'istioOwnedCNIConfig=yes']) {
    const r = helmTemplate([bad]);
    t.not(r.code, 0, bad);
    t.regex(r.stderr, /istioOwnedCNIConfig/, bad);
  }
});

test('the agent parses the owned-config flags as the DaemonSet passes them', (t) => {
  const help = mesh(['agent', '--help']);
  t.regex(help.stdout, /--owned-cni-config\b/);
  t.regex(help.stdout, /--owned-cni-config-file-name/);
});

test('removeNotReadyTaint renders the node-readiness RBAC and the setting', (t) => {
  t.falsy(findObject(renderChart(), 'ClusterRole', 'mesh-cni-node-readiness'));
  const objects = renderChart(['removeNotReadyTaint=true']);
  t.is(settings(objects)['remove-not-ready-taint'], 'true');
  t.deepEqual(findObject(objects, 'ClusterRole', 'mesh-cni-node-readiness').rules, [{ apiGroups: [''], resources: ['nodes'], verbs: ['patch'] }]);
});

/**
 * The variable a ConfigMap key reaches the agent by: KEY_IN_CAPITALS, or Istio's name where the CLI reads
 * Istio's (src/cli/options.ts), as the chart's mesh-cni.envName says.
 */
const ISTIO_ENV: Record<string, string> = {
  ambient: 'AMBIENT_ENABLED',
  'ambient-enablement-selectors': 'AMBIENT_ENABLEMENT_SELECTOR',
  'owned-cni-config': 'ISTIO_OWNED_CNI_CONFIG',
  'owned-cni-config-file-name': 'ISTIO_OWNED_CNI_CONF_FILENAME',
  chained: 'CHAINED_CNI_PLUGIN',
};
const envName = (key: string) => ISTIO_ENV[key] ?? key.replace(/-/g, '_').toUpperCase();

test('every key of the ConfigMap is passed to the agent as a flag it has, read from the ConfigMap', (t) => {
  const objects = renderChart();
  const container = daemonSet(objects).spec.template.spec.containers[0];
  const help = mesh(['agent', '--help']).stdout;
  const keys = Object.keys(settings(objects));
  t.true(keys.length >= 10, keys.join(' '));
  for (const key of keys) {
    const env = envName(key);
    t.true(container.args.includes(`--${key}=$(${env})`), `--${key} in the args`);
    t.deepEqual(container.env.find((e: any) => e.name === env)?.valueFrom, { configMapKeyRef: { name: 'mesh-cni-config', key } });
    t.regex(help, new RegExp(`--${key}\\b`), `mesh-cni agent has --${key}`);
  }
});

test('a changed setting changes the pod template (helm upgrade rolls the agents); the same values do not', (t) => {
  const checksum = (set: string[]) => daemonSet(renderChart(set)).spec.template.metadata.annotations['checksum/config'];
  t.is(checksum([]), checksum([]));
  t.not(checksum([]), checksum(['repair.repairPods=false', 'repair.labelPods=true']));
  t.not(checksum([]), checksum(['logging.level=debug']));
});

test('values reach the pod: image, log level (logging.level over global.logging.level), env, seccomp, labels', (t) => {
  const objects = renderChart(['image.repository=registry.example/mesh-cni', 'image.tag=1.2.3', 'global.logging.level=warn', 'env.MESH_CNI_IPTABLES=restore', 'podLabels.team=net', 'seccompProfile.type=Unconfined']);
  const ds = daemonSet(objects);
  const container = ds.spec.template.spec.containers[0];
  t.is(container.image, 'registry.example/mesh-cni:1.2.3');
  t.is(settings(objects)['log-level'], 'warn');
  t.is(settings(renderChart(['global.logging.level=warn', 'logging.level=debug']))['log-level'], 'debug');
  t.deepEqual(container.env.find((e: any) => e.name === 'MESH_CNI_IPTABLES'), { name: 'MESH_CNI_IPTABLES', value: 'restore' });
  t.is(ds.spec.template.metadata.labels.team, 'net');
  t.deepEqual(container.securityContext.seccompProfile, { type: 'Unconfined' });
  t.deepEqual(daemonSet(renderChart()).spec.template.spec.containers[0].securityContext.seccompProfile, { type: 'RuntimeDefault' });
});

/**
 * The agent container's argv and environment as kubelet makes them: each variable from its ConfigMap key or
 * field, then $(NAME) in the args replaced by its value (an unknown name stays as written, as kubelet leaves it).
 */
function containerRun(objects: any[]): { args: string[]; env: Record<string, string> } {
  const data = settings(objects);
  const container = daemonSet(objects).spec.template.spec.containers[0];
  const env: Record<string, string> = {};
  for (const e of container.env) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.configMapKeyRef) env[e.name] = data[e.valueFrom.configMapKeyRef.key]!;
    else if (e.valueFrom?.fieldRef) env[e.name] = `field:${e.valueFrom.fieldRef.fieldPath}`;
  }
  const args = (container.args as string[]).map((a) => a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name: string) => env[name] ?? whole));
  return { args, env };
}

const AGENT_JS = path.join(REPO_ROOT, 'dist/src/cli/commands/agent.js');
const OPTIONS_JS = path.join(REPO_ROOT, 'dist/src/cli/options.js');

/**
 * The agent's own parser on these args, in a process with only this environment (the CLI reads its defaults
 * from the environment when it loads, as in the agent's pod): its yargs options, strict (an arg it does not
 * know fails), then ambientFromArgs and fightPolicy, the functions the agent starts ambient and the fight guard with.
 */
function agentParses(args: string[], env: Record<string, string>): { ambient: unknown; settings: any; fight: any } {
  const code = `
    const yargs = require('yargs');
    const { builder, fightPolicy } = require(${JSON.stringify(AGENT_JS)});
    const { ambientFromArgs } = require(${JSON.stringify(OPTIONS_JS)});
    const argv = builder(yargs()).strict().exitProcess(false).fail((msg, err) => { throw err || new Error(msg); }).parseSync(JSON.parse(process.argv[1]));
    process.stdout.write(JSON.stringify({ ambient: argv.ambient, settings: ambientFromArgs(argv) || null, fight: fightPolicy(argv) }));`;
  const r = spawnSync(process.execPath, ['-e', code, JSON.stringify(args)], { cwd: REPO_ROOT, encoding: 'utf8', env: { PATH: process.env.PATH, ...env }, timeout: 60_000 });
  if (r.status !== 0) throw new Error(`the agent's parser refused ${JSON.stringify(args)}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const ambientRoles = (objects: any[]) => objects.filter((o) => o.metadata?.name === 'mesh-cni-ambient').map((o) => o.kind);
const ztunnelMount = (objects: any[]) => {
  const spec = daemonSet(objects).spec.template.spec;
  return { mount: spec.containers[0].volumeMounts.find((m: any) => m.name === 'ztunnel-run'), volume: spec.volumes.find((v: any) => v.name === 'ztunnel-run') };
};

test('ambient off (the default): no ambient RBAC, and the agent parses --ambient=false from its rendered args', (t) => {
  const objects = renderChart();
  t.deepEqual(ambientRoles(objects), []);
  const run = containerRun(objects);
  t.true(run.args.includes('--ambient=false'), run.args.join(' '));
  const parsed = agentParses(run.args, {});
  t.is(parsed.ambient, false, 'a boolean false, not the string');
  t.is(parsed.settings, null, 'ambientFromArgs: ambient off');
});

test('ambient.enabled=true renders the RBAC, the flags and ztunnel\'s socket dir; the agent parses them to Istio\'s defaults', (t) => {
  const objects = renderChart(['ambient.enabled=true']);
  t.deepEqual(ambientRoles(objects), ['ClusterRole', 'ClusterRoleBinding']);
  t.deepEqual(findObject(objects, 'ClusterRole', 'mesh-cni-ambient').rules, [
    { apiGroups: [''], resources: ['namespaces'], verbs: ['get', 'list', 'watch'] },
    { apiGroups: [''], resources: ['pods/status'], verbs: ['patch'] },
  ]);
  t.deepEqual(findObject(objects, 'ClusterRoleBinding', 'mesh-cni-ambient').subjects, [{ kind: 'ServiceAccount', name: 'mesh-cni', namespace: 'mesh-cni-system' }]);
  t.deepEqual(ztunnelMount(objects), {
    mount: { name: 'ztunnel-run', mountPath: '/var/run/ztunnel' },
    volume: { name: 'ztunnel-run', hostPath: { path: '/var/run/ztunnel', type: 'DirectoryOrCreate' } },
  });
  const run = containerRun(objects);
  for (const flag of ['--ambient=true', '--ambient-dns-capture=true', '--ambient-ipv6=true']) t.true(run.args.includes(flag), `${flag} in ${run.args.join(' ')}`);
  const parsed = agentParses(run.args, {});
  t.is(parsed.ambient, true);
  t.deepEqual(parsed.settings.selectors, DEFAULT_ENABLEMENT_SELECTORS, "the rendered selectors are Istio's default (src/mesh/enablement.ts)");
  t.like(parsed.settings.node, { dnsCapture: true, ipv6: true });
});

test('ambient off keeps ztunnel\'s socket dir mounted: install/ turns ambient on with its ConfigMap alone', (t) => {
  t.deepEqual(ztunnelMount(renderChart()), ztunnelMount(renderChart(['ambient.enabled=true'])));
});

test('the ambient variables the DaemonSet sets are the ones the CLI in the agent pod reads (explain decides as the agent does)', (t) => {
  const { env } = containerRun(renderChart(['ambient.enabled=true', 'ambient.dnsCapture=false']));
  const parsed = agentParses([], env);
  t.is(parsed.ambient, true, `from the environment alone: ${Object.keys(env).join(' ')}`);
  t.deepEqual(parsed.settings.selectors, DEFAULT_ENABLEMENT_SELECTORS);
  t.like(parsed.settings.node, { dnsCapture: false, ipv6: true });
});

test('ambient values of a values file reach the agent: custom selectors, dnsCapture and ipv6 off', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mesh-cni-chart-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const selectors = [
    { namespaceSelector: { matchExpressions: [{ key: 'team', operator: 'In', values: ['shop', 'pay'] }] } },
    { podSelector: { matchLabels: { 'mesh.example/ztunnel': 'yes' }, matchExpressions: [{ key: 'legacy', operator: 'DoesNotExist' }] } },
  ];
  const file = path.join(dir, 'values.yaml');
  fs.writeFileSync(file, JSON.stringify({ ambient: { enabled: true, enablementSelectors: selectors, dnsCapture: false, ipv6: false } }));
  const objects = renderChart([], ['-f', file]);
  const parsed = agentParses(containerRun(objects).args, {});
  t.deepEqual(parsed.settings.selectors, selectors);
  t.like(parsed.settings.node, { dnsCapture: false, ipv6: false });
});

/** The agent's parser on the rendered args, then installSettings (what the installer is handed). */
function installParses(args: string[]): { chained: unknown; cniConfFileName: unknown; cniConfDir: unknown } {
  const code = `
    const yargs = require('yargs');
    const { builder } = require(${JSON.stringify(AGENT_JS)});
    const { installSettings } = require(${JSON.stringify(OPTIONS_JS)});
    const argv = builder(yargs()).strict().exitProcess(false).fail((msg, err) => { throw err || new Error(msg); }).parseSync(JSON.parse(process.argv[1]));
    const o = installSettings({ ...argv, kubernetes: false });
    process.stdout.write(JSON.stringify({ chained: o.chained, cniConfFileName: o.cniConfFileName ?? null, cniConfDir: o.cniConfDir }));`;
  const r = spawnSync(process.execPath, ['-e', code, JSON.stringify(args)], { cwd: REPO_ROOT, encoding: 'utf8', env: { PATH: process.env.PATH }, timeout: 60_000 });
  if (r.status !== 0) throw new Error(`the agent's parser refused ${JSON.stringify(args)}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const nads = (objects: any[]) => objects.filter((o) => o.kind === 'NetworkAttachmentDefinition');

test("chained (Istio's name and env CHAINED_CNI_PLUGIN): true by default, no NetworkAttachmentDefinition; false reaches the installer as chained: false", (t) => {
  const defaults = renderChart();
  t.is(settings(defaults).chained, 'true');
  t.deepEqual(nads(defaults), []);
  t.like(installParses(containerRun(defaults).args), { chained: true, cniConfFileName: null });
  for (const set of [['chained=false'], ['cni.chained=false', 'cni.cniConfFileName=mesh-cni.conf']]) {
    const objects = renderChart(set);
    t.is(settings(objects).chained, 'false', set.join(' '));
    const run = containerRun(objects);
    t.true(run.args.includes('--chained=false'), run.args.join(' '));
    t.is(run.env.CHAINED_CNI_PLUGIN, 'false');
    t.like(installParses(run.args), { chained: false, cniConfFileName: set.length > 1 ? 'mesh-cni.conf' : null }, set.join(' '));
    t.deepEqual(nads(objects), [], 'provider default: no NetworkAttachmentDefinition');
  }
});

test("provider: multus renders Istio's NetworkAttachmentDefinition default/istio-cni (no spec.config: Multus reads our file by name)", (t) => {
  const objects = renderChart(['chained=false', 'provider=multus']);
  t.deepEqual(nads(objects), [
    { apiVersion: 'k8s.cni.cncf.io/v1', kind: 'NetworkAttachmentDefinition', metadata: { name: 'istio-cni', namespace: 'default', labels: { 'app.kubernetes.io/name': 'mesh-cni' } } },
  ]);
  // Istio's spelling too.
  t.is(nads(renderChart(['cni.chained=false', 'cni.provider=multus'])).length, 1);
});

test('global.platform=openshift is standalone with Multus, as Istio\'s profile: chained false, mesh-cni.conf in Multus\'s conf dir, the NAD', (t) => {
  const objects = renderChart(['global.platform=openshift']);
  t.like(settings(objects), { chained: 'false', 'cni-conf-file-name': 'mesh-cni.conf', 'host-cni-conf-dir': '/etc/cni/multus/net.d' });
  t.like(installParses(containerRun(objects).args), { chained: false, cniConfFileName: 'mesh-cni.conf' });
  t.is(nads(objects).length, 1);
  // An explicit value still wins over the profile.
  const chained = renderChart(['global.platform=openshift', 'chained=true', 'provider=default']);
  t.is(settings(chained).chained, 'true');
  t.deepEqual(nads(chained), []);
});

test('primaryFight.* become the agent\'s fight policy (5 removals in 60 s, quiet 60 s by default; removals 0 turns it off); bad values are refused', (t) => {
  const policy = (set: string[]) => {
    const run = containerRun(renderChart(set));
    return agentParses(run.args, run.env).fight;
  };
  t.like(settings(renderChart()), { 'fight-removals': '5', 'fight-window-seconds': '60', 'fight-quiet-seconds': '60' });
  t.like(policy([]), { removals: 5, windowMs: 60_000, quietMs: 60_000 });
  t.like(policy(['primaryFight.removals=3', 'primaryFight.windowSeconds=30', 'primaryFight.quietSeconds=120']), { removals: 3, windowMs: 30_000, quietMs: 120_000, maxQuietMs: 1_200_000 });
  t.is(policy(['primaryFight.removals=0']), false, 're-insert every time');
  for (const bad of ['primaryFight.removals=-1', 'primaryFight.windowSeconds=0', 'primaryFight.quietSeconds=soon', 'primaryFight.removal=3']) {
    const r = helmTemplate([bad]);
    t.not(r.code, 0, bad);
    t.regex(r.stderr, /primaryFight/, bad);
  }
});

test('bad chained/provider values are refused, naming the value; multus with chained: true is refused with what to change', (t) => {
  for (const [set, why] of [
    ['provider=calico', /provider/],
    ['chained=yes', /chained/],
    ['cni.provider=Multus', /provider/],
  ] as const) {
    const r = helmTemplate([set]);
    t.not(r.code, 0, `${set}: ${r.stdout}`);
    t.regex(r.stderr, why, set);
  }
  const r = helmTemplate(['provider=multus']);
  t.not(r.code, 0, r.stdout);
  t.regex(r.stderr, /provider: multus needs chained: false/);
  const both = helmTemplate(['chained=false', 'istioOwnedCNIConfig=true']);
  t.not(both.code, 0, both.stdout);
  t.regex(both.stderr, /chained: false and istioOwnedCNIConfig: true both ask for a config file of mesh-cni's own/);
});
