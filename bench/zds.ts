/**
 * How the agent learns that ztunnel's SEQPACKET socket is ready (src/netns/readiness.ts): uv_poll on Node's own
 * loop against the fallback, a timer that polls every 5 ms. Two figures for each: the round trip of one small
 * record each way (what an AddWorkload and its ack cost in readiness alone), and the CPU an idle connection
 * burns while the agent waits for ztunnel to speak.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { connectSeqpacket, SeqpacketListener } from '../src/netns/seqpacket';
import { readinessVia, type WatchVia } from '../src/netns/readiness';
import { median, now, quantile, table, writeResult, type Summary } from './lib';

const ROUND_TRIPS = Number(process.env.BENCH_RUNS ?? 500);
const IDLE_MS = 2000;

async function measure(dir: string, via: WatchVia): Promise<{ rtMs: number[]; idleCpuMs: number }> {
  const at = path.join(dir, `${via}.sock`);
  const listener = SeqpacketListener.listen(at);
  const accepted = listener.accept();
  const client = connectSeqpacket(at, via);
  const server = await accepted;
  try {
    // The echo side runs on uv_poll in both cases: only the client's wait is compared.
    let echoing = true;
    const echo = (async () => {
      while (echoing) {
        const got = await server.receive().catch(() => undefined);
        if (!got) return;
        await server.send(got.data);
      }
    })();
    const rtMs: number[] = [];
    for (let i = 0; i < ROUND_TRIPS; i++) {
      const t0 = now();
      await client.send(Buffer.from([0x0a, 0x00]));
      await client.receive({ timeoutMs: 5000 });
      rtMs.push(now() - t0);
    }
    echoing = false;
    // Idle: the client waits for a record that does not come; the process's CPU over that time.
    const cpu0 = process.cpuUsage();
    await client.receive({ timeoutMs: IDLE_MS }).catch(() => undefined);
    const cpu = process.cpuUsage(cpu0);
    client.close();
    await echo;
    return { rtMs, idleCpuMs: (cpu.user + cpu.system) / 1000 };
  } finally {
    client.close();
    server.close();
    listener.close();
  }
}

export async function benchZds(): Promise<Summary[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcni-bench-zds-'));
  try {
    const uv = await measure(dir, 'auto');
    const timer = await measure(dir, 'timer');
    const rows = [
      ['uv_poll', median(uv.rtMs), quantile(uv.rtMs, 0.99), uv.idleCpuMs],
      ['5 ms timer', median(timer.rtMs), quantile(timer.rtMs, 0.99), timer.idleCpuMs],
    ];
    console.log(`\n== ZDS socket readiness (${readinessVia()}), ${ROUND_TRIPS} round trips, idle ${IDLE_MS} ms`);
    console.log(table(['method', 'round trip median ms', 'p99 ms', `CPU ms while idle ${IDLE_MS} ms`], rows as Array<Array<string | number>>));
    writeResult('zds', { roundTrips: ROUND_TRIPS, uv, timer: { ...timer } });
    return [
      { name: 'zds-round-trip-uv-poll', value: median(uv.rtMs), unit: 'ms', target: 1, atMost: true },
      { name: 'zds-round-trip-timer', value: median(timer.rtMs), unit: 'ms', target: 10, atMost: true, note: 'the fallback, for comparison' },
    ];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
