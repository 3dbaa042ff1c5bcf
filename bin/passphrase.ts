// Where the passphrase comes from, in this order: --passphrase-file,
// --passphrase-command, FERRY_PASSPHRASE, a prompt on a terminal. A flag
// beats the environment because it was typed for this run. A new passphrase
// (init, key add) is asked twice at a prompt; `key add` reads the new one
// from --new-passphrase-file, FERRY_NEW_PASSPHRASE or a prompt.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { onInterrupt } from '../format/interrupt.js';
import { readFile } from 'node:fs/promises';
import { Command, Option } from 'commander';
import { FerryError, UsageError } from '../format/errors.js';
import { DEFAULT_SCRYPT, ScryptCost, checkNewPassphrase } from '../vault/keys.js';
import type { VaultReader, VaultWriter } from '../vault/vault.js';
import type { GlobalOptions, Output } from './cli.js';

export interface PassphraseSources {
  passphraseFile?: string;
  passphraseCommand?: string;
  /** Only for commands that set a new passphrase. */
  newPassphraseFile?: string;
}

export interface AskOptions {
  env?: NodeJS.ProcessEnv;
  /** Prompt twice and compare (a passphrase being set). */
  confirm?: boolean;
  /** Prompt text. */
  prompt?: string;
}

const HOW = 'set FERRY_PASSPHRASE, or pass --passphrase-file FILE or --passphrase-command CMD, or run ferry on a terminal to be asked';

/** The vault passphrase for this run. */
export async function getPassphrase(src: PassphraseSources, ask: AskOptions = {}): Promise<string> {
  const env = ask.env ?? process.env;
  if (src.passphraseFile && src.passphraseCommand) throw new UsageError('give either --passphrase-file or --passphrase-command, not both');
  if (src.passphraseFile) return fromFile(src.passphraseFile, '--passphrase-file');
  if (src.passphraseCommand) return fromCommand(src.passphraseCommand);
  if (env.FERRY_PASSPHRASE !== undefined) return nonEmpty(env.FERRY_PASSPHRASE, 'FERRY_PASSPHRASE');
  if (!process.stdin.isTTY) throw new UsageError(`no passphrase given: ${HOW}`);
  return promptPassphrase(ask.prompt ?? 'vault passphrase: ', ask.confirm ?? false);
}

/** The new passphrase of `ferry key add`. */
export async function getNewPassphrase(src: PassphraseSources, ask: AskOptions = {}): Promise<string> {
  const env = ask.env ?? process.env;
  if (src.newPassphraseFile) return fromFile(src.newPassphraseFile, '--new-passphrase-file');
  if (env.FERRY_NEW_PASSPHRASE !== undefined) return nonEmpty(env.FERRY_NEW_PASSPHRASE, 'FERRY_NEW_PASSPHRASE');
  if (!process.stdin.isTTY) {
    throw new UsageError('no new passphrase given: set FERRY_NEW_PASSPHRASE, or pass --new-passphrase-file FILE, or run ferry on a terminal to be asked');
  }
  return promptPassphrase(ask.prompt ?? 'new passphrase: ', true);
}

function nonEmpty(p: string, from: string): string {
  if (p.length === 0) throw new UsageError(`the passphrase from ${from} is empty`);
  return p;
}

/** One trailing newline is the file's line end, not the passphrase's; any other whitespace is kept. */
function stripNewline(s: string): string {
  return s.endsWith('\r\n') ? s.slice(0, -2) : s.endsWith('\n') ? s.slice(0, -1) : s;
}

async function fromFile(file: string, flag: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' || e.code === 'EPERM' ? 'permission denied' : e.code === 'EISDIR' ? 'it is a folder' : (e.code ?? e.message);
    throw new UsageError(`${flag} ${file}: cannot read it (${why}); give the file that holds the passphrase`, { file });
  }
  return nonEmpty(stripNewline(text), `${flag} ${file}`);
}

/** SIGTERM to process `pid` and everything under it (sh does not exec its last command). */
function killTree(pid: number): void {
  let kids: number[] = [];
  try {
    kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    /* gone, or no /proc */
  }
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    /* gone */
  }
  for (const k of kids) killTree(k);
}

function fromCommand(cmd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    // stdin and stderr stay the user's, so a command such as `pass` or `gpg` can talk to them.
    // (in ferry's process group, so that a terminal's Ctrl-C reaches it and it may read the terminal)
    const child = spawn('sh', ['-c', cmd], { stdio: ['inherit', 'pipe', 'inherit'] });
    // ferry stopped by a kill (SIGTERM from outside): the command does not outlive it
    const unhook = onInterrupt(async () => {
      if (child.pid) killTree(child.pid);
    });
    child.on('close', unhook);
    const chunks: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.on('error', (err) => reject(new UsageError(`--passphrase-command: cannot run sh: ${err.message}`)));
    child.on('close', (code, signal) => {
      if (code !== 0) {
        reject(new UsageError(`--passphrase-command ${JSON.stringify(cmd)} failed (${signal ? `signal ${signal}` : `exit code ${code}`}); no passphrase read`));
        return;
      }
      try {
        resolve(nonEmpty(stripNewline(Buffer.concat(chunks).toString('utf8')), '--passphrase-command'));
      } catch (err) {
        reject(err);
      }
    });
  });
}

