/**
 * koffi, the foreign function interface every native call of ours goes through (libc in ./native.ts,
 * posix_spawn in ./spawn.ts, libnftables), required on first use so that what never calls native code never
 * loads it. The standalone engine's bundle (scripts/build-engine.js) resolves `koffi` to its prebuilt addon
 * for the build machine's architecture, copied beside the bundle.
 */
export type Koffi = typeof import('koffi');

let loaded: Koffi | undefined;

export function koffi(): Koffi {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  return (loaded ??= require('koffi') as Koffi);
}

/** Linux's errno values and flags that more than one of our native calls needs (x86_64 and arm64 agree). */
export const EINTR = 4;
export const EAGAIN = 11;
/** O_CLOEXEC and SOCK_CLOEXEC: the same bit */
export const O_CLOEXEC = 0o2000000;
