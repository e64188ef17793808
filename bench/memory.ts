import type { Summary } from './lib';
export async function benchMemory(): Promise<Summary[]> { return []; }
