// ferry's command line: builds the commander program from bin/commands/*.
import { EXIT } from '../format/errors.js';
import { isCommanderError, jsonDocumentWritten, makeProgram, outputFailure, report } from './cli.js';
import { commandsFor } from './commands/index.js';
import { runInterruptCleanups } from '../format/interrupt.js';
import { nativeAddon } from '../format/native.js';

/** glibc's malloc for ferry's long streaming runs (the addon's mallocTune): 2 arenas, buffers of 1 MiB and more mapped on their own. */
const MALLOC_ARENAS = 2;
const MALLOC_MMAP_THRESHOLD = 1024 * 1024;

export async function main(argv: string[]): Promise<void> {
  // first, before the threads that would each make an arena of their own
  nativeAddon()?.mallocTune?.(MALLOC_ARENAS, MALLOC_MMAP_THRESHOLD);
  // `ferry ... | head` closes our stdout early: that is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    // (vhd cat says it itself) a full disk or a closed descriptor: one line, not a stack
    if (process.stdout.listenerCount('error') > 1) return;
    process.stderr.write(`ferry: cannot write to standard output: ${outputFailure(err)}\n`);
    process.exit(EXIT.failed);
  });
  // Ctrl-C or a kill: one line, the conventional exit code (128 + signal).
  // What was written so far is safe: every command can be run again and
  // goes on (a seed resumes, an import skips what is in, a restore finishes,
  // the vault's writer lock is released; one left by a kill -9 is seen as
  // stale and removed by the next command).
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.once(sig, () => {
      const message = `interrupted (${sig}); run the same command again to go on`;
      // (a new line first only after a progress bar's line on a terminal)
      process.stderr.write(`${process.stderr.isTTY ? '\n' : ''}ferry: ${message}\n`);
      // the vault's writer lock goes (a moment at most); a second Ctrl-C stops at once
      void runInterruptCleanups(sig).finally(() => {
        // --json: the one document, as for any other failure (unless the command wrote its own: import lists the disks in so far)
        if (wantsJson(argv) && !jsonDocumentWritten()) process.stdout.write(JSON.stringify({ error: { code: 'INTERRUPTED', signal: sig, message } }, null, 2) + '\n');
        process.exit(code);
      });
    });
  }
  argv = hoistGlobals(argv);
  const program = makeProgram();
  for (const register of await commandsFor(argv)) register(program);
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (isCommanderError(err)) {
      // help and version are not errors; everything else commander rejects is usage
      process.exitCode = err.exitCode === 0 ? EXIT.ok : EXIT.usage;
      // --json: the error document, as for every other usage error
      if (err.exitCode !== 0 && wantsJson(argv)) {
        const message = err.message.split('\n')[0].replace(/^error: /, '');
        process.stdout.write(JSON.stringify({ error: { code: 'USAGE', message } }, null, 2) + '\n');
      }
      return;
    }
    process.exitCode = report(err);
  }
  // The command has finished. Anything it started and did not stop (a bug)
  // would keep the process alive for good: leave after a grace period
  // instead, saying so. (An unref'd timer: a clean exit does not wait.)
  setTimeout(() => {
    process.stderr.write('ferry: internal error: the command finished but left work running; exiting\n');
    process.exit(process.exitCode ?? EXIT.failed);
  }, 3000).unref();
}

/** Whether the command line asks for --json (before a `--`, after which all are operands). */
function wantsJson(argv: string[]): boolean {
  return argv.slice(2, argv.includes('--') ? argv.indexOf('--') : undefined).includes('--json');
}

/** Options every command takes, accepted before the command too (`ferry --json points ...`). */
const GLOBAL_FLAGS = new Set(['--json', '--quiet', '-q', '--verbose']);

/** Moves global flags given before the command name to the end, where the command reads them. */
export function hoistGlobals(argv: string[]): string[] {
  let i = 2;
  while (i < argv.length && GLOBAL_FLAGS.has(argv[i])) i++;
  if (i === 2 || i === argv.length) return argv;
  const rest = argv.slice(i);
  const cut = rest.indexOf('--');
  const flags = argv.slice(2, i);
  return [...argv.slice(0, 2), ...(cut < 0 ? [...rest, ...flags] : [...rest.slice(0, cut), ...flags, ...rest.slice(cut)])];
}
