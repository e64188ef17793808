/**
 * A small process that spawns what it is told, as the engine spawns it (setns, spawn, back): the bench's
 * measure of what a restore costs when forked from a process with little memory, against the same restore
 * forked from the agent. Line protocol on stdin/stdout: `{"netns","program","args","input"}` in,
 * `{"code","ms","stderr"}` out. Loads only the netns seam.
 */
import * as readline from 'node:readline';
import { run } from '../src/netns';

interface Job {
  netns: string;
  program: string;
  args: string[];
  input: string;
}

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (text) => {
  const job = JSON.parse(text) as Job;
  const started = process.hrtime.bigint();
  run(job.netns, job.program, job.args, { input: job.input }).then(
    (r) => process.stdout.write(`${JSON.stringify({ code: r.code, ms: Number(process.hrtime.bigint() - started) / 1e6, stderr: r.stderr })}\n`),
    (err: Error) => process.stdout.write(`${JSON.stringify({ code: null, ms: 0, stderr: err.message })}\n`),
  );
});
