import type { Summary } from './lib';
export async function benchRuleCount(): Promise<Summary[]> { return []; }
