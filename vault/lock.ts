// One writer at a time per vault. The lock is the object `locks/writer`,
// created exclusively (Backend.putNew), holding who took it and when. Readers
// take no lock. A holder refreshes it while it runs; a lock whose process is
// gone (same host, pid dead or reused, or the host rebooted) is broken
// automatically with a warning; one not refreshed for `staleAfterMs` is
// reported as probably stale and broken only on request (--break-lock),
// since a process on another host cannot be checked from here.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { EXIT, FerryError } from '../format/errors.js';
import { Backend } from './backend.js';

export const LOCK_NAME = 'locks/writer';
export const DEFAULT_STALE_AFTER_MS = 24 * 3600 * 1000;
export const DEFAULT_REFRESH_MS = 10 * 60 * 1000;

export interface LockInfo {
  /** Random, so a holder can tell its own lock from a successor's. */
  id: string;
  pid: number;
  host: string;
  /** Kernel boot id: a pid from before a reboot is dead whatever it is now. */
  boot?: string;
  /** Process start time (clock ticks since boot): a pid reused by another process does not match. */
  pidStart?: number;
  /** ISO times. */
  created: string;
  refreshed: string;
  /** What the holder is doing, for the message a waiting writer sees. */
  command?: string;
}

/** How the lock object is stored; the vault seals it like every other object. */
export interface LockCodec {
  encode(name: string, info: LockInfo): Buffer | Promise<Buffer>;
  decode(name: string, data: Buffer): LockInfo | Promise<LockInfo>;
}

export const plainLockCodec: LockCodec = {
  encode: (_name, info) => Buffer.from(JSON.stringify(info)),
  decode: (_name, data) => JSON.parse(data.toString('utf8')) as LockInfo,
};

export interface LockOptions {
  codec?: LockCodec;
  /** Break whatever lock is there (the user said the holder is gone). */
  breakLock?: boolean;
  staleAfterMs?: number;
  /** 0 disables the refresh timer. */
  refreshMs?: number;
  command?: string;
  onWarning?: (message: string) => void;
  // Injected in tests.
  now?: () => number;
  host?: string;
  pid?: number;
  /** Whether the process described by `info` (on this host) still runs. */
  isAlive?: (info: LockInfo) => boolean;
}

export class WriterLock {
  #lost = false;
  #timer: NodeJS.Timeout | undefined;
  #released = false;

