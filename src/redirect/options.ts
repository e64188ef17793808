/**
 * What every engine call (apply, remove, compare, show) is told: which netns, which backend, and how the
 * request is watched. Apart from engine.ts so that compare.ts, which engine.ts hands on, can take it too.
 */
import type { BackendName } from '../defaults';
import type { Backend } from './backend';
import type { Family } from './constants';

export interface EngineOptions {
  netns: string;
  backend?: BackendName;
  /** Which families to program; by default IPv4, and IPv6 when the netns has a global IPv6 address. */
  families?: Family[];
  /** Programming the namespace this process runs in is refused unless asked for (it is the node's). */
  allowHostNetns?: boolean;
  /** Where `auto` looks for the node's existing rules: the netns the agent runs in, unless a test says otherwise. */
  hostNetns?: string;
  /** A state dir where `auto`'s answer is kept for a minute, for processes that serve one request (choose-backend.ts). */
  keepDetectionIn?: string;
  /** A backend object to use instead of `backend` (fault tests hand one whose programs are stand-ins). */
  backendInstance?: Backend;
  /**
   * Aborted when the request is abandoned (its caller went away). Checked once the netns lock is held,
   * before anything in the netns is read or changed; an apply already under way is finished, not cut.
   */
  signal?: AbortSignal;
  /** Told where the time goes: plan, render (where the backend renders apart from applying), apply. */
  laps?: { lap(phase: 'plan' | 'render' | 'apply'): void };
}
