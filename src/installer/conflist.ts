/**
 * Chaining, as pure functions on config text: remove every entry of ours and append the current one as the
 * last plugin; upgrade a lone .conf to a conflist. Output keeps the input's key order, indentation and final
 * newline; JSON offers no more to keep (comments do not exist, and numbers past 2^53 would lose precision,
 * which is one reason uninstall restores the recorded bytes rather than re-serialising when it can).
 */

import { isObject } from '../json';

export const PLUGIN_TYPE = 'mesh-cni';

export type Json = Record<string, unknown>;


export function isOurs(plugin: unknown): boolean {
  return isObject(plugin) && plugin.type === PLUGIN_TYPE;
}

/** The indentation the file uses (the first indented line's leading whitespace), two spaces if none. */
export function detectIndent(text: string): string | number {
  const match = /^[{[][ \t]*\r?\n([ \t]+)\S/m.exec(text);
  if (match && match[1]) return match[1];
  // A single-line file stays single-line.
  return /\n\s*\S/.test(text.trim()) ? 2 : 0;
}

export function serializeLike(original: string, value: unknown): string {
  const indent = detectIndent(original);
  let text = JSON.stringify(value, null, indent === 0 ? undefined : indent);
  if (/\r\n/.test(original)) text = text.replace(/\n/g, '\r\n');
  if (/\r?\n$/.test(original)) text += /\r\n$/.test(original) ? '\r\n' : '\n';
  return text;
}

export function hasOurEntry(list: Json): boolean {
  return Array.isArray(list.plugins) && list.plugins.some(isOurs);
}

/** Ours is present and it is the last plugin: the only position where it sees every other plugin's result. */
export function isChainedLast(list: Json): boolean {
  return Array.isArray(list.plugins) && list.plugins.length > 0 && isOurs(list.plugins[list.plugins.length - 1]) && list.plugins.filter(isOurs).length === 1;
}

/** libcni's ConfListFromConf: the conf becomes the single plugin of a list carrying its name and version. */
export function confToConflist(conf: Json): Json {
  const list: Json = {};
  if (conf.cniVersion !== undefined) list.cniVersion = conf.cniVersion;
  list.name = conf.name;
  list.plugins = [conf];
  return list;
}

export function withOurEntry(list: Json, entry: Json): Json {
  const plugins = Array.isArray(list.plugins) ? list.plugins.filter((p) => !isOurs(p)) : [];
  return { ...list, plugins: [...plugins, entry] };
}

export function withoutOurEntry(list: Json): Json {
  const plugins = Array.isArray(list.plugins) ? list.plugins.filter((p) => !isOurs(p)) : [];
  return { ...list, plugins };
}

/** The text of `original` (a conflist) with our entry as the last plugin. */
export function insertIntoConflistText(original: string, entry: Json): string {
  return serializeLike(original, withOurEntry(JSON.parse(original) as Json, entry));
}

/** The text of a conflist made from `original` (a lone conf), with our entry as the last plugin. */
export function convertConfText(original: string, entry: Json): string {
  return serializeLike(original, withOurEntry(confToConflist(JSON.parse(original) as Json), entry));
}

export function removeFromConflistText(original: string): string {
  return serializeLike(original, withoutOurEntry(JSON.parse(original) as Json));
}
