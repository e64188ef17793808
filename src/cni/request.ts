/**
 * The one parser every command starts with: CNI_* environment first (code 4), then stdin (5, 6), then the
 * netconf's name and cniVersion (7, 1), then our fields (2, 7) and prevResult (6). The order mirrors
 * containernetworking/cni's skel so a runtime sees the same code for the same mistake.
 */
import { CniCode, CniError } from '../errors';
import { jsonDepth, parseMeshNetConf, type MeshNetConf } from './netconf';
import type { CniAttachment, CniCommand, CniInvocation } from './types';
import {
  compareVersions,
  CURRENT_VERSION,
  decodePrevResult,
  isSupportedVersion,
  isVersionSyntax,
  SUPPORTED_VERSIONS,
  type SupportedVersion,
} from './version';
import { isObject } from '../json';

export const MAX_STDIN_BYTES = 1024 * 1024;
/** Far more than any plugin's result needs (ips, routes, dns: four or five levels). */
export const MAX_PREV_RESULT_DEPTH = 32;
/** Bounds on the CNI_* environment, the same in the shim's frame, the agent and the standalone engine. */
export const MAX_ENV_ENTRIES = 64;
export const MAX_ENV_BYTES = 64 * 1024;

/**
 * The CNI_* environment must fit whole: the shim refuses to shorten it (a dropped CNI_ARGS would make a
 * meshed pod look like none), and the standalone engine applies the same bound so the answer never depends
 * on whether the agent is running.
 */
function checkEnvBounds(env: Readonly<Record<string, string | undefined>>): void {
  let count = 0;
  let bytes = 0;
  // `NAME=value` counted in parts (one byte for '='): the same sum, without building each string.
  for (const name in env) {
    const value = env[name];
    if (value === undefined || !name.startsWith('CNI_')) continue;
    count++;
    bytes += Buffer.byteLength(name) + 1 + Buffer.byteLength(value);
  }
  if (count > MAX_ENV_ENTRIES || bytes > MAX_ENV_BYTES) {
    throw envError('the CNI_* environment is larger than mesh-cni accepts', `${count} CNI_* variables of ${bytes} bytes; at most ${MAX_ENV_ENTRIES} variables and ${MAX_ENV_BYTES} bytes are accepted`);
  }
}

const COMMANDS: readonly CniCommand[] = ['ADD', 'DEL', 'CHECK', 'VERSION', 'STATUS', 'GC'];

/** Variables each command needs (CNI_PATH is optional in the 1.1.0 spec for all but GC; we delegate nothing). */
const REQUIRED_ENV: Record<CniCommand, readonly string[]> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME'],
  GC: [],
  STATUS: [],
  VERSION: [],
};

/** Oldest netconf version that has the command at all. */
const MIN_VERSION_FOR: Partial<Record<CniCommand, SupportedVersion>> = { CHECK: '0.4.0', GC: '1.1.0', STATUS: '1.1.0' };

const NAME_CHARS = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

export interface KubernetesArgs {
  podName: string;
  podNamespace: string;
  podUid?: string;
  infraContainerId?: string;
}

export interface VersionRequest {
  command: 'VERSION';
  /** echoed in the answer, as the spec asks; CURRENT_VERSION when stdin carried none */
  cniVersion: string;
}

export interface NetworkRequest {
  command: Exclude<CniCommand, 'VERSION'>;
  cniVersion: SupportedVersion;
  containerId: string;
  netns: string;
  ifName: string;
  cniArgs: Readonly<Record<string, string>>;
  /** present only when both K8S_POD_NAME and K8S_POD_NAMESPACE are */
  kubernetes?: KubernetesArgs;
  netconf: MeshNetConf;
  prevResult?: { version: SupportedVersion; result: Record<string, unknown> };
  validAttachments?: CniAttachment[];
}

export type CniRequest = VersionRequest | NetworkRequest;

function envError(message: string, details?: string): CniError {
  return new CniError(CniCode.InvalidEnvironment, message, details);
}


function validateInterfaceName(name: string): void {
  // The kernel's limit is 15 bytes (IFNAMSIZ less the NUL), not 15 UTF-16 units.
  if (Buffer.byteLength(name, 'utf8') > 15) throw envError('CNI_IFNAME is too long', 'an interface name has at most 15 bytes');
  if (name === '.' || name === '..' || /[/:\s]/.test(name)) {
    throw envError('CNI_IFNAME is not a valid interface name', JSON.stringify(name));
  }
}

