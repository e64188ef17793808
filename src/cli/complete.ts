/**
 * What `<TAB>` completes beyond commands, flags and option choices (yargs completes those, `--backend` and
 * `--repair-mode` included, from their `choices`): this node's pods for `explain <pod>` and `--pod`, their
 * namespaces for `-n`/`--namespace`, and the cluster's services for `--service` (as istioctl completes
 * namespaces, pods and services). Pod names come from the agent's pod cache when it answers on its health
 * port (loopback, `/pods`), else from the API server; services from the API server (connected as kubectl
 * does: --kubeconfig, $KUBECONFIG, the service account). Each source is bounded by a short timeout, and a
 * failure completes nothing and prints nothing: a completion must never write an error into the person's
 * prompt.
 */
import * as http from 'node:http';
import { DEFAULT_HEALTH_PORT } from '../defaults';
import { printable } from './output';

export interface PodName {
  namespace: string;
  name: string;
}

/** Bounds on each source: a TAB that hangs is worse than one that completes nothing. */
export const AGENT_TIMEOUT_MS = 500;
export const API_TIMEOUT_MS = 2_000;

export type Wanted = 'pod' | 'namespace' | 'service' | undefined;

/** Options whose next word is their value (never a pod). */
const VALUE_OPTIONS = /^(--(kubeconfig|node-name|state-dir|socket|proc-root|cri-socket|backend|host-netns|output|exclude-namespaces|netns|pod|namespace|service|annotation)|-[ona])$/;

/** The words of a completion request: what the shell passed after `--get-yargs-completions`. */
export function completionWords(argv: readonly string[]): string[] | undefined {
  const at = argv.indexOf('--get-yargs-completions');
  return at < 0 ? undefined : argv.slice(at + 1);
}

/** What the word being completed (the last) is, from the words before it. */
export function wantedWord(words: readonly string[]): Wanted {
  const current = words[words.length - 1] ?? '';
  const previous = words[words.length - 2] ?? '';
  if (current.startsWith('-')) return undefined;
  if (previous === '--pod') return 'pod';
  if (previous === '--service') return 'service';
  if (previous === '-n' || previous === '--namespace') return 'namespace';
  // `explain <pod>`: no word other than options and their values between the command and this one.
  const at = words.indexOf('explain');
  if (at < 0 || at === words.length - 1) return undefined;
  for (let i = at + 1; i < words.length - 1; i++) {
    if (VALUE_OPTIONS.test(words[i])) i++;
    else if (!words[i].startsWith('-')) return undefined;
  }
  return VALUE_OPTIONS.test(previous) ? undefined : 'pod';
}

/** `--NAME VALUE` or `--NAME=VALUE` among the words; the last one given. */
export function optionValue(words: readonly string[], name: string): string | undefined {
  let value: string | undefined;
  words.forEach((w, i) => {
    if (w === `--${name}` && i + 1 < words.length - 1) value = words[i + 1];
    else if (w.startsWith(`--${name}=`)) value = w.slice(name.length + 3);
  });
  return value;
}

/** GET /pods of the agent's health server: the pods its watch cache holds (this node's). */
export function podsFromAgent(port: number, timeoutMs = AGENT_TIMEOUT_MS): Promise<PodName[] | undefined> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/pods', timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        if (res.statusCode !== 200) return resolve(undefined);
        try {
          const parsed = JSON.parse(body) as { pods?: unknown };
          resolve(Array.isArray(parsed.pods) ? parsed.pods.filter(isPodName) : undefined);
        } catch {
          resolve(undefined);
        }
      });
      res.on('error', () => resolve(undefined));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

function isPodName(v: unknown): v is PodName {
  return typeof (v as PodName)?.namespace === 'string' && typeof (v as PodName)?.name === 'string';
}

/** The API's pods of this node (all pods when no node name is known), within API_TIMEOUT_MS. */
export async function podsFromApi(kubeconfig: string | undefined, nodeName: string | undefined): Promise<PodName[] | undefined> {
  try {
    const { connectKube } = await import('./kube-client');
    const { listNodePods } = await import('../kube/node-pods');
    const pods = await listNodePods((await connectKube(kubeconfig)).core, nodeName, { timeoutMs: API_TIMEOUT_MS });
    return pods.map((p) => ({ namespace: p.metadata?.namespace ?? '', name: p.metadata?.name ?? '' }));
  } catch {
    return undefined;
  }
}

export interface CompletionSources {
  kubeconfig?: string;
  nodeName?: string;
  healthPort: number;
}

/** The agent first, then the API; undefined from both completes nothing. */
export async function nodePodNames(s: CompletionSources): Promise<PodName[]> {
  return (await podsFromAgent(s.healthPort)) ?? (await podsFromApi(s.kubeconfig, s.nodeName)) ?? [];
}

/** The API's services, every namespace's, within API_TIMEOUT_MS. */
export async function servicesFromApi(kubeconfig: string | undefined): Promise<PodName[] | undefined> {
  try {
    const { connectKube, listServices } = await import('./kube-client');
    return await listServices(await connectKube(kubeconfig), API_TIMEOUT_MS);
  } catch {
    return undefined;
  }
}

/** NAMESPACE/NAME for pods and services, the namespace alone for namespaces. */
export function wordsFor(wanted: Exclude<Wanted, undefined>, pods: readonly PodName[], current: string): string[] {
  const words = wanted === 'namespace' ? pods.map((p) => p.namespace) : pods.map((p) => `${p.namespace}/${p.name}`);
  // A name with a control character is no valid Kubernetes name (the agent's cache could still hand one): it is
  // never offered, so nothing but names reaches the shell's line or its list of candidates.
  return [...new Set(words)].filter((w) => w.startsWith(current) && printable(w) === w).sort();
}

/**
 * For a completion request whose last word is a pod or a namespace, this node's pod names; for a service, the
 * cluster's services; undefined for any other request (no source is asked). Never rejects.
 */
export async function fetchCompletionNames(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<PodName[] | undefined> {
  const words = completionWords(argv);
  const wanted = words && wantedWord(words);
  if (!words || !wanted) return undefined;
  if (wanted === 'service') return (await servicesFromApi(optionValue(words, 'kubeconfig'))) ?? [];
  const healthPort = Number(env.HEALTH_PORT) || DEFAULT_HEALTH_PORT;
  return nodePodNames({ kubeconfig: optionValue(words, 'kubeconfig'), nodeName: optionValue(words, 'node-name') ?? env.NODE_NAME, healthPort }).catch(() => []);
}

type Defaults = (onCompleted?: (err: Error | null, completions: string[] | undefined) => void) => void;

/**
 * yargs' fallback-style completion function (four parameters, answered at once): the fetched pod, namespace
 * or service words where they are wanted, yargs' own completions everywhere else.
 */
export function clusterCompletion(argv: readonly string[], names: PodName[] | undefined) {
  return (current: string, _argv: unknown, defaults: Defaults, done: (completions: string[]) => void): void => {
    const words = completionWords(argv) ?? [];
    const wanted = wantedWord(words);
    if (wanted && names) return done(wordsFor(wanted, names, current));
    defaults((_err, completions) => done(completions ?? []));
  };
}
