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
      format: `${label} [{bar}] {percentage}% {doneh}/{totalh} {rate} eta {etah} {extra}`,
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
      // our own estimate: cli-progress prints "NULL"/"INF" cut short ("NFs") before the rate settles
      const rate = secs > 0 ? done / secs : 0;
      const etah = rate > 0 && total >= done && secs >= 1 ? clock((total - done) / rate) : '?';
      const payload = { doneh: formatSize(done), totalh: formatSize(total), rate: secs > 0 ? `${formatSize(rate)}/s` : '', etah, extra };
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

/** Seconds as 42s, 3m05s or 2h07m. */
function clock(secs: number): string {
  const s = Math.round(secs);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
