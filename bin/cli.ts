// What every command shares: global options, output, and turning errors into
// one line and an exit code. Only bin/ exits the process.
import { interrupted } from '../format/interrupt.js';
import { createRequire } from 'node:module';
import { Command, CommanderError, type ParseOptionsResult } from 'commander';
import { EXIT, FerryError } from '../format/errors.js';

export interface GlobalOptions {
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
  passphraseFile?: string;
  passphraseCommand?: string;
}

/** Whether the process has written its one JSON document (or an error document) on stdout. */
let documentWritten = false;
export function jsonDocumentWritten(): boolean {
  return documentWritten;
}

export class Output {
  /** What `note` said, for the JSON document. */
  readonly notes: Array<{ message: string }> = [];
  constructor(readonly opts: GlobalOptions) {}
  /** Human text on stdout (suppressed by --json and --quiet): progress, summaries, hints. */
  info(line: string): void {
    if (!this.opts.json && !this.opts.quiet) process.stdout.write(line + '\n');
  }
  /** The data the command was asked for (a listing's rows), on stdout: --quiet keeps it, only --json replaces it. */
  data(line: string): void {
    if (!this.opts.json) process.stdout.write(line + '\n');
  }
  /**
   * Something the user may like to know that is no warning (a stale lock of a
   * dead ferry removed): on stderr unless --quiet, and under `notes` in the
   * JSON document. The exit code stays as it is.
   */
  note(line: string): void {
    this.notes.push({ message: line });
    if (!this.opts.quiet) process.stderr.write(`ferry: note: ${line}\n`);
  }
  /** Extra detail, only with --verbose. */
  verbose(line: string): void {
    if (this.opts.verbose && !this.opts.json) process.stderr.write(line + '\n');
  }
  /** On stderr even with --quiet: a run that ends "done with warnings" (exit 3) names what it skipped. */
  warn(line: string): void {
    process.stderr.write(`ferry: warning: ${line}\n`);
  }
  /** The one JSON document of --json. */
  json(doc: unknown): void {
    documentWritten = true;
    process.stdout.write(JSON.stringify(this.withNotes(doc), null, 2) + '\n');
  }
  /** The document with this run's notes added to its `notes` (seed has its own: they go after them). */
  private withNotes(doc: unknown): unknown {
    if (this.notes.length === 0 || !doc || typeof doc !== 'object' || Array.isArray(doc)) return doc;
    const own = (doc as { notes?: unknown }).notes;
    if (own === undefined) return { ...doc, notes: this.notes };
    if (!Array.isArray(own)) return doc;
    // (notes as strings, as ferry check's are, stay strings)
    const more = own.length > 0 && own.every((n) => typeof n === 'string') ? this.notes.map((n) => n.message) : this.notes;
    return { ...doc, notes: [...own, ...more] };
  }
  /** Either the JSON document or the human lines. */
  result(doc: unknown, human: () => void): void {
    if (this.opts.json) this.json(doc);
    else human();
  }
}

/**
 * The options every command takes. Commander puts them on the subcommand.
 * `vault: false` for a command that never opens a vault (no passphrase options).
 */
export function withGlobals(cmd: Command, opts: { vault?: boolean } = {}): Command {
  cmd
    .option('--json', 'print one JSON document on stdout')
    .option('-q, --quiet', 'no progress, summaries or notes: only the data asked for, warnings and errors')
    .option('-v, --verbose', 'print more detail on stderr');
  if (opts.vault === false) return cmd;
  return cmd
    .option('--passphrase-file <file>', 'read the vault passphrase from this file')
    .option('--passphrase-command <cmd>', 'run this command and read the passphrase from its output');
}

/**
 * Wraps a command's action: the action returns an exit code (or nothing for
 * 0); errors become one line on stderr and a stable exit code.
 */
export function action<A extends unknown[]>(
  fn: (out: Output, ...args: A) => Promise<number | void>,
): (...args: unknown[]) => Promise<void> {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const opts = cmd.optsWithGlobals() as GlobalOptions;
    const out = new Output(opts);
    try {
      const code = await fn(out, ...(args.slice(0, -1) as A));
      process.exitCode = code ?? EXIT.ok;
    } catch (err) {
      // (a Ctrl-C released the lock under the work: its own line said so)
      if (interrupted()) return;
      process.exitCode = report(err, out);
    }
  };
}

/** Why standard output could not be written, in a user's words. */
export function outputFailure(err: NodeJS.ErrnoException): string {
  return err.code === 'ENOSPC' ? 'no room left on the disk it goes to' : err.message;
}

