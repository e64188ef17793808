/**
 * One JSON line per request, to the netconf's log file and to stderr. The line names the pod, command,
 * decision, duration and error — never tokens, kubeconfig contents or the netconf itself. Failing to write
 * the file is not fatal: logging must never fail a pod.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { LogLevel } from './netconf';

export interface RequestLogLine {
  time: string;
  level: 'info' | 'warn' | 'error';
  command: string;
  containerId?: string;
  pod?: string;
  netns?: string;
  /** 'meshed', 'skipped', 'removed', 'checked', ... */
  decision?: string;
  reason?: string;
  source?: string;
  backend?: string;
  rules?: number;
  durationMs: number;
  notes?: string[];
  error?: { code: number; msg: string };
}

const SEVERITY: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export function shouldLog(line: RequestLogLine, threshold: LogLevel): boolean {
  return SEVERITY[line.level] >= SEVERITY[threshold];
}

/** Writes the line to the file (best effort) and returns the text for stderr, or '' when filtered out. */
export function writeRequestLog(line: RequestLogLine, options: { logFile?: string; logLevel?: LogLevel }): string {
  if (!shouldLog(line, options.logLevel ?? 'info')) return '';
  const text = `${JSON.stringify(line)}\n`;
  if (options.logFile) {
    try {
      mkdirSync(dirname(options.logFile), { recursive: true, mode: 0o755 });
      appendFileSync(options.logFile, text, { mode: 0o640 });
    } catch {
      // the stderr copy still reaches the runtime's log
    }
  }
  return text;
}