async function promptPassphrase(prompt: string, confirm: boolean): Promise<string> {
  const first = await promptHidden(prompt);
  if (first.length === 0) throw new UsageError('empty passphrase');
  if (confirm) {
    checkNewPassphrase(first); // too short: said now, not after it was typed twice
    const second = await promptHidden('again, to confirm: ');
    if (second !== first) throw new UsageError('the two passphrases differ; nothing changed');
  }
  return first;
}

/** Reads one line from the terminal without echoing it. */
function promptHidden(prompt: string): Promise<string> {
  const stdin = process.stdin;
  return new Promise((resolve, reject) => {
    let buf = '';
    const finish = (err: unknown, value?: string) => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(value!);
    };
    const onData = (chunk: string) => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n') return finish(null, buf);
        if (ch === '\u0003') return finish(new FerryError('INTERRUPTED', 'interrupted', {}, 130));
        if (ch === '\u0004' && buf.length === 0) return finish(new UsageError('no passphrase given (end of input)'));
        if (ch === '\u007f' || ch === '\b') buf = [...buf].slice(0, -1).join('');
        else if (ch === '\u0015') buf = '';
        else if (ch >= ' ') buf += ch;
      }
    };
    // echo off before the prompt shows: whatever is typed once it is visible stays hidden
    stdin.setRawMode(true);
    process.stderr.write(prompt);
    stdin.setEncoding('utf8');
    stdin.on('data', onData);
    stdin.resume();
  });
}

/** Options of commands that take the writer lock. */
export function withLockOptions(cmd: Command): Command {
  return cmd.option('--break-lock', 'take the writer lock even from a holder that looks alive (a ferry gone or hung); a holder still running stops before its next write');
}

/** Test-speed scrypt cost for new key slots; hidden because weak costs help no user. */
export function withKdfOption(cmd: Command): Command {
  return cmd.addOption(new Option('--kdf-log-n <n>', 'scrypt cost: N = 2^n (testing only)').hideHelp());
}

export function kdfCost(opts: { kdfLogN?: string }): ScryptCost | undefined {
  if (opts.kdfLogN === undefined) return undefined;
  const n = Number(opts.kdfLogN);
  if (!Number.isInteger(n) || n < 10 || n > 22) throw new UsageError(`--kdf-log-n must be an integer from 10 to 22 (got ${opts.kdfLogN})`);
  return { N: 2 ** n, r: DEFAULT_SCRYPT.r, p: 1 };
}

export interface CliOpenOptions extends GlobalOptions {
  vault: string;
  breakLock?: boolean;
}

/** Reads the passphrase and opens the vault: what every vault command starts with. */
export async function openVaultFromCli(out: Output, opts: CliOpenOptions, how: { writable: true; command: string }): Promise<VaultWriter>;
export async function openVaultFromCli(out: Output, opts: CliOpenOptions, how?: { writable?: false; command?: string }): Promise<VaultReader>;
export async function openVaultFromCli(out: Output, opts: CliOpenOptions, how: { writable?: boolean; command?: string } = {}): Promise<VaultReader> {
  let given = '';
  const common = {
    passphrase: async () => (given = await getPassphrase(opts)),
    onWarning: (m: string) => out.warn(m),
    onNote: (m: string) => out.note(m),
  };
  // Loaded here, not at the top: `ferry vhd ...` and `--help` never need the vault code.
  const { openVault } = await import('../vault/vault.js');
  try {
    if (how.writable) return await openVault(opts.vault, { ...common, writable: true, breakLock: opts.breakLock, command: how.command });
    return await openVault(opts.vault, common);
  } catch (err) {
    // a passphrase that starts or ends with spaces or blank lines: most likely not meant
    if (err instanceof FerryError && err.code === 'WRONG_PASSPHRASE' && given !== given.trim()) {
      const from = opts.passphraseFile ? `--passphrase-file ${opts.passphraseFile}` : opts.passphraseCommand ? '--passphrase-command' : 'FERRY_PASSPHRASE';
      const why = given.startsWith('\uFEFF')
        ? 'starts with a byte-order mark (U+FEFF, which some editors write at the top of a file), which counts: save it without one'
        : 'starts or ends with spaces or a blank line, which count: only one final newline is dropped';
      throw new FerryError(err.code, `${err.message} (the passphrase from ${from} ${why})`, err.data, err.exitCode);
    }
    throw err;
  }
}
