/**
 * The CLI in a real terminal (tmux): bash completion from `mesh-cni completion` (commands, flags, option
 * values, and this node's pods and namespaces from a real kube-apiserver or the agent's cache), and colour on a
 * TTY only, never piped, never with NO_COLOR. Each test runs its own tmux server (-L, a socket of its own), killed
 * in teardown, so a person's tmux sessions are never touched.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startAgent } from '../../src/agent/agent';
import { CLI } from '../support/paths';
import { freePort, startKube } from '../support/kube';
import { testTempDir } from '../support/tmp';

interface Term {
  send(...keys: string[]): void;
  /** The pane's text; with `escapes`, tmux's -e: colours as ANSI escape sequences. */
  capture(escapes?: boolean): string;
  waitFor(pattern: RegExp, timeoutMs?: number, escapes?: boolean): Promise<string>;
}

function tmux(socket: string, args: string[]): string {
  const r = spawnSync('tmux', ['-L', socket, ...args], { encoding: 'utf8' });
  if (r.error) throw new Error(`tmux could not run: ${r.error.message}; install the tmux package (apt-get install -y tmux)`);
  if (r.status !== 0) throw new Error(`tmux ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** A bash in a 200x50 tmux pane with `mesh-cni` on PATH (a wrapper around the built CLI); `env` is added. */
function terminal(t: ExecutionContext, env: Record<string, string> = {}): Term {
  const dir = testTempDir(t, 'tmux');
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'mesh-cni'), `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`, { mode: 0o755 });
  const socket = `mcni-${process.pid}-${path.basename(dir)}`;
  let shellPid: number | undefined;
  // Registered after testTempDir's, so it runs first (ava runs teardowns last in, first out).
  t.teardown(async () => {
    spawnSync('tmux', ['-L', socket, 'kill-server']);
    // The shell exits after kill-server returns; its directory is removed only once it is gone.
    for (let i = 0; shellPid && fs.existsSync(`/proc/${shellPid}`) && i < 50; i++) await new Promise((r) => setTimeout(r, 100));
    // kill-server leaves the socket file behind.
    fs.rmSync(path.join(process.env.TMUX_TMPDIR ?? '/tmp', `tmux-${process.getuid?.() ?? 0}`, socket), { force: true });
  });
  // A clean environment: no rc files, no NO_COLOR from whoever runs the tests, a known prompt.
  tmux(socket, [
    'new-session', '-d', '-s', 'cli', '-x', '200', '-y', '50',
    'env', '-i', `PATH=${bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`, 'TERM=xterm-256color', `HOME=${dir}`, 'PS1=$ ', 'HISTFILE=',
    ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
    'bash', '--norc', '--noprofile',
  ]);
  shellPid = Number(tmux(socket, ['display-message', '-p', '-t', 'cli', '#{pane_pid}']).trim()) || undefined;
  const term: Term = {
    send: (...keys) => void tmux(socket, ['send-keys', '-t', 'cli', ...keys]),
    capture: (escapes = false) => tmux(socket, ['capture-pane', '-p', '-t', 'cli', ...(escapes ? ['-e'] : [])]),
    async waitFor(pattern, timeoutMs = 15_000, escapes = false) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const text = term.capture(escapes);
        if (pattern.test(text)) return text;
        if (Date.now() > deadline) throw new Error(`the terminal never showed ${pattern}:\n${text}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
  };
  return term;
}

const ESC = '\x1b[';

test.serial('bash completion: source the script, type `mesh-cni ex<TAB>`, get `explain`', async (t) => {
  const term = terminal(t);
  term.send('source <(mesh-cni completion --shell bash) && echo sourced', 'Enter');
  await term.waitFor(/^sourced$/m);
  term.send('clear', 'Enter');
  await term.waitFor(/^\$ ?$/m);
  term.send('mesh-cni ex', 'Tab');
  // capture-pane drops trailing blanks: the completed word's space is not visible.
  const screen = await term.waitFor(/^\$ mesh-cni explain\s*$/m);
  t.regex(screen, /^\$ mesh-cni explain\s*$/m);
  // Options complete too, from the command's own builder.
  term.send('C-u', 'mesh-cni pods --name', 'Tab');
  t.regex(await term.waitFor(/mesh-cni pods --namespace/), /--namespace/);
  term.send('C-u');
  const zsh = spawnSync(process.execPath, [CLI, 'completion', '--shell', 'zsh'], { encoding: 'utf8' });
  t.is(zsh.status, 0);
  t.regex(zsh.stdout, /^#compdef mesh-cni\n/);
  t.regex(zsh.stdout, /compdef _mesh_cni_completions mesh-cni/);
});

test.serial('bash completion from the cluster: `explain sh<TAB>` completes a pod of this node from kube-apiserver, `--backend <TAB>` the backends', async (t) => {
  const kube = await startKube();
  t.teardown(() => kube.stop());
  await kube.createPod({ namespace: 'shop', name: 'shipping', nodeName: 'node-a' });
  // On another node: were the node not filtered, `sh<TAB>` would stop at the common prefix `shop/sh`.
  await kube.createPod({ namespace: 'shop', name: 'shelf', nodeName: 'node-b' });
  await kube.createPod({ namespace: 'kube-system', name: 'coredns', nodeName: 'node-a' });
  // No agent on this health port: the names come from the API.
  const term = terminal(t, { NODE_NAME: 'node-a', HEALTH_PORT: String(await freePort()) });
  term.send('source <(mesh-cni completion --shell bash) && clear', 'Enter');
  await term.waitFor(/^\$ ?$/m);

  term.send(`mesh-cni explain --kubeconfig ${kube.kubeconfig} sh`, 'Tab');
  t.regex(await term.waitFor(/explain --kubeconfig \S+ shop\/shipping\s*$/m), /shop\/shipping/);
  term.send('C-u', `mesh-cni apply --kubeconfig ${kube.kubeconfig} --pod shop/sh`, 'Tab');
  t.regex(await term.waitFor(/--pod shop\/shipping\s*$/m), /--pod shop\/shipping/);
  term.send('C-u', `mesh-cni pods --kubeconfig ${kube.kubeconfig} -n ku`, 'Tab');
  t.regex(await term.waitFor(/-n kube-system\s*$/m), /-n kube-system/);

  // Option values from their choices: TAB TAB lists them.
  term.send('C-u', 'clear', 'Enter');
  await term.waitFor(/^\$ ?$/m);
  term.send('mesh-cni plan --backend ', 'Tab', 'Tab');
  const listed = await term.waitFor(/nftables/);
  for (const name of ['auto', 'iptables', 'iptables-nft', 'iptables-legacy', 'nftables']) t.regex(listed, new RegExp(`(^|\\s)${name}(\\s|$)`, 'm'));
  term.send('C-u', 'clear', 'Enter');
  await term.waitFor(/^\$ ?$/m);
  term.send('mesh-cni agent --repair-mode la', 'Tab');
  t.regex(await term.waitFor(/--repair-mode label\s*$/m), /label/);
  term.send('C-u');
});

test.serial("completion asks the agent's pod cache first, and prints nothing when no source answers", async (t) => {
  const kube = await startKube();
  t.teardown(() => kube.stop());
  await kube.createPod({ namespace: 'shop', name: 'shipping', nodeName: 'node-a' });
  const dir = testTempDir(t, 'agent');
  const agent = await startAgent({ socketPath: path.join(dir, 'agent.sock'), stateDir: dir, healthPort: 0, healthHost: '127.0.0.1', kubernetes: { nodeName: 'node-a', kubeconfigPath: kube.kubeconfig }, log: () => undefined });
  t.teardown(() => agent.stop());
  for (let i = 0; !agent.podCache?.synced() && i < 100; i++) await new Promise((r) => setTimeout(r, 100));
  // Asynchronous: the agent runs in this process and must answer while the CLI waits.
  const complete = (env: Record<string, string>, ...words: string[]) =>
    new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = execFile(process.execPath, [CLI, '--get-yargs-completions', 'mesh-cni', ...words], { encoding: 'utf8', env: { PATH: process.env.PATH, NODE_NAME: 'node-a', ...env } }, (_err, stdout, stderr) =>
        resolve({ status: child.exitCode, stdout, stderr }),
      );
    });
  // No kubeconfig that works: only the agent can name the pod.
  const fromAgent = await complete({ HEALTH_PORT: String(agent.healthPort) }, 'explain', '--kubeconfig', path.join(dir, 'none'), '');
  t.is(fromAgent.status, 0, fromAgent.stderr);
  t.deepEqual(fromAgent.stdout.trim().split('\n'), ['shop/shipping']);
  const namespaces = await complete({ HEALTH_PORT: String(agent.healthPort) }, 'pods', '-n', '');
  t.deepEqual(namespaces.stdout.trim().split('\n'), ['shop']);
  // Neither the agent nor the API: no words, no error, exit 0.
  await kube.stopApiserver();
  const started = Date.now();
  const none = await complete({ HEALTH_PORT: String(await freePort()) }, 'explain', '--kubeconfig', kube.kubeconfig, 'sh');
  t.is(none.status, 0);
  t.is(none.stdout, '');
  t.is(none.stderr, '');
  t.true(Date.now() - started < 8_000, `bounded (${Date.now() - started} ms)`);
});

