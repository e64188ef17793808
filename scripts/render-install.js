#!/usr/bin/env node
'use strict';
/*
 * install/, the plain-YAML path (`kubectl apply -f install/`), is rendered from the Helm chart, charts/mesh-cni/,
 * so the two never drift apart: the default values give 10-rbac.yaml, 20-configmap.yaml and 30-daemonset.yaml;
 * the values that need more RBAC give each file of install/optional/. 00-namespace.yaml is written by hand:
 * a chart does not create its release's namespace (`helm install --create-namespace` does).
 *
 *   node scripts/render-install.js           rewrite install/ from the chart
 *   node scripts/render-install.js --check   exit 1 naming each file that differs (test/chart/chart.test.ts)
 *
 * helm is the one scripts/setup-node-deps.sh unpacks into $MESH_CNI_CACHE/bin (`--helm-only` does just that),
 * or $HELM.
 */
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const REPO = path.resolve(__dirname, '..');
const CHART = path.join(REPO, 'charts/mesh-cni');
const RELEASE = 'mesh-cni';
const NAMESPACE = 'mesh-cni-system';

function helmPath(env = process.env) {
  return env.HELM || path.join(env.MESH_CNI_CACHE || '/var/cache/mesh-cni', 'bin/helm');
}

/** install/<file> ← the templates it holds and the values they are rendered with. */
const FILES = [
  { file: '10-rbac.yaml', templates: ['rbac.yaml'], set: [] },
  { file: '20-configmap.yaml', templates: ['configmap.yaml'], set: [] },
  { file: '30-daemonset.yaml', templates: ['daemonset.yaml'], set: [] },
  { file: 'optional/repair-label-rbac.yaml', templates: ['repair-rbac.yaml'], set: ['repair.repairPods=false', 'repair.labelPods=true'] },
  { file: 'optional/repair-delete-rbac.yaml', templates: ['repair-rbac.yaml'], set: ['repair.repairPods=false', 'repair.deletePods=true'] },
  { file: 'optional/node-readiness-rbac.yaml', templates: ['node-readiness-rbac.yaml'], set: ['removeNotReadyTaint=true'] },
  { file: 'optional/ambient-rbac.yaml', templates: ['ambient-rbac.yaml'], set: ['ambient.enabled=true'] },
];

function header(set) {
  const values = set.length === 0 ? 'its default values' : `--set ${set.join(',')}`;
  return (
    `# Rendered from charts/mesh-cni (${values}) by scripts/render-install.js: change the chart and rerun the\n` +
    '# script; a test fails while this file and the chart differ.\n'
  );
}

function helmTemplate(helm, set, templates) {
  const args = ['template', RELEASE, CHART, '--namespace', NAMESPACE];
  for (const s of set) args.push('--set', s);
  for (const t of templates) args.push('--show-only', `templates/${t}`);
  const r = spawnSync(helm, args, { encoding: 'utf8' });
  if (r.error) throw new Error(`${helm} could not run (${r.error.message}): run scripts/setup-node-deps.sh --helm-only`);
  if (r.status !== 0) throw new Error(`helm ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** Every generated file of install/ (path relative to install/ → its content). */
function renderInstall(helm = helmPath()) {
  const out = new Map();
  for (const f of FILES) out.set(f.file, header(f.set) + helmTemplate(helm, f.set, f.templates));
  return out;
}

/** Files of install/ that differ from the chart's rendering, with what differs. */
function differences(rendered, installDir = path.join(REPO, 'install')) {
  const found = [];
  for (const [file, text] of rendered) {
    const p = path.join(installDir, file);
    if (!fs.existsSync(p)) found.push(`${file}: missing`);
    else if (fs.readFileSync(p, 'utf8') !== text) found.push(`${file}: differs from the chart's rendering`);
  }
  return found;
}

module.exports = { renderInstall, differences, helmPath, FILES, CHART, RELEASE, NAMESPACE };

if (require.main === module) {
  const rendered = renderInstall();
  if (process.argv.includes('--check')) {
    const found = differences(rendered);
    if (found.length > 0) {
      process.stderr.write(`install/ is not the chart's rendering:\n  ${found.join('\n  ')}\nrun node scripts/render-install.js\n`);
      process.exit(1);
    }
  } else {
    for (const [file, text] of rendered) {
      const p = path.join(REPO, 'install', file);
      fs.mkdirSync(path.dirname(p), { recursive: true });
      fs.writeFileSync(p, text);
    }
    process.stdout.write(`install/: ${[...rendered.keys()].join(', ')} rendered from charts/mesh-cni\n`);
  }
}
