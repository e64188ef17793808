/**
 * `mesh-cni status`: is this node set up, and is it working? The active CNI config and our entry in it, the
 * installed binaries against this CLI's and the agent's, the agent itself, the backend, the repair mode and
 * the pods. Every part that can be answered without the agent or the API is, and the rest says why not.
 */
import type { Argv } from 'yargs';
import { access, constants } from 'node:fs/promises';
import { join } from 'node:path';
import { BUNDLED_ENGINE, BUNDLED_SHIM, artifactSha256, buildInfo, packageVersion } from '../../installer/build-info';
import { callCniSocket } from '../../agent/shim-socket';
import { checkInstalled, describeHold, holdFilePath, installedPaths, pluginEntry, scanConfDir, type FightReport } from '../../installer';
import { readFile } from 'node:fs/promises';
import { chooseBackend, type BackendName } from '../../redirect/engine';
import { REPAIR_MODES, type RepairMode } from '../../repair/reconciler';
import {
  backendOption,
  excludeNamespacesOption, excludedNamespaces,
  installOptions,
  nodeOptions,
  netnsLookupOptions,
  type NodeArgs,
} from '../options';
import { EXIT, outputOption, printJson, printText, runCommand, table, textSafe, type Cell, type OutputFormat } from '../output';
import { connectKube } from '../kube-client';
import { countFindings, inspectNodePods, type PodCounts } from '../node-inspect';

const isExecutable = (path: string) => access(path, constants.X_OK).then(() => true, () => false);

export const command = 'status';
export const describe = 'the state of mesh-cni on this node: CNI config, installed binaries, agent, backend, repair mode, pods';

export function builder(y: Argv) {
  return y
    .options({
      ...nodeOptions,
      'cni-bin-dir': installOptions['cni-bin-dir'],
      'cni-conf-dir': installOptions['cni-conf-dir'],
      'cni-conf-file-name': installOptions['cni-conf-file-name'],
      'owned-cni-config': installOptions['owned-cni-config'],
      'owned-cni-config-file-name': installOptions['owned-cni-config-file-name'],
      chained: installOptions.chained,
      'health-port': {
        type: 'number',
        // In the agent's pod the DaemonSet sets HEALTH_PORT (from the ConfigMap): `kubectl exec ... mesh-cni status` then reads the agent too.
        default: /^\d+$/.test(process.env.HEALTH_PORT ?? '') ? Number(process.env.HEALTH_PORT) : undefined,
        describe: "the agent's health port: read /readyz and /metrics (repair mode, the agent's version; default $HEALTH_PORT)",
      },
      'health-host': { type: 'string', default: '127.0.0.1', describe: 'where the health port listens' },
      'repair-mode': { choices: REPAIR_MODES, describe: "the agent's repair mode, reported as given when its /metrics cannot be read" },
      ...excludeNamespacesOption,
      ...netnsLookupOptions,
      ...backendOption,
      ...outputOption,
    })
    .example('$0 status', 'in the agent pod (kubectl exec -n kube-system ds/mesh-cni -- mesh-cni status)')
    .example('$0 status --cni-conf-dir /etc/cni/net.d --cni-bin-dir /opt/cni/bin --kubeconfig /etc/kubernetes/kubelet.conf --health-port 8000', 'on the node itself')
    .example('$0 status -o json | jq .problems', 'only what is wrong');
}

type Args = NodeArgs & {
  'cni-bin-dir': string;
  'cni-conf-dir': string;
  'cni-conf-file-name'?: string;
  'owned-cni-config'?: boolean;
  'owned-cni-config-file-name'?: string;
  chained?: boolean;
  'health-port'?: number;
  'health-host': string;
  'repair-mode'?: RepairMode;
  'exclude-namespaces'?: string[];
  'proc-root': string; 'cri-socket': string;
  backend: BackendName;
  'host-netns'?: string;
  output: OutputFormat;
};

interface AgentInfo {
  version: string;
  shimSha256: string;
  engineSha256: string;
  repairMode: string;
  backend: string;
}

export interface StatusReport {
  node: string | null;
  cniConfig: {
    dir: string;
    activeConfig: string | null;
    entryInActiveConfig: boolean;
    skipped: Array<{ path: string; reason: string }>;
    /** with --owned-cni-config: our own conflist and the primary's file it copies (null: no primary, ours removed) */
    ownedConfig?: { path: string; primary: string | null; written: boolean };
  };
  /** the agent's hold on a primary CNI that keeps removing our entry (src/installer/fight.ts), as it wrote it in the state dir */
  fight: FightReport | null;
  binaries: Array<{ name: 'shim' | 'engine'; path: string; installedSha256: string | null; cliSha256: string | null; agentSha256: string | null; matchesCli: boolean; matchesAgent: boolean | null }>;
  versions: { cli: string; agent: string | null };
  agent: {
    socket: string;
    reachable: boolean;
    error: string | null;
    cniVersions: string[] | null;
    health: { url: string; reachable: boolean; ready: boolean | null; reasons: string[]; error: string | null } | null;
  };
  backend: { name: string; reason: string; via?: string };
  repairMode: { mode: string | null; source: 'agent' | 'flag' | 'unknown' };
  pods: ({ available: true; node: string } & PodCounts) | { available: false; reason: string };
  problems: string[];
}