test.serial('colour on a TTY; none when piped; none with NO_COLOR=1', async (t) => {
  const term = terminal(t);
  const dir = testTempDir(t, 'colour');
  // status against empty dirs and no agent: red cells in the table, with no API or root needed.
  const args = `status --cni-conf-dir ${dir}/net.d --cni-bin-dir ${dir}/bin --state-dir ${dir}/state --socket ${dir}/agent.sock --backend iptables-nft`;
  term.send(`clear; mesh-cni ${args}; echo "done $?"`, 'Enter');
  const tty = await term.waitFor(/^done 1$/m, 15_000, true);
  t.true(tty.includes(`${ESC}31m`), `red on the TTY:\n${JSON.stringify(tty)}`);
  t.regex(tty, /cni config\s+(\x1b\[[0-9;]*m)+none in /, 'the cell is coloured, the table still aligned');

  term.send(`clear; mesh-cni ${args} | cat; echo "piped $?"`, 'Enter');
  const piped = await term.waitFor(/^piped 0$/m, 15_000, true);
  t.false(piped.includes(ESC + '31m'), `no colour when piped:\n${JSON.stringify(piped)}`);
  t.regex(piped, /cni config\s+none in /);

  term.send(`clear; NO_COLOR=1 mesh-cni ${args}; echo "nocolour $?"`, 'Enter');
  const noColour = await term.waitFor(/^nocolour 1$/m, 15_000, true);
  t.false(noColour.includes(ESC + '31m'), `no colour with NO_COLOR:\n${JSON.stringify(noColour)}`);
  t.regex(noColour, /cni config\s+none in /);
});
