/**
 * Version negotiation and result conversion between the two result shapes we meet:
 * 0.3.0/0.3.1/0.4.0 (ips carry `version`, interfaces have no mtu/socketPath/pciID) and 1.0.0/1.1.0.
 * The conversion follows containernetworking/cni pkg/types/100 (convertFrom04x / convertTo04x).
 */
import { CniCode, CniError } from '../errors';
import type {
  CniDns,
  CniInterface040,
  CniInterface100,
  CniIpConfig040,
  CniIpConfig100,
  CniResult,
  CniResult040,
  CniResult100,
  CniRoute,
} from './types';
import { isObject } from '../json';

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type SupportedVersion = (typeof SUPPORTED_VERSIONS)[number];
export const CURRENT_VERSION: SupportedVersion = '1.1.0';

export function isSupportedVersion(v: unknown): v is SupportedVersion {
  return typeof v === 'string' && (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

const VERSION_SYNTAX = /^(\d+)\.(\d+)\.(\d+)$/;

export function isVersionSyntax(v: unknown): v is string {
  return typeof v === 'string' && VERSION_SYNTAX.test(v);
}

/** Negative, zero or positive like a sort comparator. Both must have version syntax. */
export function compareVersions(a: string, b: string): number {
  const pa = VERSION_SYNTAX.exec(a);
  const pb = VERSION_SYNTAX.exec(b);
  if (!pa || !pb) throw new Error(`not a version: ${pa ? b : a}`);
  for (let i = 1; i <= 3; i++) {
    const d = Number(pa[i]) - Number(pb[i]);
    if (d !== 0) return d;
  }
  return 0;
}

type ResultFamily = '0.x' | '1.x';

function familyOf(version: SupportedVersion): ResultFamily {
  return version.startsWith('0.') ? '0.x' : '1.x';
}


function decodeFailure(why: string): CniError {
  return new CniError(CniCode.DecodingFailure, `cannot decode prevResult: ${why}`);
}

function optionalArray(result: Record<string, unknown>, key: string): unknown[] | undefined {
  const value = result[key];
  if (value === undefined || value === null) return undefined;
  if (!Array.isArray(value)) throw decodeFailure(`"${key}" must be an array`);
  return value;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : undefined;
}

function withoutUndefined<T extends object>(o: T): T {
  for (const key of Object.keys(o) as (keyof T)[]) if (o[key] === undefined) delete o[key];
  return o;
}

function ipFamilyOfAddress(address: string): '4' | '6' {
  return address.includes(':') ? '6' : '4';
}

/**
 * Validates a prevResult and returns it with its version. A prevResult without cniVersion is read as the
 * netconf's version, which is what the runtime asked the previous plugin for.
 */
export function decodePrevResult(raw: unknown, netconfVersion: SupportedVersion): { version: SupportedVersion; result: Record<string, unknown> } {
  if (!isObject(raw)) throw decodeFailure('it is not a JSON object');
  const declared = raw.cniVersion ?? netconfVersion;
  if (!isSupportedVersion(declared)) {
    throw new CniError(CniCode.IncompatibleVersion, `prevResult has unsupported cniVersion ${JSON.stringify(declared)}`, `supported: ${SUPPORTED_VERSIONS.join(', ')}`);
  }
  const family = familyOf(declared);
  for (const [i, ip] of (optionalArray(raw, 'ips') ?? []).entries()) {
    if (!isObject(ip) || typeof ip.address !== 'string') throw decodeFailure(`ips[${i}] has no "address" string`);
    if (family === '0.x' && ip.version !== '4' && ip.version !== '6') {
      throw decodeFailure(`ips[${i}].version must be "4" or "6" in a ${declared} result`);
    }
    if (ip.interface !== undefined && num(ip.interface) === undefined) throw decodeFailure(`ips[${i}].interface must be a non-negative integer`);
  }
  for (const [i, intf] of (optionalArray(raw, 'interfaces') ?? []).entries()) {
    if (!isObject(intf) || typeof intf.name !== 'string') throw decodeFailure(`interfaces[${i}] has no "name" string`);
  }
  for (const [i, route] of (optionalArray(raw, 'routes') ?? []).entries()) {
    if (!isObject(route) || typeof route.dst !== 'string') throw decodeFailure(`routes[${i}] has no "dst" string`);
  }
  if (raw.dns !== undefined && !isObject(raw.dns)) throw decodeFailure('"dns" must be an object');
  return { version: declared, result: raw };
}

function copyDns(dns: unknown): CniDns | undefined {
  return isObject(dns) ? (structuredClone(dns) as CniDns) : undefined;
}

function routeTo040(route: Record<string, unknown>): CniRoute {
  return withoutUndefined({ dst: String(route.dst), gw: str(route.gw) });
}

function to040(result: Record<string, unknown>, toVersion: SupportedVersion): CniResult040 {
  const interfaces = optionalArray(result, 'interfaces')?.map(
    (i): CniInterface040 => {
      const intf = i as Record<string, unknown>;
      return withoutUndefined({ name: String(intf.name), mac: str(intf.mac), sandbox: str(intf.sandbox) });
    },
  );
  const ips = optionalArray(result, 'ips')?.map((i): CniIpConfig040 => {
    const ip = i as Record<string, unknown>;
    const address = String(ip.address);
    return withoutUndefined({ version: ipFamilyOfAddress(address), address, gateway: str(ip.gateway), interface: num(ip.interface) });
  });
  const routes = optionalArray(result, 'routes')?.map((r) => routeTo040(r as Record<string, unknown>));
  return withoutUndefined({ cniVersion: toVersion, interfaces, ips, routes, dns: copyDns(result.dns) });
}

function to100(result: Record<string, unknown>, toVersion: SupportedVersion): CniResult100 {
  const interfaces = optionalArray(result, 'interfaces')?.map((i): CniInterface100 => {
    const intf = i as Record<string, unknown>;
    return withoutUndefined({ name: String(intf.name), mac: str(intf.mac), sandbox: str(intf.sandbox) });
  });
  const ips = optionalArray(result, 'ips')?.map((i): CniIpConfig100 => {
    const ip = i as Record<string, unknown>;
    return withoutUndefined({ address: String(ip.address), gateway: str(ip.gateway), interface: num(ip.interface) });
  });
  const routes = optionalArray(result, 'routes')?.map((r) => structuredClone(r) as CniRoute);
  return withoutUndefined({ cniVersion: toVersion, interfaces, ips, routes, dns: copyDns(result.dns) });
}

/**
 * Converts a decoded result to `toVersion`. Within one family the result is passed through unchanged except
 * for its cniVersion; across families it is rebuilt field by field, as the spec's conversion rules say.
 */
export function convertResult(decoded: { version: SupportedVersion; result: Record<string, unknown> }, toVersion: SupportedVersion): CniResult {
  if (familyOf(decoded.version) === familyOf(toVersion)) {
    return { ...structuredClone(decoded.result), cniVersion: toVersion } as CniResult;
  }
  return familyOf(toVersion) === '0.x' ? to040(decoded.result, toVersion) : to100(decoded.result, toVersion);
}

/** What a chained ADD prints when nothing came before it. */
export function emptyResult(version: SupportedVersion): CniResult {
  return { cniVersion: version, dns: {} };
}
