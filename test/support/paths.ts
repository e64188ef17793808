import * as path from 'node:path';

/** The checkout's root (tests run compiled from dist/test/...). */
export const REPO_ROOT = path.resolve(__dirname, '../../..');
export const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
