/**
 * The standalone engine is a directory (build/engine: mesh-cni.js, our modules, the ffi addons, and runtime/:
 * the Node.js it runs on, with its loader and libraries, for hosts without one), installed as
 * <cni-bin-dir>/mesh-cni.d. A directory cannot be renamed over another, so `mesh-cni.d` is a symlink to a
 * versioned sibling, `.mesh-cni.d-<digest>-<random>`, written completely before the link is swapped by
 * rename: the shim sees either the old engine or the new one, never a mix. The previous version is kept
 * until the next change, because a standalone engine that started from it resolves its lazy requires there.
 */
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, chmod, lstat, mkdir, open, readdir, readlink, rename, rm, symlink } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { InstallerError } from '../errors';
import type { WriteAction } from './atomic-file';

export const ENGINE_DIR_NAME = 'mesh-cni.d';
const VERSION_PREFIX = `.${ENGINE_DIR_NAME}-`;

async function* files(dir: string): AsyncGenerator<string> {
  for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* files(path);
    else if (entry.isFile()) yield path;
  }
}

/**
 * Content hashes by file identity. The engine carries its Node.js runtime (~100 MB), and every install pass
 * and readiness check digests the source and the installed tree: hashed once, a file is re-read only when
 * its inode, size, mtime or ctime changed (any write changes ctime, and ctime cannot be set back).
 */
const contentHashes = new Map<string, string>();

/**
 * Read through one reused 1 MiB buffer: the runtime's node binary is ~96 MB, and reading it whole (or as a
 * stream of fresh chunks) left the agent's RSS 35–95 MiB higher for good, in a process that then idles
 * (freed chunks stay with malloc, not the kernel).
 */
async function hashFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(1024 * 1024);
  const file = await open(path, 'r');
  try {
    for (;;) {
      const { bytesRead } = await file.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await file.close();
  }
  return hash.digest('hex');
}

async function contentHash(path: string): Promise<{ sha256: string; executable: boolean }> {
  const st = await lstat(path, { bigint: true });
  const key = `${path}\0${st.dev}\0${st.ino}\0${st.size}\0${st.mtimeNs}\0${st.ctimeNs}`;
  let sha256 = contentHashes.get(key);
  if (sha256 === undefined) {
    sha256 = await hashFile(path);
    if (contentHashes.size > 20_000) contentHashes.clear();
    contentHashes.set(key, sha256);
  }
  return { sha256, executable: (st.mode & 0o111n) !== 0n };
}

/** A digest of a tree: every file's relative path, executable bit and content. */
export async function treeDigest(dir: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const path of files(dir)) {
    const { sha256, executable } = await contentHash(path);
    hash.update(`${relative(dir, path)}\0${executable ? 'x' : '-'}\0`);
    hash.update(sha256);
    hash.update('\n');
  }
  return hash.digest('hex');
}

async function copyTree(from: string, to: string): Promise<void> {
  for await (const path of files(from)) {
    const dest = join(to, relative(from, path));
    await mkdir(join(dest, '..'), { recursive: true });
    await copyFile(path, dest);
    await chmod(dest, ((await lstat(path)).mode & 0o111) !== 0 ? 0o755 : 0o644);
  }
}

async function linkTarget(link: string): Promise<string | undefined> {
  try {
    return await readlink(link);
  } catch {
    return undefined;
  }
}

/** The versioned directories beside the link (ours by name). */
export async function engineVersions(binDir: string): Promise<string[]> {
  try {
    return (await readdir(binDir)).filter((n) => n.startsWith(VERSION_PREFIX)).map((n) => join(binDir, n));
  } catch {
    return [];
  }
}

/** Whether <binDir>/mesh-cni.d holds exactly the tree whose digest is `digest`. */
export async function engineInPlace(binDir: string, digest: string): Promise<boolean> {
  const target = await linkTarget(join(binDir, ENGINE_DIR_NAME));
  if (!target || !target.startsWith(`${VERSION_PREFIX}${digest.slice(0, 16)}-`)) return false;
  try {
    return (await treeDigest(join(binDir, target))) === digest;
  } catch {
    return false;
  }
}

/** Installs the engine directory `source` as <binDir>/mesh-cni.d when its content differs from what is there. */
export async function installEngineDir(source: string, binDir: string): Promise<WriteAction> {
  let digest: string;
  try {
    digest = await treeDigest(source);
  } catch {
    throw new InstallerError(`the engine to install, ${source}, is not a directory`, { hint: 'is the image built completely (npm run build runs scripts/build-engine.js)?' });
  }
  if (await engineInPlace(binDir, digest)) return 'unchanged';
  const link = join(binDir, ENGINE_DIR_NAME);
  const previous = await linkTarget(link);
  const name = `${VERSION_PREFIX}${digest.slice(0, 16)}-${randomBytes(4).toString('hex')}`;
  const version = join(binDir, name);
  const tempLink = join(binDir, `.${ENGINE_DIR_NAME}.link-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await copyTree(source, version);
    await symlink(name, tempLink);
    // A real directory in the link's place (not ours, or hand-made) cannot be replaced by rename.
    const st = await lstat(link).catch(() => undefined);
    if (st?.isDirectory()) await rm(link, { recursive: true, force: true });
    await rename(tempLink, link);
  } catch (err) {
    await rm(tempLink, { force: true });
    await rm(version, { recursive: true, force: true });
    throw err;
  }
  for (const old of await engineVersions(binDir)) {
    if (old !== version && old !== join(binDir, previous ?? '')) await rm(old, { recursive: true, force: true });
  }
  return 'written';
}

/** Everything of the engine directory: the link and every version. */
export async function removeEngineDir(binDir: string): Promise<void> {
  await rm(join(binDir, ENGINE_DIR_NAME), { recursive: true, force: true });
  for (const version of await engineVersions(binDir)) await rm(version, { recursive: true, force: true });
}
