/**
 * Reading what the kernel holds: parse `iptables-save` output and reduce a rule to a canonical signature,
 * so a rule we rendered and the same rule printed back by iptables-save (which adds `-m tcp`, writes marks in
 * hex, spells out defaults) compare equal. Pure functions; the kernel tests prove the canonical form
 * against real read-back for every plan we can produce.
 */
import { BUILTIN_CHAINS, OUR_CHAINS, type Table } from '../constants';
import { OWNER_TAG_PREFIX } from './render';

export interface SavedRule {
  table: Table;
  chain: string;
  /** Everything after `-A CHAIN`. */
  spec: string;
}

export interface SavedState {
  /** Chains declared per table. */
  chains: Map<Table, Set<string>>;
  rules: SavedRule[];
}

export function parseSave(text: string): SavedState {
  const chains = new Map<Table, Set<string>>();
  const rules: SavedRule[] = [];
  let table: Table | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('*')) {
      table = line.slice(1).trim() as Table;
      if (!chains.has(table)) chains.set(table, new Set());
    } else if (table && line.startsWith(':')) {
      chains.get(table)!.add(line.slice(1).split(/\s+/)[0]);
    } else if (table && line.startsWith('-A ')) {
      const rest = line.slice(3);
      const space = rest.indexOf(' ');
      const chain = space < 0 ? rest : rest.slice(0, space);
      rules.push({ table, chain, spec: space < 0 ? '' : rest.slice(space + 1) });
    }
  }
  return { chains, rules };
}

const hexOrDec = (v: string) => (/^0x[0-9a-f]+$/i.test(v) ? String(parseInt(v, 16)) : v);

/**
 * A rule's canonical signature: its options as sorted groups (`! -d 127.0.0.1/32`, `--uid-owner 1337`),
 * without module loads (`-m tcp`), with numbers in decimal and the defaults iptables-save spells out removed.
 */
export function signature(spec: string): string {
  const tokens = spec.split(/\s+/).filter(Boolean);
  const groups: string[] = [];
  let current: string[] = [];
  const flush = () => {
    if (current.length > 0) groups.push(current.join(' '));
    current = [];
  };
  for (let i = 0; i < tokens.length; i++) {
    let tok = tokens[i];
    if (tok === '-m') {
      i++; // module loads carry no meaning of their own once their options are compared
      continue;
    }
    if (tok === '!' || tok.startsWith('-')) {
      if (!(tok.startsWith('-') && current[0] === '!' && current.length === 1)) flush();
      if (tok === '--to-port') tok = '--to-ports';
      if (tok === '--set-xmark') tok = '--set-mark';
      current.push(tok);
      continue;
    }
    if (current[current.length - 1] === '--comment') {
      // iptables-save quotes comments; we render them bare.
      current.push(tok.replace(/^"(.*)"$/, '$1'));
      continue;
    }
    const option = current[current.length - 1];
    if ((option === '-s' || option === '-d') && !tok.includes('/')) {
      // A host address as Istio writes it (`-s 169.254.7.127`); iptables-save adds the host prefix.
      current.push(`${tok}/${tok.includes(':') ? 128 : 32}`);
      continue;
    }
    // An option's value: decimal numbers, and drop the all-ones masks iptables-save prints by default.
    current.push(
      tok
        .split('/')
        .map(hexOrDec)
        .filter((part, idx) => !(idx > 0 && part === '4294967295'))
        .join('/'),
    );
  }
  flush();
  const defaults = new Set(['--on-ip 0.0.0.0', '--on-ip ::', '--nfmask 4294967295', '--ctmask 4294967295', '--mask 4294967295']);
  // The owner tag says who wrote a rule, not what it does: a tagged rule and the same rule written untagged
  // by an earlier release compare equal.
  return groups
    .filter((g) => !defaults.has(g) && !g.startsWith(`--comment ${OWNER_TAG_PREFIX}`))
    .sort()
    .join(' | ');
}

const isOurChain = (chain: string) => OUR_CHAINS.includes(chain);
const isBuiltin = (chain: string) => (BUILTIN_CHAINS as readonly string[]).includes(chain);

/** The target of a rule spec (`ISTIO_OUTPUT`, `RETURN`, `REDIRECT`, ...). */
export function targetOf(spec: string): string | undefined {
  const m = /(?:^|\s)-j\s+(\S+)/.exec(spec);
  return m?.[1];
}

/** Whether a rule carries our owner tag (`-m comment --comment mesh-cni/...`). */
export function hasOwnerTag(spec: string): boolean {
  return /(?:^|\s)--comment\s+"?mesh-cni\//.test(spec);
}

/**
 * Whether a saved rule belongs to us: every rule in one of our chains, and in a built-in chain every rule
 * with our owner tag. Rules written before the tag existed (`untagged` true: the family holds our chains
 * but not one tagged rule, so an earlier release programmed it) are recognised as before, by being a jump
 * into our chains or by shape (`ownedShapes`); this is kept for one release, so an upgrade can still
 * remove and replace what the previous one wrote. A netns we never programmed has none of our chains, so
 * there nothing untagged is ever taken for ours.
 */
export function isOurs(rule: SavedRule, ownedShapes: ReadonlySet<string>, untagged = false): boolean {
  if (isOurChain(rule.chain)) return true;
  if (!isBuiltin(rule.chain)) return false;
  if (hasOwnerTag(rule.spec)) return true;
  if (!untagged) return false;
  const target = targetOf(rule.spec);
  if (target && isOurChain(target)) return true;
  return ownedShapes.has(shapeKey(rule.table, rule.chain, rule.spec));
}

/** Whether a family's state is an earlier release's: our chains are there and no rule carries our tag. */
export function isUntaggedState(state: SavedState): boolean {
  const ourChains = [...state.chains.values()].some((chains) => [...chains].some(isOurChain));
  return ourChains && !state.rules.some((r) => isBuiltin(r.chain) && hasOwnerTag(r.spec));
}

/**
 * A rule's shape: its signature with interface names and owner ids wildcarded, so the built-in-chain rules
 * of any config (any excluded interface, any proxy uid) are recognised as ours, and only those.
 */
export function shapeKey(table: string, chain: string, spec: string): string {
  const sig = signature(spec)
    .replace(/(^|\| )(-[io]) \S+/g, '$1$2 *')
    .replace(/(--[ug]id-owner) \d+/g, '$1 *');
  return `${table}/${chain}: ${sig}`;
}
