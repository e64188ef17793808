/**
 * Where an ADD's time goes, by phase: the agent exports it (`mesh_cni_add_phase_seconds`) so an operator can
 * tell a slow packet filter (apply) from slow agent work (everything else). A clock of laps: each `lap(phase)`
 * gives the time since the previous lap to that phase, so the phases add up to the whole request and a phase
 * entered twice (apply around render) is summed. Wall time, not CPU: under a burst a phase also holds the time
 * other requests ran while it waited.
 */
export const ADD_PHASES = ['parse', 'decide', 'plan', 'render', 'apply', 'record', 'log'] as const;
export type AddPhase = (typeof ADD_PHASES)[number];

export type PhaseSeconds = Partial<Record<AddPhase, number>>;

export class PhaseClock {
  private last = process.hrtime.bigint();
  readonly seconds: PhaseSeconds = {};

  /**
   * Work done for the ADD after its answer (the start of its attachment record's write), counted in `phase`
   * too so that moving work past the answer never hides it; the phases then add up to a little more than the
   * time to the answer. Its caller measures CPU time, not wall time: right after the answer the shim that got
   * it often runs on this CPU, and its time is no work of the agent's.
   */
  add(phase: AddPhase, seconds: number): void {
    this.seconds[phase] = (this.seconds[phase] ?? 0) + seconds;
  }

  lap(phase: AddPhase): void {
    const now = process.hrtime.bigint();
    this.seconds[phase] = (this.seconds[phase] ?? 0) + Number(now - this.last) / 1e9;
    this.last = now;
  }
}
