/**
 * What the build runs once, in a throwaway process, to train the standalone engine's V8 code cache
 * (scripts/build-engine.js). V8 compiles a function only when it is first called, and a code cache made right
 * after compiling holds only the top level: every function a standalone ADD then runs (the decision, the plan,
 * the ffi packages' module bodies, the spawn) was compiled again on every request, about a fifth of its CPU.
 * A cache made after this run holds them too.
 *
 * It runs the standalone ADD's code, as far as it goes without a network namespace, on a sample meshed pod:
 * the dispatcher, the decision from runtime annotations, the plan and its rendering, the netns lock, the ffi
 * binding, the attachment record and the log line, and one program started and collected the way the restore
 * is. Nothing it does reaches a netns, the host's rules or a path outside `dir`: the one "netns" is this
 * process's UTS namespace file, a namespace file (so the lock opens, checks and flocks it as a pod's) of
 * another kind, which every setns(CLONE_NEWNET) refuses (EINVAL) before anything is entered.
 * Which inputs it runs does not matter for correctness, only for speed: the cache holds bytecode, never state.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run, setCollectMode } from '../netns';
import type { Family } from '../redirect/constants';
import { runCni } from '../cni/dispatch';
import { pluginDeps, type EngineApi } from './wiring';
import { flushRequestLogs } from '../cni/log';

const SIDECAR_STATUS = JSON.stringify({ initContainers: ['istio-validation'], containers: ['istio-proxy'], volumes: [], revision: 'default' });

export async function warmUpForCodeCache(dir: string): Promise<void> {
  // Everything it writes (log, state) goes under `dir`, which must be there: nothing is made elsewhere.
  if (!fs.statSync(dir).isDirectory()) throw new Error(`${dir} is not a directory`);
  const notANetns = '/proc/self/ns/uts';
  const netconf = {
    cniVersion: '1.0.0',
    name: 'k8s-pod-network',
    type: 'mesh-cni',
    backend: 'iptables',
    log_file: path.join(dir, 'mesh-cni.log'),
    state_dir: path.join(dir, 'state'),
    runtimeConfig: { 'io.kubernetes.cri.pod-annotations': { 'sidecar.istio.io/status': SIDECAR_STATUS } },
  };
  const stdin = Buffer.from(JSON.stringify(netconf));
  const env = {
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: 'warm-up',
    CNI_NETNS: notANetns,
    CNI_IFNAME: 'eth0',
    CNI_PATH: dir,
    CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=warm-up;K8S_POD_NAME=warm-up;K8S_POD_INFRA_CONTAINER_ID=warm-up;K8S_POD_UID=warm-up',
  };
  const classifyNetns = () => 'netns' as const;
  await runCni({ env: { CNI_COMMAND: 'VERSION' }, stdin: Buffer.from('{"cniVersion":"1.0.0"}') }, pluginDeps({ defaultLogFile: null }));

  const engine = await import('../redirect/engine');
  // The real engine up to the netns: plan, backend, lock, render; the restore's netns entry then refuses the UTS namespace.
  const families: Family[] = ['ipv4'];
  const untilTheNetns: EngineApi = { ...engine, applyRedirect: (o) => engine.applyRedirect({ ...o, families }) };
  await runCni({ env, stdin }, pluginDeps({ classifyNetns, engine: untilTheNetns }));
  // What follows a programmed netns: the attachment record and the ADD's log line.
  const programmed: EngineApi = { ...engine, applyRedirect: async () => ({ backend: 'iptables', backendReason: 'warm-up', families, rules: 0, durationMs: 0 }) };
  await runCni({ env, stdin }, pluginDeps({ classifyNetns, engine: programmed }));
  // A program started and collected as the standalone plugin starts the restore (posix_spawn, waited for in
  // poll(2); in this process's own netns).
  setCollectMode('blocking');
  await run(undefined, 'true', []).catch(() => undefined);
  await flushRequestLogs(1000);
}
