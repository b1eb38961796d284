import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['server/test/**/*.test.ts', 'shared/**/*.test.ts', 'vendure-plugin/test/**/*.test.ts'],
    globalSetup: ['server/test/support/global-setup.ts'],
    // Deletes the keys a file's hubs left on the shared Redis once the file is done.
    setupFiles: ['server/test/support/redis-cleanup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
