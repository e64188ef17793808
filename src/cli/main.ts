#!/usr/bin/env node
/** The `mesh-cni` command line: one module per command under ./commands. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import * as plan from './commands/plan';
import * as apply from './commands/apply';
import * as show from './commands/show';
import * as remove from './commands/remove';
import * as agent from './commands/agent';
import * as install from './commands/install';
import * as uninstall from './commands/uninstall';
import * as repair from './commands/repair';
import * as status from './commands/status';
import * as pods from './commands/pods';
import * as explain from './commands/explain';
import * as completion from './commands/completion';
import { EXIT } from './output';
import { clusterCompletion, fetchCompletionNames, type PodName } from './complete';

/** `names`: the pods fetched for a completion request (fetchCompletionNames), before yargs runs. */
export function cli(argv: string[], names?: PodName[]) {
  return yargs(argv)
    .scriptName('mesh-cni')
    .command(status)
    .command(pods)
    .command(explain)
    .command(plan)
    .command(apply)
    .command(show)
    .command(remove)
    .command(agent)
    .command(install)
    .command(uninstall)
    .command(repair)
    .command(completion)
    // yargs' completion hook, for pods and namespaces; its own script command stays hidden under a name no one
    // types, since `completion` is ours (bash and zsh, --shell).
    .completion('__yargs-completion', false, clusterCompletion(argv, names))
    .demandCommand(1, 'name a command (see --help)')
    .strict()
    .recommendCommands()
    .epilogue('Exit codes: 0 ok, 1 a problem was found or an operation failed, 2 usage error.')
    .fail((msg, err, y) => {
      // A failed .check() arrives as a YError or as its message: a usage error like any other. Any other
      // Error is a bug and keeps its stack.
      if (err instanceof Error && err.name !== 'YError') throw err;
      process.stderr.write(`${y.help()}\n\n${msg ?? String(err)}\n`);
      process.exit(EXIT.usage);
    })
    .help()
    .version();
}

if (require.main === module) {
  // `mesh-cni plan | head` closes the pipe early: that is the reader's choice, not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  const argv = hideBin(process.argv);
  // yargs runs the command's handler when a completion function answers late, so the names are fetched first.
  void fetchCompletionNames(argv).then((names) => cli(argv, names).parseAsync());
}
