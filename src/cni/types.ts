/**
 * CNI spec 1.1.0 data shapes (https://github.com/containernetworking/cni/blob/main/SPEC.md), plus the 0.3.x/0.4.0
 * result shape we still accept as prevResult. Only what this plugin reads or writes is typed precisely.
 */

export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'STATUS' | 'GC';

/** The process-level request as a runtime delivers it: environment and stdin. */
export interface CniInvocation {
  env: Readonly<Record<string, string | undefined>>;
  stdin: Buffer;
}

/** What the plugin answers: the runtime only sees these three. */
export interface CniResponse {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface CniDns {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

export interface CniRoute {
  dst: string;
  gw?: string;
  /** 1.1.0 route extras; dropped when converting to 0.x */
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}

/** 1.0.0 / 1.1.0 */
export interface CniInterface100 {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
  socketPath?: string;
  pciID?: string;
}

export interface CniIpConfig100 {
  address: string;
  gateway?: string;
  interface?: number;
}

export interface CniResult100 {
  cniVersion: string;
  interfaces?: CniInterface100[];
  ips?: CniIpConfig100[];
  routes?: CniRoute[];
  dns?: CniDns;
}

/** 0.3.0 / 0.3.1 / 0.4.0 */
export interface CniInterface040 {
  name: string;
  mac?: string;
  sandbox?: string;
}

export interface CniIpConfig040 {
  version: '4' | '6';
  address: string;
  gateway?: string;
  interface?: number;
}

export interface CniResult040 {
  cniVersion: string;
  interfaces?: CniInterface040[];
  ips?: CniIpConfig040[];
  routes?: CniRoute[];
  dns?: CniDns;
}

export type CniResult = CniResult100 | CniResult040;

export interface CniErrorJson {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

export interface CniVersionJson {
  cniVersion: string;
  supportedVersions: string[];
}

/** One entry of GC's `cni.dev/valid-attachments`. */
export interface CniAttachment {
  containerID: string;
  ifname: string;
}
