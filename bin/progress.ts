// The only place that draws progress bars: on a terminal, unless --quiet or --json.
import { createRequire } from 'node:module';
import type { GlobalOptions } from './cli.js';
import { formatSize } from '../format/errors.js';

export interface Bar {
  /** Whether anything is drawn: callers skip work that only feeds the bar. */
  readonly active: boolean;
  update(done: number, total: number, extra?: string): void;
  stop(): void;
}

export function progressBar(opts: GlobalOptions, label: string): Bar {
  if (opts.quiet || opts.json || !process.stderr.isTTY) return { active: false, update() {}, stop() {} };
  const started = Date.now();
  // Loaded only when a bar is drawn (start-up time of every other run).
  const cliProgress = createRequire(import.meta.url)('cli-progress') as typeof import('cli-progress');
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {percentage}% {doneh}/{totalh} {rate} eta {eta_formatted} {extra}`,
      hideCursor: true,
      clearOnComplete: true,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
  );
  let begun = false;
  return {
    active: true,
    update(done, total, extra = '') {
      const secs = (Date.now() - started) / 1000;
      const payload = { doneh: formatSize(done), totalh: formatSize(total), rate: secs > 0 ? `${formatSize(done / secs)}/s` : '', extra };
      if (!begun) {
        bar.start(total, done, payload);
        begun = true;
      } else {
        bar.setTotal(total);
        bar.update(done, payload);
      }
    },
    stop() {
      if (begun) bar.stop();
    },
  };
}