async function probeSocket(socket: string): Promise<Pick<StatusReport['agent'], 'reachable' | 'error' | 'cniVersions'>> {
  try {
    const answer = await callCniSocket(socket, { env: { CNI_COMMAND: 'VERSION' }, stdin: Buffer.from('{"cniVersion":"1.0.0"}') }, 3000);
    const parsed = JSON.parse(answer.stdout) as { supportedVersions?: string[]; msg?: string };
    if (answer.exitCode !== 0) return { reachable: false, error: `VERSION failed: ${parsed.msg ?? answer.stdout}`, cniVersions: null };
    return { reachable: true, error: null, cniVersions: parsed.supportedVersions ?? [] };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return { reachable: false, error: code ? `${code} (${(err as Error).message})` : (err as Error).message, cniVersions: null };
  }
}

/** The hold the agent wrote, if one is in force (the file exists only while it lasts). */
async function readHold(stateDir: string): Promise<FightReport | null> {
  try {
    return JSON.parse(await readFile(holdFilePath(stateDir), 'utf8')) as FightReport;
  } catch {
    return null;
  }
}

async function fetchText(url: string): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(3000) });
  return { status: res.status, body: await res.text() };
}

/** The one `mesh_cni_agent_info{...} 1` line of the exposition text, as an object. */
export function parseAgentInfo(metrics: string): AgentInfo | undefined {
  const line = metrics.split('\n').find((l) => l.startsWith('mesh_cni_agent_info{'));
  if (!line) return undefined;
  const labels: Record<string, string> = {};
  for (const m of line.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]] = m[2];
  return { version: labels.version ?? '', shimSha256: labels.shim_sha256 ?? '', engineSha256: labels.engine_sha256 ?? '', repairMode: labels.repair_mode ?? '', backend: labels.backend ?? '' };
}

async function probeHealth(host: string, port: number): Promise<{ health: NonNullable<StatusReport['agent']['health']>; info?: AgentInfo }> {
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  try {
    const ready = await fetchText(`${url}/readyz`);
    const parsed = JSON.parse(ready.body) as { ready?: boolean; reasons?: string[] };
    const metrics = await fetchText(`${url}/metrics`).catch(() => ({ status: 0, body: '' }));
    return { health: { url, reachable: true, ready: parsed.ready ?? ready.status === 200, reasons: parsed.reasons ?? [], error: null }, info: parseAgentInfo(metrics.body) };
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause;
    return { health: { url, reachable: false, ready: null, reasons: [], error: cause?.code ?? (err as Error).message } };
  }
}

async function podCounts(args: Args): Promise<StatusReport['pods']> {
  const node = args['node-name'];
  if (!node) return { available: false, reason: 'no --node-name (or $NODE_NAME)' };
  try {
    const kube = await connectKube(args.kubeconfig);
    const inspected = await inspectNodePods(kube, {
      nodeName: node,
      stateDir: args['state-dir'],
      procRoot: args['proc-root'],
        criSocket: args['cri-socket'],
      backend: args.backend,
      excludeNamespaces: excludedNamespaces(args),
    });
    return { available: true, node, ...countFindings(inspected.map((i) => i.finding)) };
  } catch (err) {
    return { available: false, reason: (err as Error).message };
  }
}