  constructor(
    private readonly backend: Backend,
    readonly info: LockInfo,
    private readonly opts: Required<Pick<LockOptions, 'codec' | 'now'>> & LockOptions,
  ) {
    const every = opts.refreshMs ?? DEFAULT_REFRESH_MS;
    if (every > 0) {
      this.#timer = setInterval(() => {
        this.refresh().catch((err) => opts.onWarning?.(`could not refresh the vault lock: ${(err as Error).message}`));
      }, every);
      this.#timer.unref();
    }
  }

  get lost(): boolean {
    return this.#lost;
  }

  /** Writers call this before each write: once another process took over, writing on would corrupt the vault. */
  assertHeld(): void {
    if (this.#lost || this.#released) {
      throw new FerryError(
        'LOCK_LOST',
        `the writer lock on ${this.backend.location} was ${this.#released ? 'released' : 'taken over by another process (was it broken with --break-lock?)'}; stopping before writing more`,
        { location: this.backend.location },
      );
    }
  }

  /** Rewrites the lock with a new time, after checking it is still ours. */
  async refresh(): Promise<void> {
    if (this.#released || this.#lost) return;
    const current = await readLock(this.backend, this.opts.codec);
    if (!current || current.info?.id !== this.info.id) {
      this.#lost = true;
      this.opts.onWarning?.(`lost the writer lock on ${this.backend.location}: another process broke or replaced it`);
      return;
    }
    this.info.refreshed = new Date(this.opts.now()).toISOString();
    await this.backend.put(LOCK_NAME, await this.opts.codec.encode(LOCK_NAME, this.info));
  }

  /** Removes the lock if it is still ours. */
  async release(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    if (this.#released) return;
    this.#released = true;
    const current = await readLock(this.backend, this.opts.codec);
    if (current?.info?.id === this.info.id) await this.backend.delete(LOCK_NAME);
  }
}

/**
 * Takes the writer lock or throws LOCKED (exit 11) naming the holder. Breaks a
 * lock whose local process is gone, telling `onWarning`.
 */
export async function acquireLock(backend: Backend, options: LockOptions = {}): Promise<WriterLock> {
  const opts = { ...options, codec: options.codec ?? plainLockCodec, now: options.now ?? Date.now };
  const host = opts.host ?? hostname();
  const pid = opts.pid ?? process.pid;
  const isAlive = opts.isAlive ?? localProcessAlive;
  const staleAfter = opts.staleAfterMs ?? DEFAULT_STALE_AFTER_MS;

  // A few rounds: breaking a dead lock and racing another breaker both end in a retry.
  for (let round = 0; round < 5; round++) {
    const now = new Date(opts.now()).toISOString();
    const self = opts.pid === undefined && opts.host === undefined ? processIdentity() : {};
    const info: LockInfo = { id: randomBytes(8).toString('hex'), pid, host, ...self, created: now, refreshed: now, command: opts.command };
    try {
      await backend.putNew(LOCK_NAME, await opts.codec.encode(LOCK_NAME, info));
      // Read back: another breaker may have deleted our fresh lock and taken its place.
      const back = await readLock(backend, opts.codec);
      if (back?.info?.id !== info.id) continue;
      return new WriterLock(backend, info, opts);
    } catch (err) {
      if (!(err instanceof FerryError && err.code === 'OBJECT_EXISTS')) throw err;
    }

    const held = await readLock(backend, opts.codec);
    if (!held) continue; // released meanwhile
    const h = held.info;
    const who = h ? describeHolder(h) : 'an unreadable lock object';
    if (opts.breakLock) {
      opts.onWarning?.(`breaking the lock on ${backend.location} held by ${who} (--break-lock)`);
      await breakIfUnchanged(backend, held.raw);
      continue;
    }
    if (h && h.host === host && !isAlive(h)) {
      opts.onWarning?.(`removed a stale lock on ${backend.location}: ${who} is no longer running`);
      await breakIfUnchanged(backend, held.raw);
      continue;
    }
    const age = h ? opts.now() - Date.parse(h.refreshed) : NaN;
    const stale = h ? age > staleAfter : true;
    const hint = stale
      ? h
        ? `it was last refreshed ${formatAge(age)} ago and looks stale; if no ferry is running on ${h.host}, rerun with --break-lock`
        : 'if no other ferry is writing to this vault, rerun with --break-lock'
      : `wait for it to finish; if it is gone${h && h.host !== host ? ` (ferry cannot check processes on ${h.host})` : ''}, rerun with --break-lock`;
    throw new FerryError(
      'LOCKED',
      `vault ${backend.location} is locked by ${who}; ${hint}`,
      { location: backend.location, holder: h ?? null, stale },
      EXIT.locked,
    );
  }
  throw new FerryError('LOCKED', `vault ${backend.location}: could not take the writer lock, other writers keep taking it`, { location: backend.location }, EXIT.locked);
}

async function readLock(backend: Backend, codec: LockCodec): Promise<{ raw: Buffer; info: LockInfo | null } | null> {
  let raw: Buffer;
  try {
    raw = await backend.get(LOCK_NAME);
  } catch (err) {
    if (err instanceof FerryError && err.code === 'OBJECT_MISSING') return null;
    throw err;
  }
  try {
    const info = await codec.decode(LOCK_NAME, raw);
    if (typeof info?.id !== 'string' || typeof info.pid !== 'number' || typeof info.host !== 'string') return { raw, info: null };
    return { raw, info };
  } catch {
    return { raw, info: null };
  }
}

/** Deletes the lock only if it still holds the bytes we judged, so we do not remove a successor's fresh lock. */
async function breakIfUnchanged(backend: Backend, raw: Buffer): Promise<void> {
  // A small window remains between this get and the delete; on a local
  // directory both are microseconds, and acquire() reads its own lock back.
  let now: Buffer;
  try {
    now = await backend.get(LOCK_NAME);
  } catch (err) {
    if (err instanceof FerryError && err.code === 'OBJECT_MISSING') return;
    throw err;
  }
  if (now.equals(raw)) await backend.delete(LOCK_NAME);
}

function describeHolder(h: LockInfo): string {
  return `pid ${h.pid} on ${h.host} since ${h.created}${h.command ? ` (ferry ${h.command})` : ''}`;
}

function formatAge(ms: number): string {
  if (!Number.isFinite(ms)) return 'an unknown time';
  const h = ms / 3600000;
  return h >= 48 ? `${Math.round(h / 24)} days` : h >= 1 ? `${Math.round(h)} hours` : `${Math.round(ms / 60000)} minutes`;
}

function readProc(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function bootId(): string | undefined {
  return readProc('/proc/sys/kernel/random/boot_id')?.trim();
}

function startTime(pid: number): number | undefined {
  const stat = readProc(`/proc/${pid}/stat`);
  if (!stat) return undefined;
  // Field 22; the command name (field 2) may hold spaces and parentheses, so count from the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const v = Number(fields[19]);
  return Number.isFinite(v) ? v : undefined;
}

function processIdentity(): Pick<LockInfo, 'boot' | 'pidStart'> {
  return { boot: bootId(), pidStart: startTime(process.pid) };
}

/** On this host: dead if the host rebooted since, the pid is gone, or the pid now belongs to a younger process. */
export function localProcessAlive(info: LockInfo): boolean {
  const boot = bootId();
  if (info.boot && boot && info.boot !== boot) return false;
  try {
    process.kill(info.pid, 0);
  } catch (err) {
    // EPERM: it exists, under another user.
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  if (info.pidStart !== undefined) {
    const st = startTime(info.pid);
    if (st !== undefined && st !== info.pidStart) return false;
  }
  return true;
}
