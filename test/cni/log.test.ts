/**
 * The request log's file: kept open between lines, and opened afresh when the path names another file
 * (rotated) or none (removed), so lines always land in the file at the netconf's path.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { droppedLogLines, flushRequestLogs, writeRequestLog, type RequestLogLine } from '../../src/cni/log';
import { testTempDir } from '../support/tmp';

function line(containerId: string): RequestLogLine {
  return { time: '2026-01-01T00:00:00.000Z', level: 'info', command: 'ADD', containerId, decision: 'meshed', durationMs: 1 };
}

async function logged(file: string, containerId: string): Promise<void> {
  writeRequestLog(line(containerId), { logFile: file });
  await flushRequestLogs(5000);
}

function ids(file: string): string[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => (JSON.parse(l) as RequestLogLine).containerId!);
}

/** This process's descriptors open on `file`, from /proc/self/fd. */
function openFds(file: string): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`) === file) n++;
    } catch {
      // closed while we looked (readdir's own descriptor)
    }
  }
  return n;
}

test.serial('lines go to one open file: the log file is opened once, not once per line', async (t) => {
  const file = path.join(testTempDir(t, 'log-open'), 'cni.log');
  await logged(file, 'a');
  await logged(file, 'b');
  await logged(file, 'c');
  t.deepEqual(ids(file), ['a', 'b', 'c']);
  t.is(openFds(file), 1, 'the file stays open between lines');
});

test.serial('a removed log file is created again and written', async (t) => {
  const file = path.join(testTempDir(t, 'log-rm'), 'cni.log');
  await logged(file, 'before');
  fs.rmSync(file);
  await logged(file, 'after');
  t.deepEqual(ids(file), ['after']);
  t.is(openFds(`${file} (deleted)`), 0, 'the removed file is not held open');
});

test.serial('a removed log directory is created again', async (t) => {
  const dir = path.join(testTempDir(t, 'log-rmdir'), 'mesh-cni');
  const file = path.join(dir, 'cni.log');
  await logged(file, 'before');
  fs.rmSync(dir, { recursive: true });
  await logged(file, 'after');
  t.deepEqual(ids(file), ['after']);
});

test.serial('a rotated log file (moved away, a new one created) gets the next lines, the old one none', async (t) => {
  const dir = testTempDir(t, 'log-rotate');
  const file = path.join(dir, 'cni.log');
  await logged(file, 'one');
  // logrotate's default: rename, then create a new file at the path.
  fs.renameSync(file, `${file}.1`);
  fs.writeFileSync(file, '');
  await logged(file, 'two');
  // and without `create`: the next line creates it.
  fs.renameSync(file, `${file}.2`);
  await logged(file, 'three');
  t.deepEqual(ids(`${file}.1`), ['one']);
  t.deepEqual(ids(`${file}.2`), ['two']);
  t.deepEqual(ids(file), ['three']);
  t.is(openFds(`${file}.1`) + openFds(`${file}.2`), 0, 'the rotated files are closed');
});

test.serial('a log file that cannot be written drops its lines, and the next writable one at the path gets them again', async (t) => {
  const dir = testTempDir(t, 'log-fifo');
  const file = path.join(dir, 'cni.log');
  await logged(file, 'one');
  // A FIFO without a reader: opened O_NONBLOCK, it fails at once (ENXIO) instead of hanging the writer.
  fs.rmSync(file);
  t.is(spawnSync('mkfifo', [file]).status, 0);
  const dropped = droppedLogLines();
  await logged(file, 'lost');
  t.is(droppedLogLines(), dropped + 1);
  fs.rmSync(file);
  await logged(file, 'two');
  t.deepEqual(ids(file), ['two']);
});
