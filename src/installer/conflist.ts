/**
 * Chaining, as pure functions on config text: remove every entry of ours and append the current one as the
 * last plugin; upgrade a lone .conf to a conflist. The primary's bytes are not ours: the edits are made on
 * the text (jsonc-parser finds each plugin's span; only our entry and the separator before it are written), so every other token stays as
 * written, an integer past 2^53 included (a parse and re-serialise turned 12345678901234567890 into
 * 12345678901234567000), with the file's indentation, line endings and final newline.
 */

import { findNodeAtLocation, getNodeValue, parseTree, type Node } from 'jsonc-parser';
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

/** The one indentation step of the file (what detectIndent finds), as text. */
function indentUnit(text: string): string {
  const indent = detectIndent(text);
  return typeof indent === 'string' ? indent : ' '.repeat(indent);
}

/** The whitespace before `offset` on its line, when only whitespace stands there. */
function lineIndentAt(text: string, offset: number): string | undefined {
  const start = text.lastIndexOf('\n', offset - 1) + 1;
  const before = text.slice(start, offset);
  return /^[ \t]*$/.test(before) ? before : undefined;
}

function pluginsNode(text: string): Node | undefined {
  const tree = parseTree(text);
  const node = tree && findNodeAtLocation(tree, ['plugins']);
  return node?.type === 'array' ? node : undefined;
}

/** `value` as JSON laid out like the file: its indentation step and line ending, each line after the first at `at`. */
function layOut(value: unknown, original: string, at: string): string {
  const unit = indentUnit(original);
  const eol = /\r\n/.test(original) ? '\r\n' : '\n';
  if (unit === '') return JSON.stringify(value);
  return JSON.stringify(value, null, unit).replace(/\n/g, `${eol}${at}`);
}

/** The text with every entry of ours taken out of `plugins`: each with the separator before it, nothing else touched. */
function withoutOurEntriesText(original: string): string {
  let text = original;
  for (;;) {
    const plugins = pluginsNode(text);
    const children = plugins?.children ?? [];
    let i = children.length - 1;
    while (i >= 0 && !isOurs(getNodeValue(children[i]!))) i--;
    if (!plugins || i < 0) return text;
    const node = children[i]!;
    let [from, to] = [node.offset, node.offset + node.length];
    if (i > 0) from = children[i - 1]!.offset + children[i - 1]!.length;
    else if (children.length > 1) to = children[1]!.offset;
    else [from, to] = [plugins.offset + 1, plugins.offset + plugins.length - 1];
    text = text.slice(0, from) + text.slice(to);
  }
}

/** The text of `original` (a conflist) with our entry as the last plugin, laid out as the plugins before it. */
export function insertIntoConflistText(original: string, entry: Json): string {
  const text = withoutOurEntriesText(original);
  const plugins = pluginsNode(text);
  if (!plugins) return serializeLike(text, withOurEntry(JSON.parse(text) as Json, entry));
  const eol = /\r\n/.test(original) ? '\r\n' : '\n';
  const multiline = indentUnit(original) !== '';
  const last = plugins.children?.at(-1);
  if (last) {
    const at = lineIndentAt(text, last.offset);
    const end = last.offset + last.length;
    const separator = multiline && at !== undefined ? `,${eol}${at}` : ',';
    return text.slice(0, end) + separator + layOut(entry, original, at ?? '') + text.slice(end);
  }
  // An empty list (invalid for the runtime, so never the active config; kept correct all the same).
  const open = plugins.offset + 1;
  const at = (lineIndentAt(text, plugins.offset) ?? '') + indentUnit(original);
  const inner = multiline ? `${eol}${at}${layOut(entry, original, at)}${eol}${at.slice(0, at.length - indentUnit(original).length)}` : layOut(entry, original, '');
  return text.slice(0, open) + inner + text.slice(plugins.offset + plugins.length - 1);
}

/**
 * The text of a conflist made from `original` (a lone conf), with our entry as the last plugin: the conf's
 * own text becomes the first plugin, every token as written, its lines indented to its place
 * (libcni's ConfListFromConf carries its name and version up).
 */
export function convertConfText(original: string, entry: Json): string {
  const conf = JSON.parse(original) as Json;
  const head: Json = {};
  if (conf.cniVersion !== undefined) head.cniVersion = conf.cniVersion;
  head.name = conf.name;
  // A placeholder no config holds, swapped for the conf's own text once the list is laid out.
  const placeholder = '\u0000mesh-cni: the conf';
  const shell = serializeLike(original, { ...head, plugins: [placeholder] });
  const quoted = JSON.stringify(placeholder);
  const at = lineIndentAt(shell, shell.indexOf(quoted)) ?? '';
  const eol = /\r\n/.test(original) ? '\r\n' : '\n';
  const own = original.trim().replace(/\r?\n/g, `${eol}${at}`);
  return insertIntoConflistText(shell.replace(quoted, () => own), entry);
}

export function removeFromConflistText(original: string): string {
  return withoutOurEntriesText(original);
}
