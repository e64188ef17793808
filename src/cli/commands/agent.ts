/** `mesh-cni agent`: the long-running node agent of the DaemonSet. */
import type { Argv } from 'yargs';
import { MeshCniError } from '../../errors';
import { DEFAULT_HEALTH_PORT, startAgent } from '../../agent/agent';
import { runCommand } from '../output';
import { DEFAULT_FIGHT_POLICY, type FightPolicy } from '../../installer/fight';
import { ambientFromArgs, ambientOptions, checkHostProbe, installOptions, installSettings, nodeOptions, once, repairOptions, repairSettings, type AmbientArgs, type InstallArgs, type RepairArgs } from '../options';
import { DEFAULT_ZTUNNEL_SOCKET } from '../../agent/zds-server';

export const command = 'agent';
export const describe = "run the node agent: install the plugin, serve the shim, watch this node's pods, repair, health and metrics";

export function builder(y: Argv) {
  return y
    .options({
      ...nodeOptions,
      'health-port': { type: 'number', default: DEFAULT_HEALTH_PORT, describe: 'port of /healthz, /readyz and /metrics (0: any free port)' },
      'health-host': { type: 'string', default: '0.0.0.0', describe: 'address the health server binds' },
      kubernetes: { type: 'boolean', default: true, describe: "watch this node's pods through the API server (--no-kubernetes: annotations only from the runtime)" },
      install: { type: 'boolean', default: true, describe: "install the plugin into the node's CNI config and keep it there (--no-install: someone else does)" },
      'uninstall-on-exit': {
        type: 'string',
        choices: ['auto', 'always', 'never'],
        default: 'auto',
        // the flag was a boolean: --uninstall-on-exit / --no-uninstall-on-exit keep their meaning
        coerce: (v: unknown) => (v === true || v === 'true' || v === '' ? 'always' : v === false || v === 'false' ? 'never' : (v as 'auto' | 'always' | 'never')),
        describe:
          'on SIGTERM, take our entry and files back out: auto only when the DaemonSet (found from POD_NAMESPACE/POD_NAME) is gone, being deleted or no longer selects this node; otherwise they stay for the next agent',
      },
      'remove-not-ready-taint': {
        type: 'boolean',
        default: false,
        describe: 'once installed and ready, remove the cni.istio.io/not-ready taint from this node (needs install/optional/node-readiness-rbac.yaml)',
      },
      'fight-removals': {
        type: 'number',
        default: DEFAULT_FIGHT_POLICY.removals,
        describe: 'a primary CNI that removes our entry this many times within --fight-window-seconds is left alone: the agent stops re-inserting and turns not ready, saying which file and what to change (0: re-insert every time)',
      },
      'fight-window-seconds': { type: 'number', default: DEFAULT_FIGHT_POLICY.windowMs / 1000, describe: 'the window --fight-removals counts in' },
      'fight-quiet-seconds': {
        type: 'number',
        default: DEFAULT_FIGHT_POLICY.quietMs / 1000,
        describe: 'how long the agent leaves a fighting primary alone before it tries once more (doubled after each failed try, up to ten times this)',
      },
      ...installOptions,
      ...repairOptions,
      'resync-seconds': { type: 'number', default: 30, describe: 'how often the reconciler checks every pod on the node' },
      ...ambientOptions,
      'ztunnel-socket': { type: 'string', coerce: once('ztunnel-socket'), default: process.env.ZTUNNEL_SOCKET || DEFAULT_ZTUNNEL_SOCKET, describe: "where ztunnel connects (ZDS, SOCK_SEQPACKET, root only); Istio's ztunnel looks at /var/run/ztunnel/ztunnel.sock" },
    })
    .check((a) => checkHostProbe(a))
    .check((a) => (a.ambient && a.kubernetes === false ? '--ambient needs the Kubernetes API (its enablement follows pod and namespace labels)' : true))
    .example('$0 agent', 'in the DaemonSet pod (host dirs under /host)')
    .example('$0 agent --ambient', "also serve ambient pods: Istio's in-pod rules, and ztunnel on /var/run/ztunnel/ztunnel.sock")
    .example('$0 agent --no-kubernetes --cni-conf-dir /etc/cni/net.d --cni-bin-dir /opt/cni/bin --standalone-conf', 'on a node without Kubernetes or a primary CNI');
}