export async function collectStatus(args: Args): Promise<StatusReport> {
  const problems: string[] = [];
  const install = {
    cniBinDir: args['cni-bin-dir'],
    cniConfDir: args['cni-conf-dir'],
    cniConfFileName: args['cni-conf-file-name'] || undefined,
    ownedConfig: args['owned-cni-config'] === true,
    ownedConfigFileName: args['owned-cni-config-file-name'] || undefined,
    chained: args.chained !== false,
    shimPath: BUNDLED_SHIM,
    enginePath: BUNDLED_ENGINE,
    pluginConfig: pluginEntry(),
    stateDir: args['state-dir'],
  };
  const [installed, scan, socket, backend, pods, fight] = await Promise.all([
    checkInstalled(install),
    scanConfDir(args['cni-conf-dir']),
    probeSocket(args.socket),
    chooseBackend({ backend: args.backend, hostNetns: args['host-netns'] }),
    podCounts(args),
    readHold(args['state-dir']),
  ]);
  const probe = args['health-port'] !== undefined ? await probeHealth(args['health-host'], args['health-port']) : undefined;
  const info = probe?.info;
  const cli = await buildInfo();
  const paths = installedPaths(install);

  const installedShas = { shim: (await artifactSha256(paths.shim)) ?? null, engine: (await artifactSha256(paths.engine)) ?? null };
  const binaries: StatusReport['binaries'] = (['shim', 'engine'] as const).map((name) => {
    const installedSha = installedShas[name];
    const cliSha = (name === 'shim' ? cli.shimSha256 : cli.engineSha256) ?? null;
    const agentSha = info ? (name === 'shim' ? info.shimSha256 : info.engineSha256) || null : null;
    return {
      name,
      path: name === 'shim' ? paths.shim : paths.engine,
      installedSha256: installedSha,
      cliSha256: cliSha,
      agentSha256: agentSha,
      matchesCli: installedSha !== null && installedSha === cliSha,
      matchesAgent: agentSha === null ? null : installedSha === agentSha,
    };
  });

  if (fight) problems.push(describeHold(fight));
  if (args.chained === false) {
    if (!installed.entryInActiveConfig) problems.push(`our own config (chained: false) ${installed.activeConfig ?? `named by --cni-conf-file-name ${args['cni-conf-file-name']}`} is missing or does not hold our entry`);
  } else if (!installed.activeConfig) problems.push(`no valid CNI config in ${args['cni-conf-dir']}: the runtime has no network for pods`);
  else if (installed.ownedConfig && installed.activeConfig !== installed.ownedConfig.path) problems.push(`the runtime reads ${installed.activeConfig} before our owned config ${installed.ownedConfig.path}`);
  else if (!installed.entryInActiveConfig) problems.push(`our entry is not the last plugin of the active config ${installed.activeConfig}`);
  if (installed.ownedConfig && !installed.ownedConfig.primary) problems.push(`owned config: no primary CNI config to copy in ${args['cni-conf-dir']}; ours is removed until there is one`);
  for (const b of binaries) {
    if (b.installedSha256 === null) problems.push(`the ${b.name} is not installed at ${b.path}`);
    else if (b.matchesAgent === false) problems.push(`the installed ${b.name} differs from the agent's`);
    else if (b.matchesAgent === null && !b.matchesCli) problems.push(`the installed ${b.name} differs from this CLI's`);
  }
  // The fallback on a host without Node.js runs on the runtime shipped in the engine dir (scripts/build-engine.js).
  if (installedShas.engine !== null && !(await isExecutable(join(paths.engine, 'runtime', 'ld.so')))) {
    problems.push(`the installed engine ${paths.engine} carries no Node.js runtime (runtime/): the standalone fallback needs node on the host's PATH`);
  }
  if (!socket.reachable) problems.push(`the agent does not answer on ${args.socket}: pods are handled by the standalone engine`);
  if (probe && !probe.health.reachable) problems.push(`the agent's health port ${probe.health.url} does not answer`);
  if (probe?.health.ready === false) problems.push(`the agent is not ready: ${probe.health.reasons.join('; ')}`);
  if (pods.available && pods.broken > 0) problems.push(`${pods.broken} meshed pod${pods.broken === 1 ? '' : 's'} with rules missing or wrong (mesh-cni pods)`);
  if (pods.available && pods.invalid > 0) problems.push(`${pods.invalid} pod${pods.invalid === 1 ? '' : 's'} with invalid annotations: every ADD for ${pods.invalid === 1 ? 'it' : 'them'} fails (mesh-cni pods)`);

  const repairMode: StatusReport['repairMode'] = info?.repairMode
    ? { mode: info.repairMode, source: 'agent' }
    : args['repair-mode']
      ? { mode: args['repair-mode'], source: 'flag' }
      : { mode: null, source: 'unknown' };

  return {
    node: args['node-name'] ?? null,
    cniConfig: {
      dir: args['cni-conf-dir'],
      activeConfig: installed.activeConfig ?? null,
      entryInActiveConfig: installed.entryInActiveConfig,
      skipped: scan.skipped,
      ...(installed.ownedConfig ? { ownedConfig: { path: installed.ownedConfig.path, primary: installed.ownedConfig.primary ?? null, written: installed.ownedConfig.written } } : {}),
    },
    fight,
    binaries,
    versions: { cli: packageVersion(), agent: info?.version ?? null },
    agent: { socket: args.socket, ...socket, health: probe?.health ?? null },
    backend: { name: backend.backend.name, reason: backend.reason, ...(backend.backend.describeVia ? { via: backend.backend.describeVia() } : {}) },
    repairMode,
    pods,
    problems,
  };
}

