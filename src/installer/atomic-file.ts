/**
 * Writes that a reader never sees half done: a temp file in the same directory (so rename stays on one
 * filesystem), fsync, rename over the target, fsync the directory. Temp names never end in .conf, .conflist
 * or .json, so the runtime never mistakes one for a network config.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, rename, rm, stat, chmod } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** What `op` gives, or `absent` when the path does not exist; any other error is thrown. */
async function unlessMissing<T>(op: () => Promise<T>, absent: T): Promise<T> {
  try {
    return await op();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return absent;
    throw err;
  }
}

/** The file's bytes, or undefined when it does not exist. */
export function readIfExists(path: string): Promise<Buffer | undefined> {
  return unlessMissing<Buffer | undefined>(() => readFile(path), undefined);
}

export function exists(path: string): Promise<boolean> {
  return unlessMissing(async () => {
    await stat(path);
    return true;
  }, false);
}

/** fsync of the directory holding `path`, so a rename in it survives a crash. */
export async function fsyncDirOf(path: string): Promise<void> {
  const handle = await open(dirname(path), constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** A temp file beside `path` holding `data` with exactly `mode`, synced: the first half of an atomic replace. */
export async function stageBeside(path: string, data: Buffer | string, mode: number): Promise<string> {
  const temp = join(dirname(path), `.${basename(path)}.mesh-cni-tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const handle = await open(temp, 'wx', mode);
  try {
    await handle.writeFile(data);
    // open()'s mode is filtered by the umask; the target's mode must be exactly what we asked for.
    await handle.chmod(mode);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(temp, { force: true });
    throw err;
  }
  await handle.close();
  return temp;
}

export async function writeFileAtomic(path: string, data: Buffer | string, mode: number): Promise<void> {
  const temp = await stageBeside(path, data, mode);
  try {
    await rename(temp, path);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  await fsyncDirOf(path);
}

export type WriteAction = 'written' | 'unchanged';

/**
 * Writes only when the content differs (by hash), so an unchanged file keeps its inode and mtime and a
 * watcher of the directory sees no event from us. A mode that drifted is corrected in place.
 */
export async function writeIfChanged(path: string, data: Buffer | string, mode: number): Promise<WriteAction> {
  const current = await readIfExists(path);
  if (current !== undefined && sha256(current) === sha256(data)) {
    const st = await stat(path);
    if ((st.mode & 0o7777) !== mode) await chmod(path, mode);
    return 'unchanged';
  }
  await writeFileAtomic(path, data, mode);
  return 'written';
}

/** A file's permission bits, or `fallback` when it cannot be stat'ed (it does not exist yet). */
export async function modeOf(path: string, fallback: number): Promise<number> {
  try {
    return (await stat(path)).mode & 0o7777;
  } catch {
    return fallback;
  }
}

export function removeIfExists(path: string): Promise<boolean> {
  return unlessMissing(async () => {
    await rm(path);
    return true;
  }, false);
}
