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
import { EXIT } from './output';

export function cli(argv: string[]) {
  return yargs(argv)
    .scriptName('mesh-cni')
    .command(plan)
    .command(apply)
    .command(show)
    .command(remove)
    .command(agent)
    .command(install)
    .command(uninstall)
    .command(repair)
    .demandCommand(1, 'name a command (see --help)')
    .strict()
    .recommendCommands()
    .epilogue('Exit codes: 0 ok, 1 a problem was found or an operation failed, 2 usage error.')
    .fail((msg, err, y) => {
      if (err) throw err;
      process.stderr.write(`${y.help()}\n\n${msg}\n`);
      process.exit(EXIT.usage);
    })
    .help()
    .version();
}

if (require.main === module) {
  void cli(hideBin(process.argv)).parseAsync();
}