const short = (sha: string | null) => (sha ? sha.slice(0, 12) : '-');
const yes = (ok: boolean, text: string, badText: string): Cell => (ok ? { text, tone: 'ok' } : { text: badText, tone: 'bad' });

function text(report: StatusReport): string {
  // Paths and file names of the conf dir, the agent's and the API's words: printable before they are laid out.
  const r = textSafe(report);
  const rows: Cell[][] = [];
  rows.push(['node', r.node ?? '(unknown: pass --node-name)']);
  rows.push(['cni config', r.cniConfig.activeConfig ?? { text: `none in ${r.cniConfig.dir}`, tone: 'bad' }]);
  const owned = r.cniConfig.ownedConfig;
  if (owned) {
    const state: Cell = !owned.primary
      ? { text: `${owned.path}: removed, no primary config to copy`, tone: 'bad' }
      : owned.written
        ? `${owned.path}: the plugins of ${owned.primary}, then ours`
        : { text: `${owned.path}: not written yet (primary ${owned.primary})`, tone: 'bad' };
    rows.push(['owned config', state]);
  }
  rows.push(['our entry', r.cniConfig.activeConfig ? yes(r.cniConfig.entryInActiveConfig, 'last plugin of the active config', 'missing from the active config') : '-']);
  if (r.fight) rows.push(['primary fight', { text: `held since ${r.fight.since}, next try ${r.fight.until}: ${r.fight.advice}`, tone: 'bad' }]);
  for (const b of r.binaries) {
    const state: Cell =
      b.installedSha256 === null
        ? { text: `not installed at ${b.path}`, tone: 'bad' }
        : b.matchesAgent === false
          ? { text: `${short(b.installedSha256)} (agent has ${short(b.agentSha256)})`, tone: 'bad' }
          : b.matchesAgent === true
            ? { text: `${short(b.installedSha256)} (same as the agent's)`, tone: 'ok' }
            : b.matchesCli
              ? { text: `${short(b.installedSha256)} (same as this CLI's; agent's unknown)`, tone: 'ok' }
              : { text: `${short(b.installedSha256)} (this CLI has ${short(b.cliSha256)})`, tone: 'warn' };
    rows.push([b.name, state]);
  }
  rows.push(['version', `cli ${r.versions.cli}, agent ${r.versions.agent ?? 'unknown'}`]);
  rows.push(['agent', r.agent.reachable ? { text: `answers on ${r.agent.socket} (CNI ${r.agent.cniVersions?.join(', ')})`, tone: 'ok' } : { text: `not reachable on ${r.agent.socket}: ${r.agent.error}; the shim falls back to the standalone engine`, tone: 'bad' }]);
  if (r.agent.health) {
    const h = r.agent.health;
    rows.push(['agent health', !h.reachable ? { text: `${h.url} not reachable: ${h.error}`, tone: 'bad' } : h.ready ? { text: `ready (${h.url}/readyz)`, tone: 'ok' } : { text: `not ready: ${h.reasons.join('; ')}`, tone: 'bad' }]);
  }
  rows.push(['backend', `${r.backend.name} (${r.backend.reason})${r.backend.via ? `, via ${r.backend.via}` : ''}`]);
  rows.push(['repair mode', r.repairMode.mode ? `${r.repairMode.mode} (${r.repairMode.source === 'agent' ? "from the agent's /metrics" : 'as given with --repair-mode'})` : { text: 'unknown (pass --health-port to read it from the agent)', tone: 'dim' }]);
  const p = r.pods;
  rows.push([
    'pods',
    p.available
      ? { text: `${p.total} on ${p.node}: ${p.meshed} meshed (${p.healthy} healthy, ${p.broken} broken, ${p.unknown} unknown), ${p.skipped} skipped${p.invalid > 0 ? `, ${p.invalid} invalid` : ''}`, tone: p.broken > 0 || p.invalid > 0 ? 'bad' : undefined }
      : { text: `not counted: ${p.reason}`, tone: 'dim' },
  ]);
  let out = table(rows);
  out += r.problems.length === 0 ? '\nno problems found\n' : `\n${r.problems.length} problem${r.problems.length === 1 ? '' : 's'}:\n${r.problems.map((x) => `  - ${x}\n`).join('')}`;
  return out;
}

export async function handler(args: Args): Promise<void> {
  await runCommand(args.output, async () => {
    const report = await collectStatus(args);
    if (args.output === 'json') printJson(report);
    else printText(text(report));
    return report.problems.length === 0 ? EXIT.ok : EXIT.problem;
  });
}
