/**
 * `mesh-cni completion`: a bash or zsh script that completes commands and options. The script asks the CLI
 * itself (yargs' `--get-yargs-completions`), so it never goes stale when commands change.
 */
import type { Argv } from 'yargs';

export const command = 'completion';
export const describe = 'print a shell completion script (bash or zsh); source it from your shell rc';

export const SHELLS = ['bash', 'zsh'] as const;
export type Shell = (typeof SHELLS)[number];

export function builder(y: Argv) {
  return y
    .options({
      shell: { choices: SHELLS, default: (process.env.SHELL ?? '').endsWith('zsh') ? ('zsh' as Shell) : ('bash' as Shell), describe: 'which shell (default: from $SHELL)' },
    })
    .example('source <($0 completion)', 'in this bash session')
    .example('$0 completion --shell zsh > "${fpath[1]}/_mesh-cni"', 'for zsh');
}

/** Shaped after yargs' own templates; the program is called by name, so it must be on PATH. */
export function completionScript(shell: Shell, program = 'mesh-cni'): string {
  const fn = `_${program.replace(/[^A-Za-z0-9_]/g, '_')}_completions`;
  if (shell === 'zsh') {
    return `#compdef ${program}
# ${program} completion for zsh: ${program} completion --shell zsh > "\${fpath[1]}/_${program}"
${fn}() {
  local reply
  local si=$IFS
  IFS=$'\\n' reply=($(COMP_CWORD="$((CURRENT-1))" COMP_LINE="$BUFFER" COMP_POINT="$CURSOR" ${program} --get-yargs-completions "\${words[@]}"))
  IFS=$si
  _describe 'values' reply
}
compdef ${fn} ${program}
`;
  }
  return `# ${program} completion for bash: source <(${program} completion)
${fn}() {
  local cur_word args type_list
  cur_word="\${COMP_WORDS[COMP_CWORD]}"
  args=("\${COMP_WORDS[@]}")
  type_list=$(${program} --get-yargs-completions "\${args[@]}" 2>/dev/null)
  COMPREPLY=( $(compgen -W "\${type_list}" -- "\${cur_word}") )
  return 0
}
complete -o bashdefault -o default -F ${fn} ${program}
`;
}

export function handler(args: { shell: Shell }): void {
  process.stdout.write(completionScript(args.shell));
}