interface AgentArgs extends RepairArgs, Omit<InstallArgs, 'ambient'>, AmbientArgs {
  'ztunnel-socket': string;
  'host-netns'?: string;
  socket: string;
  'health-port': number;
  'health-host': string;
  kubernetes: boolean;
  kubeconfig?: string;
  'node-name'?: string;
  install: boolean;
  'uninstall-on-exit': 'auto' | 'always' | 'never';
  'remove-not-ready-taint': boolean;
  'resync-seconds': number;
  'fight-removals': number;
  'fight-window-seconds': number;
  'fight-quiet-seconds': number;
}

/** The agent's fight policy from its flags (src/installer/fight.ts); 0 removals turns it off. */
export function fightPolicy(args: Pick<AgentArgs, 'fight-removals' | 'fight-window-seconds' | 'fight-quiet-seconds'>): Partial<FightPolicy> | false {
  const seconds = ['fight-window-seconds', 'fight-quiet-seconds'] as const;
  for (const name of ['fight-removals', ...seconds] as const) {
    if (!Number.isFinite(args[name]) || args[name] < 0) throw new MeshCniError(`--${name} must be a number of at least 0, got ${args[name]}`);
  }
  if (args['fight-removals'] === 0) return false;
  const quietMs = args['fight-quiet-seconds'] * 1000;
  return { removals: Math.ceil(args['fight-removals']), windowMs: args['fight-window-seconds'] * 1000, quietMs, maxQuietMs: Math.max(quietMs * 10, quietMs) };
}

export async function handler(args: AgentArgs): Promise<void> {
  await runCommand('text', async () => {
    if (args['remove-not-ready-taint'] && !args.kubernetes) {
      throw new MeshCniError('--remove-not-ready-taint needs the Kubernetes API', { hint: 'drop --no-kubernetes, or the taint flag' });
    }
    if (args.kubernetes && !args['node-name']) {
      throw new MeshCniError('the agent needs to know its node to watch its pods', { hint: 'pass --node-name or set NODE_NAME (or run with --no-kubernetes)' });
    }
    const ambient = ambientFromArgs(args);
    const agent = await startAgent({
      socketPath: args.socket,
      stateDir: args['state-dir'],
      healthPort: args['health-port'],
      healthHost: args['health-host'],
      kubernetes: args.kubernetes ? { nodeName: args['node-name']!, kubeconfigPath: args.kubeconfig } : false,
      repair: args.kubernetes ? { ...repairSettings(args), resyncMs: args['resync-seconds'] * 1000 } : undefined,
      install: args.install ? installSettings({ ...args, kubernetes: args.kubernetes && !args.kubeconfig, ambient }) : undefined,
      ambient: ambient ? { decision: ambient, ztunnelSocket: args['ztunnel-socket'], procRoot: args['proc-root'], criSocket: args['cri-socket'], backend: args.backend, hostNetns: args['host-netns'] } : undefined,
      uninstallOnStop: args['uninstall-on-exit'] === 'auto' ? 'auto' : args['uninstall-on-exit'] === 'always',
      removeNotReadyTaint: args['remove-not-ready-taint'],
      fightPolicy: fightPolicy(args),
      self: process.env.POD_NAMESPACE && process.env.POD_NAME ? { podNamespace: process.env.POD_NAMESPACE, podName: process.env.POD_NAME } : undefined,
    });
    process.stdout.write(`mesh-cni agent ready: socket ${agent.socketPath}, health on port ${agent.healthPort}\n`);
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        process.stderr.write(`mesh-cni agent: ${signal}, stopping\n`);
        agent.stop().then(resolve, (err: unknown) => {
          process.stderr.write(`mesh-cni agent: stopping failed: ${String(err)}\n`);
          resolve();
        });
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
  });
}