/** CNI_ARGS is `K=V;K=V`. A pair without '=' is a runtime bug worth refusing. */
export function parseCniArgs(value: string): Record<string, string> {
  const args: Record<string, string> = {};
  for (const pair of value.split(';')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw envError('CNI_ARGS is malformed', `expected KEY=VALUE pairs separated by ';', got ${JSON.stringify(pair)}`);
    args[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return args;
}

function kubernetesArgs(args: Record<string, string>): KubernetesArgs | undefined {
  const podName = args.K8S_POD_NAME;
  const podNamespace = args.K8S_POD_NAMESPACE;
  if (!podName || !podNamespace) return undefined;
  return { podName, podNamespace, podUid: args.K8S_POD_UID || undefined, infraContainerId: args.K8S_POD_INFRA_CONTAINER_ID || undefined };
}

function decodeStdin(stdin: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(stdin.toString('utf8'));
  } catch (err) {
    throw new CniError(CniCode.DecodingFailure, `cannot decode network config from stdin: ${(err as Error).message}`);
  }
  if (!isObject(value)) throw new CniError(CniCode.DecodingFailure, 'cannot decode network config from stdin: it is not a JSON object');
  return value;
}

function negotiateVersion(raw: Record<string, unknown>, command: CniCommand): SupportedVersion {
  const declared = raw.cniVersion;
  if (declared === undefined) {
    throw new CniError(CniCode.IncompatibleVersion, 'network config has no cniVersion', `supported: ${SUPPORTED_VERSIONS.join(', ')}`);
  }
  if (typeof declared !== 'string') throw new CniError(CniCode.DecodingFailure, 'cniVersion must be a string');
  if (!isSupportedVersion(declared)) {
    throw new CniError(CniCode.IncompatibleVersion, 'incompatible CNI versions', `config is ${JSON.stringify(declared)}, plugin supports ${SUPPORTED_VERSIONS.join(', ')}`);
  }
  const minimum = MIN_VERSION_FOR[command];
  if (minimum && compareVersions(declared, minimum) < 0) {
    throw new CniError(CniCode.IncompatibleVersion, `config version ${declared} does not allow ${command}`, `${command} needs cniVersion ${minimum} or later`);
  }
  return declared;
}

function parseValidAttachments(raw: Record<string, unknown>): CniAttachment[] {
  const list = raw['cni.dev/valid-attachments'];
  if (list === undefined) return [];
  const ok = Array.isArray(list) && list.every((a) => isObject(a) && typeof a.containerID === 'string' && typeof a.ifname === 'string');
  if (!ok) throw new CniError(CniCode.InvalidNetworkConfig, '"cni.dev/valid-attachments" must be a list of {containerID, ifname}');
  return (list as CniAttachment[]).map((a) => ({ containerID: a.containerID, ifname: a.ifname }));
}

function versionRequest(stdin: Buffer): VersionRequest {
  // skel ignores VERSION's stdin; we read it only to echo its cniVersion and never fail on it.
  try {
    const value: unknown = JSON.parse(stdin.toString('utf8'));
    if (isObject(value) && isVersionSyntax(value.cniVersion)) return { command: 'VERSION', cniVersion: value.cniVersion };
  } catch {
    // an empty or undecodable stdin is fine for VERSION
  }
  return { command: 'VERSION', cniVersion: CURRENT_VERSION };
}

export function parseRequest(invocation: CniInvocation): CniRequest {
  const env = invocation.env;
  const command = env.CNI_COMMAND ?? '';
  if (command === '') throw envError('required env variables [CNI_COMMAND] missing');
  if (!(COMMANDS as readonly string[]).includes(command)) throw envError(`unknown CNI_COMMAND: ${command}`, `expected one of ${COMMANDS.join(', ')}`);
  const cmd = command as CniCommand;
  checkEnvBounds(env);

  const missing = REQUIRED_ENV[cmd].filter((name) => !env[name]);
  if (missing.length > 0) throw envError(`required env variables [${missing.join(',')}] missing`);

  if (invocation.stdin.length > MAX_STDIN_BYTES) {
    throw new CniError(CniCode.IoFailure, `stdin is ${invocation.stdin.length} bytes, more than the ${MAX_STDIN_BYTES} accepted`);
  }
  if (cmd === 'VERSION') return versionRequest(invocation.stdin);

  const containerId = env.CNI_CONTAINERID ?? '';
  if (containerId !== '' && !NAME_CHARS.test(containerId)) throw envError('invalid characters in CNI_CONTAINERID', JSON.stringify(containerId));
  const ifName = env.CNI_IFNAME ?? '';
  if (ifName !== '') validateInterfaceName(ifName);
  const netns = env.CNI_NETNS ?? '';
  if (netns !== '' && !netns.startsWith('/')) throw envError('CNI_NETNS must be an absolute path', JSON.stringify(netns));
  const cniArgs = parseCniArgs(env.CNI_ARGS ?? '');

  const raw = decodeStdin(invocation.stdin);
  if (typeof raw.name !== 'string' || raw.name === '') throw new CniError(CniCode.InvalidNetworkConfig, 'missing network name');
  if (!NAME_CHARS.test(raw.name)) throw new CniError(CniCode.InvalidNetworkConfig, 'invalid characters found in network name', raw.name);
  const cniVersion = negotiateVersion(raw, cmd);
  const netconf = parseMeshNetConf(raw, cniVersion);
  // A result is a few levels deep; converting one nested 10^5 levels would overflow the stack (once 999).
  if (raw.prevResult !== undefined && raw.prevResult !== null && jsonDepth(raw.prevResult, MAX_PREV_RESULT_DEPTH) > MAX_PREV_RESULT_DEPTH) {
    throw new CniError(CniCode.DecodingFailure, `cannot decode prevResult: it is nested more than ${MAX_PREV_RESULT_DEPTH} levels deep`);
  }
  const prevResult = raw.prevResult === undefined || raw.prevResult === null ? undefined : decodePrevResult(raw.prevResult, cniVersion);

  return {
    command: cmd as NetworkRequest['command'],
    cniVersion,
    containerId,
    netns,
    ifName,
    cniArgs,
    kubernetes: kubernetesArgs(cniArgs),
    netconf,
    prevResult,
    validAttachments: cmd === 'GC' ? parseValidAttachments(raw) : undefined,
  };
}

/** The version an error answer should carry: the request's when it is readable and ours, else the newest. */
export function responseVersionOf(stdin: Buffer): string {
  try {
    const value: unknown = JSON.parse(stdin.toString('utf8'));
    if (isObject(value) && isSupportedVersion(value.cniVersion)) return value.cniVersion;
  } catch {
    // fall through to the newest version we speak
  }
  return CURRENT_VERSION;
}
