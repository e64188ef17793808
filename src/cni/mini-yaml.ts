/**
 * A deliberately small YAML reader for kubeconfig files, so the standalone ADD path loads no YAML library.
 * It reads block mappings and sequences (including kubectl's "key:\n- item" at the parent's indent), plain,
 * single- and double-quoted scalars, literal/folded block scalars, comments, and JSON-style flow values.
 * Anchors, aliases, tags and multiple documents are refused with a clear error rather than misread.
 */

export class MiniYamlError extends Error {
  constructor(message: string, readonly line: number) {
    super(`line ${line}: ${message}`);
    this.name = 'MiniYamlError';
  }
}

interface Line {
  indent: number;
  text: string;
  number: number;
}

function stripComment(text: string): string {
  // A '#' starts a comment at line start or after whitespace, outside quotes.
  let quote: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === quote) quote = undefined;
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if (c === '#' && (i === 0 || /\s/.test(text[i - 1] ?? ''))) {
      return text.slice(0, i).trimEnd();
    }
  }
  return text.trimEnd();
}

function scalar(raw: string, lineNumber: number): unknown {
  const text = raw.trim();
  if (text === '' || text === '~' || text === 'null' || text === 'Null' || text === 'NULL') return null;
  if (/^[&*!]/.test(text)) throw new MiniYamlError(`anchors, aliases and tags are not supported: ${text.slice(0, 20)}`, lineNumber);
  if (text.startsWith('"')) {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new MiniYamlError('unsupported double-quoted string', lineNumber);
    }
  }
  if (text.startsWith("'")) {
    if (!text.endsWith("'") || text.length < 2) throw new MiniYamlError('unterminated single-quoted string', lineNumber);
    return text.slice(1, -1).replace(/''/g, "'");
  }
  if (text.startsWith('{') || text.startsWith('[')) {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new MiniYamlError('flow collections must be JSON-compatible', lineNumber);
    }
  }
  if (/^(true|True|TRUE)$/.test(text)) return true;
  if (/^(false|False|FALSE)$/.test(text)) return false;
  if (/^-?\d+$/.test(text)) return Number(text);
  return text;
}

/** Splits "key: value" at the first ': ' (or trailing ':') outside quotes. */
function splitKey(text: string): { key: string; rest: string } | undefined {
  let quote: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === quote) quote = undefined;
    } else if ((c === '"' || c === "'") && i === 0) {
      quote = c;
    } else if (c === ':' && (i === text.length - 1 || text[i + 1] === ' ')) {
      const rawKey = text.slice(0, i).trim();
      const key = rawKey.startsWith('"') || rawKey.startsWith("'") ? String(scalar(rawKey, 0)) : rawKey;
      return { key, rest: text.slice(i + 1) };
    }
  }
  return undefined;
}

class Parser {
  private index = 0;
  constructor(private readonly lines: Line[], private readonly rawLines: string[]) {}

  parseDocument(): unknown {
    if (this.lines.length === 0) return null;
    const value = this.parseBlock(this.lines[0]!.indent);
    if (this.index < this.lines.length) throw new MiniYamlError('unexpected indentation', this.lines[this.index]!.number);
    return value;
  }

  private peek(): Line | undefined {
    return this.lines[this.index];
  }

  private parseBlock(indent: number): unknown {
    const first = this.peek();
    if (!first) return null;
    return first.text === '-' || first.text.startsWith('- ') ? this.parseSequence(indent) : this.parseMapping(indent);
  }

  private parseSequence(indent: number): unknown[] {
    const items: unknown[] = [];
    for (let line = this.peek(); line && line.indent === indent && (line.text === '-' || line.text.startsWith('- ')); line = this.peek()) {
      const rest = line.text.slice(1);
      const inner = rest.trimStart();
      if (inner === '') {
        this.index++;
        const next = this.peek();
        items.push(next && next.indent > indent ? this.parseBlock(next.indent) : null);
        continue;
      }
      const isNested = inner.startsWith('- ') || inner === '-' || (splitKey(inner) !== undefined && !/^["'[{]/.test(inner));
      if (isNested) {
        // "- key: value" opens a mapping whose keys sit where "key" starts.
        this.lines[this.index] = { indent: indent + 1 + (rest.length - inner.length), text: inner, number: line.number };
        items.push(this.parseBlock(indent + 1 + (rest.length - inner.length)));
      } else {
        this.index++;
        items.push(this.valueAfter(inner, indent, line.number));
      }
    }
    return items;
  }

  private parseMapping(indent: number): Record<string, unknown> {
    const map: Record<string, unknown> = {};
    for (let line = this.peek(); line && line.indent === indent; line = this.peek()) {
      if (line.text.startsWith('- ') || line.text === '-') break;
      const pair = splitKey(line.text);
      if (!pair) throw new MiniYamlError(`expected "key: value", got ${JSON.stringify(line.text.slice(0, 40))}`, line.number);
      this.index++;
      const rest = pair.rest.trim();
      if (rest === '') {
        const next = this.peek();
        if (next && next.indent > indent) map[pair.key] = this.parseBlock(next.indent);
        else if (next && next.indent === indent && (next.text.startsWith('- ') || next.text === '-')) map[pair.key] = this.parseSequence(indent);
        else map[pair.key] = null;
      } else {
        map[pair.key] = this.valueAfter(rest, indent, line.number);
      }
    }
    return map;
  }

  private valueAfter(text: string, indent: number, lineNumber: number): unknown {
    if (/^[|>][-+]?$/.test(text)) return this.blockScalar(text, indent, lineNumber);
    return scalar(text, lineNumber);
  }

  /** Literal (|) and folded (>) scalars: the raw, uncommented lines more indented than the key. */
  private blockScalar(header: string, indent: number, lineNumber: number): string {
    const body: string[] = [];
    let blockIndent: number | undefined;
    let raw = lineNumber; // 1-based number of the header line == index of the next raw line
    while (raw < this.rawLines.length) {
      const text = this.rawLines[raw]!;
      const lineIndent = text.length - text.trimStart().length;
      if (text.trim() !== '' && lineIndent <= indent) break;
      if (text.trim() !== '') blockIndent ??= lineIndent;
      body.push(text.trim() === '' ? '' : text.slice(blockIndent ?? lineIndent));
      raw++;
    }
    while (this.index < this.lines.length && this.lines[this.index]!.number <= raw) this.index++;
    while (body.length > 0 && body[body.length - 1] === '') body.pop();
    const joined = header.startsWith('>') ? body.join(' ').replace(/ ?\n ?/g, '\n') : body.join('\n');
    return header.endsWith('-') ? joined : `${joined}\n`;
  }
}

export function parseMiniYaml(text: string): unknown {
  const trimmed = text.trimStart();
  if (trimmed.startsWith('{')) return JSON.parse(trimmed) as unknown;
  const rawLines = text.replace(/\r\n/g, '\n').split('\n');
  const lines: Line[] = [];
  rawLines.forEach((raw, i) => {
    if (raw.includes('\t') && /^\s*\t/.test(raw)) throw new MiniYamlError('tabs are not allowed for indentation', i + 1);
    const content = stripComment(raw);
    if (content.trim() === '') return;
    if (i === 0 && content.trim() === '---') return;
    if (content.trim() === '---' || content.trim() === '...') throw new MiniYamlError('multiple documents are not supported', i + 1);
    lines.push({ indent: content.length - content.trimStart().length, text: content.trim(), number: i + 1 });
  });
  return new Parser(lines, rawLines).parseDocument();
}
