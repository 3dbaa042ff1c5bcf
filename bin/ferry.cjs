#!/usr/bin/env -S node --max-semi-space-size=2 --heap-growing-percent=60
// Launcher: the CLI is compiled from bin/ferry.ts to dist/bin/ferry.js (`npm run build`).
// V8's young generation is held to 2 MiB semi-spaces (Node's default is 16):
// ferry's garbage is short-lived buffers and rows, and the larger default
// only let it pile up (a seed peaked 30 MiB higher, a restore 45-50 MiB,
// for no time saved; 2 against 4 MiB: seeds 6-10 MiB lower at their
// highest, in the same time, once the main threads made less garbage:
// docs/PERFORMANCE.md). The old generation may grow by
// 60 % of what a full collection leaves before the next (V8 lets it grow up
// to 4x: a restore's heap swelled to 80 MiB of which 15-25 were live; 60 %
// held it near 30 MiB for 0.5 s more CPU). The flags take effect only from
// here, when this file is run as a program; `node bin/ferry` runs with
// Node's defaults.
// File reads, writes and fsyncs overlap in the pipelines: libuv's default 4
// threads would queue them (a cold `vhd export` took 2.0-2.6 s with 4, 1.3-1.7
// s with 16). libuv reads this at its first use of the pool, so this file is
// CommonJS (bin/ferry links to it): Node loads it without the pool, where an
// ES module entry is read through it, and the setting came too late.
process.env.UV_THREADPOOL_SIZE = process.env.UV_THREADPOOL_SIZE || '16';
import('../dist/bin/ferry.js').then((m) => m.main(process.argv)).catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/bin/ferry.js')) {
    console.error('ferry: not built yet; run `npm run build` in the ferry folder');
    process.exit(1);
  }
  console.error(err);
  process.exit(1);
});
