// Starting ferry's worker threads.
import { Worker, type WorkerOptions } from 'node:worker_threads';

const MAIN_ONLY = (a: string) => a.startsWith('--input-type') || a.startsWith('--eval=') || a.startsWith('--print=');

/**
 * A worker thread with the parent's node flags, less those that only make
 * sense for a main script (`--input-type`, `-e CODE` and friends: inherited,
 * they make the worker fail as it starts). When the flags left are still
 * refused (a worker takes no `--expose-gc`, say), it starts with none.
 */
export function startWorker(url: URL, opts: WorkerOptions = {}): Worker {
  const argv = process.execArgv;
  if (!argv.some((a) => MAIN_ONLY(a) || a === '-e' || a === '--eval' || a === '-p' || a === '--print')) return new Worker(url, opts);
  const kept: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-e' || a === '--eval' || a === '-p' || a === '--print') i++; // and its code
    else if (!MAIN_ONLY(a)) kept.push(a);
  }
  try {
    return new Worker(url, { ...opts, execArgv: kept });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw err;
    return new Worker(url, { ...opts, execArgv: [] });
  }
}
