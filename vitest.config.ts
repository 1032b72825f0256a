import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: interop tests spawn qemu-img, keep the pool small.
    pool: 'forks',
    maxWorkers: 2,
  },
});
