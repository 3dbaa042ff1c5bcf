// Running real tools from tests: ferry's own CLI and the peers (qemu-img,
// vhdimount ...), always as child processes.
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const FERRY = join(ROOT, 'bin', 'ferry');
export const SAMPLES = join(ROOT, 'fixtures', 'vhd-samples');

export interface Result {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs a command to completion; never throws for a non-zero exit. */
export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: Buffer | string; cwd?: string } = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString() }));
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else child.stdin.end();
  });
}

export function ferry(args: string[], opts: { env?: NodeJS.ProcessEnv; input?: Buffer | string; cwd?: string } = {}): Promise<Result> {
  return run(process.execPath, [FERRY, ...args], opts);
}

/** ferry with `env`, which must succeed: its stdout, or an error with the command, exit code and stderr. */
export async function ferryOk(args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await ferry(args, { env });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout.toString();
}

/** A vault in `dir` holding what `fill` puts in `dir`/src, seeded and imported as item "it" (a cheap KDF). */
export async function backedUp(dir: string, env: NodeJS.ProcessEnv, fill: (src: string) => Promise<void>): Promise<{ vault: string; src: string }> {
  const vault = join(dir, 'vault');
  const src = join(dir, 'src');
  await mkdir(src);
  await fill(src);
  await ferryOk(['init', vault, '--kdf-log-n', '12'], env);
  await ferryOk(['seed', '--vault', vault, '--item', 'it', '--kind', 'files', '--disk', join(dir, 'd1'), src], env);
  await ferryOk(['import', '--vault', vault, join(dir, 'd1')], env);
  return { vault, src };
}

/** Like run, but throws with the tool's stderr when it fails. */
export async function must(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<Buffer> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

export async function withTmp<T>(fn: (dir: string) => Promise<T>, base = tmpdir()): Promise<T> {
  const dir = await mkdtemp(join(base, 'ferry-test-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** SHA-256 of a file, read by a child process (safe on FUSE mounts). */
export async function fileHash(path: string): Promise<string> {
  const out = await must('sha256sum', [path]);
  return out.toString().split(' ')[0];
}

/** Mounts with a FUSE tool in its own process, runs fn, always unmounts. */
export async function withFuseMount<T>(mountCmd: string[], mountpoint: string, fn: () => Promise<T>): Promise<T> {
  await must(mountCmd[0], mountCmd.slice(1));
  try {
    return await fn();
  } finally {
    const r = await run('fusermount', ['-u', mountpoint]);
    if (r.code !== 0) await run('umount', ['-l', mountpoint]);
  }
}

export { execFile };