export function report(err: unknown, out?: Output): number {
  if (out?.opts.json) documentWritten = true;
  if (err instanceof FerryError) {
    if (out?.opts.json) process.stdout.write(JSON.stringify({ error: err.toJSON() }, null, 2) + '\n');
    process.stderr.write(`ferry: ${err.message}\n`);
    if (out?.opts.verbose && err.stack) process.stderr.write(err.stack + '\n');
    return err.exitCode;
  }
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string' && e.syscall) {
    // An OS error nobody translated: still one line, naming the path.
    if (out?.opts.json) process.stdout.write(JSON.stringify({ error: { code: e.code, syscall: e.syscall, path: e.path, message: e.message } }, null, 2) + '\n');
    process.stderr.write(`ferry: ${e.path ? `${e.syscall} ${e.path}` : e.syscall}: ${e.message}\n`);
    return EXIT.failed;
  }
  if (out?.opts.json) process.stdout.write(JSON.stringify({ error: { code: 'INTERNAL', message: String((err as Error)?.message ?? err) } }, null, 2) + '\n');
  process.stderr.write(`ferry: internal error, please report it with this output:\n${(err as Error)?.stack ?? String(err)}\n`);
  return EXIT.failed;
}

/**
 * Commander checks required options before unknown ones: `--itme x` was
 * reported as "required option '--item' not specified". A command with an
 * action now names the unknown option first, with commander's suggestion
 * ("Did you mean --item?"). (Through commander's internal
 * _outputHelpIfRequested, which it calls with the unknown arguments just
 * before that check; commander is pinned by package-lock.json.)
 */
class FerryCommand extends Command {
  override createCommand(name?: string): Command {
    return new FerryCommand(name);
  }

  /**
   * An option that takes a value took the next argument whatever it was:
   * `--disk --disk-capacity 3M` seeded onto a folder named --disk-capacity,
   * and `--vault --item home` ended in "required option '--item' not
   * specified". A value that is a long option (`--...`), or one of this
   * command's short flags (-q), is a usage error naming the option; one that
   * really starts with `--` is given as `--opt=--value`. (A lone `-` and a
   * negative number are values.)
   */
  override parseOptions(argv: string[]): ParseOptionsResult {
    // An option of one value given twice (`--vault a --vault b`) took the last, unsaid: a usage error too.
    const given = new Map<string, string>();
    const once = (opt: (typeof this.options)[number], value: string) => {
      if (opt.parseArg || opt.variadic) return; // (--disk, --path, --exclude: repeated on purpose)
      const name = opt.long ?? opt.short ?? '';
      const before = given.get(name);
      if (before !== undefined && before !== value) this.error(`option ${name} given twice (${before} and ${value}); give it once`, { exitCode: EXIT.usage, code: 'ferry.optionTwice' });
      given.set(name, value);
    };
    for (let i = 0; i < argv.length; i++) {
      const arg = argv[i];
      if (arg === '--') break;
      const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
      if (eq > 0) {
        const o = this.options.find((x) => x.long === arg.slice(0, eq));
        if (o?.required) once(o, arg.slice(eq + 1));
        continue;
      }
      const opt = arg.startsWith('-') ? this.options.find((o) => o.long === arg || o.short === arg) : undefined;
      if (!opt?.required || i + 1 >= argv.length) continue;
      const value = argv[++i];
      if (value.startsWith('--') || (/^-[A-Za-z]$/.test(value) && this.options.some((o) => o.short === value))) {
        this.error(`option ${opt.long ?? opt.short} needs a value (got ${value})`, { exitCode: EXIT.usage, code: 'ferry.optionMissingValue' });
      }
      once(opt, value);
    }
    return super.parseOptions(argv);
  }
}
const proto = FerryCommand.prototype as unknown as { _outputHelpIfRequested(args: string[]): void; _actionHandler?: unknown; unknownOption(flag: string): void };
const helpIfRequested = (Command.prototype as unknown as typeof proto)._outputHelpIfRequested;
if (typeof helpIfRequested === 'function') {
  proto._outputHelpIfRequested = function (this: typeof proto, args: string[]) {
    helpIfRequested.call(this, args);
    if (this._actionHandler && args.length > 0 && args[0].startsWith('-') && args[0] !== '-') this.unknownOption(args[0]);
  };
}

export function makeProgram(): Command {
  const program = new FerryCommand('ferry');
  program
    .description('offline seeding, incremental backup and restore for Linux, built on VHD')
    .version(version(), '-V, --version', 'print the version of ferry')
    .showSuggestionAfterError(true)
    .addHelpText(
      'after',
      '\nEvery command also takes --json (one JSON document on stdout), -q/--quiet and -v/--verbose, also before its name;\n' +
        'those that open a vault take --passphrase-file FILE or --passphrase-command CMD (or FERRY_PASSPHRASE, or a prompt).\n' +
        'Exit codes: 0 done, 1 failed, 2 usage error, 3 done with warnings, 10 no vault, 11 locked, 12 wrong passphrase, 130 interrupted.',
    )
    .exitOverride()
    .configureOutput({ outputError: (str, write) => write(`ferry: ${str.trim().replace(/^error: /, '').replace(/\n\(Did you mean/, ' (did you mean').split('\n')[0]}\n`) });
  return program;
}

/** ferry's version, from its package.json. */
function version(): string {
  const pkg = createRequire(import.meta.url)('../../package.json') as { version: string };
  return pkg.version;
}

export function isCommanderError(err: unknown): err is CommanderError {
  return err instanceof CommanderError;
}
