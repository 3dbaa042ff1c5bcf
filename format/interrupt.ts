// What a Ctrl-C (or a kill with SIGTERM or SIGHUP) should still undo before
// the process exits: a vault's writer lock, so that the next command does not
// find it left behind. bin/ferry.ts runs these, for at most a moment, then
// exits; temporaries go by the exit handler of format/fsio.ts.
const cleanups = new Set<(signal: string) => Promise<unknown>>();
let stopping = false;

/** Whether the process is being interrupted (what fails now is its doing: not worth a message). */
export function interrupted(): boolean {
  return stopping;
}

/** Runs `fn` (given the signal's name) if the process is interrupted; returns what unregisters it. */
export function onInterrupt(fn: (signal: string) => Promise<unknown>): () => void {
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

/** Runs every registered cleanup, waiting at most `ms` for them. */
export async function runInterruptCleanups(signal = 'SIGINT', ms = 2000): Promise<void> {
  stopping = true;
  const all = Promise.allSettled([...cleanups].map((f) => f(signal)));
  await Promise.race([all, new Promise((r) => setTimeout(r, ms).unref())]);
}
