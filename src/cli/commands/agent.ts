/** `mesh-cni agent`: the long-running node agent of the DaemonSet. */
import type { Argv } from 'yargs';
import { MeshCniError } from '../../errors';
import { DEFAULT_HEALTH_PORT, DEFAULT_SOCKET, startAgent } from '../../agent/agent';
import { runCommand } from '../output';
import { repairOptions, repairSettings, type RepairArgs } from '../options';
import { DEFAULT_STATE_DIR } from '../../cni/attachments';

export const command = 'agent';
export const describe = 'run the node agent: serve the CNI shim, watch this node\'s pods, health and metrics';

export function builder(y: Argv) {
  return y
    .options({
      socket: { type: 'string', default: DEFAULT_SOCKET, describe: 'the UNIX socket the shim talks to (mode 0600, root only)' },
      'state-dir': { type: 'string', default: DEFAULT_STATE_DIR, describe: 'where the record of programmed attachments lives (shared with the standalone plugin)' },
      'health-port': { type: 'number', default: DEFAULT_HEALTH_PORT, describe: 'port of /healthz, /readyz and /metrics (0: any free port)' },
      'health-host': { type: 'string', default: '0.0.0.0', describe: 'address the health server binds' },
      kubernetes: { type: 'boolean', default: true, describe: 'watch this node\'s pods through the API server (--no-kubernetes: annotations only from the runtime)' },
      kubeconfig: { type: 'string', describe: 'a kubeconfig file; the in-cluster service account when absent' },
      'node-name': { type: 'string', default: process.env.NODE_NAME, describe: 'this node\'s name (default $NODE_NAME, from the downward API)' },
      ...repairOptions,
      'resync-seconds': { type: 'number', default: 30, describe: 'how often the reconciler checks every pod on the node' },
    })
    .example('$0 agent', 'in the DaemonSet pod')
    .example('$0 agent --no-kubernetes --health-port 0', 'on a standalone node, for the demo and tests');
}

interface AgentArgs extends RepairArgs {
  'resync-seconds': number;
  socket: string;
  'state-dir': string;
  'health-port': number;
  'health-host': string;
  kubernetes: boolean;
  kubeconfig?: string;
  'node-name'?: string;
}

export async function handler(args: AgentArgs): Promise<void> {
  await runCommand('text', async () => {
    if (args.kubernetes && !args['node-name']) {
      throw new MeshCniError('the agent needs to know its node to watch its pods', { hint: 'pass --node-name or set NODE_NAME (or run with --no-kubernetes)' });
    }
    const agent = await startAgent({
      socketPath: args.socket,
      stateDir: args['state-dir'],
      healthPort: args['health-port'],
      healthHost: args['health-host'],
      kubernetes: args.kubernetes ? { nodeName: args['node-name']!, kubeconfigPath: args.kubeconfig } : false,
      repair: args.kubernetes ? { ...repairSettings(args), resyncMs: args['resync-seconds'] * 1000 } : undefined,
    });
    process.stdout.write(`mesh-cni agent ready: socket ${agent.socketPath}, health on port ${agent.healthPort}\n`);
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        process.stderr.write(`mesh-cni agent: ${signal}, stopping\n`);
        agent.stop().then(resolve, resolve);
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
  });
}
