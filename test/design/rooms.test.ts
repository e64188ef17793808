/**
 * Static test (of the source text, like a golden test): the import rules of docs/design.md. Every relative
 * import in src/ is read; one from a room to a room it may not use fails, naming the file and the import.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from '../support/paths';

const SRC = path.join(REPO_ROOT, 'src');

/** The ground floor: every room may use these. */
const GROUND = ['errors', 'defaults', 'caches', 'json'];

/** What each room may import besides the ground floor ('*': any room below it). */
const ALLOWED: Record<string, readonly string[]> = {
  cni: [],
  mesh: [],
  state: [],
  netns: [],
  installer: [],
  kube: ['mesh'],
  redirect: ['netns', 'mesh'],
  repair: ['redirect', 'kube', 'netns', 'state', 'mesh'],
  standalone: ['cni', 'kube', 'mesh', 'netns', 'redirect', 'state'],
  agent: ['*'],
  cli: ['*'],
};

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

const roomOf = (file: string) => path.relative(SRC, file).split(path.sep)[0]!.replace(/\.ts$/, '');

test('design (static): every import in src/ stays within its room, goes down to a room it may use, or to the ground floor', (t) => {
  const files = sources(SRC);
  t.true(files.length > 50, `read ${files.length} files under src/`);
  const crossings: string[] = [];
  const refused: string[] = [];
  for (const file of files) {
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:from|import|require)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) {
      const target = path.resolve(path.dirname(file), m[1]!);
      const from = roomOf(file);
      const to = roomOf(target);
      if (from === to) continue;
      crossings.push(`${from} -> ${to}`);
      const allowed = [...GROUND, ...(ALLOWED[from] ?? [])];
      if (!allowed.includes('*') && !allowed.includes(to)) refused.push(`${path.relative(REPO_ROOT, file)} imports ${m[1]} (${from} -> ${to})`);
    }
  }
  t.true(crossings.length > 0, 'the scan finds the imports between rooms');
  t.deepEqual(refused, []);
});
