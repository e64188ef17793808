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
