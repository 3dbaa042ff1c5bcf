// One writer at a time per vault. The lock is the object `locks/writer`,
// created exclusively (Backend.putNew), holding who took it and when. Readers
// take no lock. A holder refreshes it while it runs; a lock whose process is
// gone (same host, pid dead or reused, or the host rebooted) is broken
// automatically with a note (onNote: nothing is wrong, so no warning); one not refreshed for `staleAfterMs` is
// reported as probably stale and broken only on request (--break-lock),
// since a process on another host cannot be checked from here.
//
// Why at most one process holds it; test/lock-race.test.ts races it.
// Breaking, refreshing and releasing all change a lock the process read a
// moment before, and that moment was the trouble: two processes that both
// judged version L dead could both "delete L if it is still L", the second
// deleting the lock the first had just created in its place, and both then
// held it; a refresh (read, then put) could overwrite a successor's lock the
// same way. Renaming the lock aside to look at it does not cure this: when
// the renamed lock turns out to be a successor's, it cannot be put back once
// a third process has taken the free name. So the lock is never changed by
// read-then-write alone:
//
// - Versions. Each write of locks/writer is a version whose bytes are never
//   written again (a random id and times; a vault's codec also seals with a
//   random nonce). The lock is created only by putNew, and nothing ever puts
//   an old version back.
// - Claims. To replace or remove version V, a process first creates
//   claimName(locks/writer, V) with putNew, saying who it is; then reads the
//   lock again and acts only if it still holds exactly V; then deletes its
//   claim. putNew is exclusive, so one process at a time claims V. A claim is
//   deleted only by its owner, and replaced only once its owner is dead (a
//   crash between claiming and finishing), by this same procedure on the
//   claim object itself (so a claim on the claim: again one winner).
// - So between a claimant's read of V and its change, nothing else changes
//   locks/writer: creating fails (the name is taken), and changing V needs
//   V's claim, which the claimant holds. A breaker therefore only ever
//   removes the version it judged, never a successor's lock. What it judged
//   is about V's owner ("pid 123 on this host is dead"), which once true
//   stays true, unlike "locks/writer holds V".
// - Hence a process holds the lock from its successful putNew until its
//   version is changed, which only it does (refresh, release) or a claimant
//   who found that version's owner dead or was told --break-lock. Two live
//   processes hold it at once only if someone ran --break-lock against a
//   live holder (or took over a live claim of another host with it), or a
//   live local process was judged dead (pid, start time and boot id make
//   that unlikely): the holder learns at its next refresh() or verify(), and
//   writers call verify() before each commit others rely on.
//
// Only putNew, get, put and delete are needed, so this holds on any backend
// whose putNew is exclusive (a directory: link(2); Azure: If-None-Match: *).
// A claim left by a crash is harmless once its version is gone, and taken
// over if its version is still there. (A ferry from before claims breaks
// locks the old way; do not mix versions on one vault.)
import { onInterrupt } from '../format/interrupt.js';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { EXIT, FerryError } from '../format/errors.js';
import { Backend } from './backend.js';

export const LOCK_NAME = 'locks/writer';
export const DEFAULT_STALE_AFTER_MS = 24 * 3600 * 1000;
export const DEFAULT_REFRESH_MS = 10 * 60 * 1000;
/** Claims on a version of the lock (see above) live beside it, under this prefix. */
export const CLAIM_PREFIX = 'locks/claim-';
/** How long acquireLock waits for another process that is breaking or releasing the lock. */
export const DEFAULT_CLAIM_WAIT_MS = 5000;
/** Claims on claims on claims: each level takes one more process dying mid-claim. */
const MAX_CLAIM_DEPTH = 3;

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
  /** How long to wait for another process that is breaking or releasing the lock before LOCKED. */
  claimWaitMs?: number;
  /** 0 disables the refresh timer. */
  refreshMs?: number;
  command?: string;
  onWarning?: (message: string) => void;
  /**
   * What is worth telling but is no warning: a lock (or a claim on it) left by
   * a process that is gone was removed. Without it, these go to onWarning.
   */
  onNote?: (message: string) => void;
  // Injected in tests.
  now?: () => number;
  host?: string;
  pid?: number;
  /** Whether the process described by `info` (on this host) still runs. */
  isAlive?: (info: LockInfo) => boolean;
}

type WriterLockOptions = Required<Pick<LockOptions, 'codec' | 'now'>> & LockOptions;

export class WriterLock {
  #lost = false;
  #timer: NodeJS.Timeout | undefined;
  #released = false;
  /** Our version of the lock object, as last written. */
  #raw: Buffer;
  /** refresh, verify and release run one at a time: a refresh holds a claim on our version that verify must not take for a breaker's. */
  #queue: Promise<unknown> = Promise.resolve();

  /** Unregisters the release on Ctrl-C. */
  #unhook: () => void;

  constructor(
    private readonly backend: Backend,
    readonly info: LockInfo,
    raw: Buffer,
    private readonly opts: WriterLockOptions,
  ) {
    this.#raw = raw;
    // interrupted, the process releases its lock before it exits (else the next command finds it and breaks it)
    this.#unhook = onInterrupt(() => this.release());
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

  /**
   * Asks the backend whether the lock is still ours: the lock object holds our
   * version, and no other process has claimed that version to break it. If
   * not, marks the lock lost. Throws LOCK_LOST (as assertHeld does) unless
   * held; a backend error is thrown as is (nothing confirmed: do not commit).
   * assertHeld() only knows what the last refresh found; call this right
   * before a commit others will rely on, such as writing a point.
   */
  verify(): Promise<void> {
    return this.#serial(async () => {
      this.assertHeld();
      const current = await getOrNull(this.backend, LOCK_NAME);
      if (!current || !current.equals(this.#raw)) this.#lose('another process broke or replaced it');
      else if (await this.backend.exists(claimName(LOCK_NAME, this.#raw))) this.#lose('another process is breaking it (--break-lock?)');
      this.assertHeld();
    });
  }

  /** Rewrites the lock with a new time, if it is still ours (under a claim, see the top of this file). */
  refresh(): Promise<void> {
    return this.#serial(async () => {
      if (this.#released || this.#lost) return;
      const next: LockInfo = { ...this.info, refreshed: new Date(this.opts.now()).toISOString() };
      const raw = await this.opts.codec.encode(LOCK_NAME, next);
      let r: Swap;
      try {
        r = await swapIfUnchanged(this.backend, LOCK_NAME, this.#raw, raw, this.#claims('refreshing its lock'));
      } catch (err) {
        // The put may have landed before the error (a failed directory fsync): bytes only we wrote are ours.
        if ((await getOrNull(this.backend, LOCK_NAME).catch(() => null))?.equals(raw)) this.#raw = raw;
        throw err;
      }
      if (r.status === 'done') {
        this.#raw = raw;
        this.info.refreshed = next.refreshed;
      } else {
        this.#lose(r.status === 'changed' ? 'another process broke or replaced it' : 'another process is breaking it (--break-lock?)');
      }
    });
  }

  /** Removes the lock if it is still ours. */
  async release(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#unhook();
    if (this.#released) return;
    this.#released = true;
    // Even when lost: the check runs under a claim, and removes only our own version.
    try {
      await this.#serial(() => swapIfUnchanged(this.backend, LOCK_NAME, this.#raw, null, this.#claims('releasing its lock')));
    } catch (err) {
      // The work is done (or failed on its own); a lock left behind is found
      // stale and removed by the next writer on this host.
      this.opts.onWarning?.(`could not release the writer lock on ${this.backend.location} (${(err as Error).message}); the next command finds it stale and removes it`);
    }
  }

  #lose(why: string): void {
    if (this.#lost) return;
    this.#lost = true;
    this.opts.onWarning?.(`lost the writer lock on ${this.backend.location}: ${why}`);
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => {});
    return run;
  }

  #claims(doing: string): Claims {
    const { pid, host, boot, pidStart } = this.info;
    // A holder never takes over a claim on its own version from another host: that is someone breaking it.
    return claimsFor(this.opts, { pid, host, boot, pidStart }, doing, false);
  }
}

/**
 * Takes the writer lock or throws LOCKED (exit 11) naming the holder. Breaks a
 * lock whose local process is gone, telling `onNote` (else `onWarning`).
 */
export async function acquireLock(backend: Backend, options: LockOptions = {}): Promise<WriterLock> {
  const opts = { ...options, codec: options.codec ?? plainLockCodec, now: options.now ?? Date.now };
  const host = opts.host ?? hostname();
  const pid = opts.pid ?? process.pid;
  const isAlive = opts.isAlive ?? localProcessAlive;
  const staleAfter = opts.staleAfterMs ?? DEFAULT_STALE_AFTER_MS;
  const self = opts.pid === undefined && opts.host === undefined ? processIdentity() : {};
  const claims = claimsFor(opts, { pid, host, ...self }, 'breaking the lock', !!opts.breakLock);
  const waitMs = opts.claimWaitMs ?? DEFAULT_CLAIM_WAIT_MS;
  const waitUntil = performance.now() + waitMs;

  // A few rounds: breaking a dead lock and racing another writer both end in a retry.
  for (let round = 0; round < 5; round++) {
    const now = new Date(opts.now()).toISOString();
    const info: LockInfo = { id: randomBytes(8).toString('hex'), pid, host, ...self, created: now, refreshed: now, command: opts.command };
    const raw = await opts.codec.encode(LOCK_NAME, info);
    try {
      await backend.putNew(LOCK_NAME, raw);
      // Read back: only a --break-lock racing us can have removed it already.
      const back = await getOrNull(backend, LOCK_NAME);
      if (!back?.equals(raw)) continue;
      return new WriterLock(backend, info, raw, opts);
    } catch (err) {
      if (!isCode(err, 'OBJECT_EXISTS')) throw err;
    }

    const held = await readObject(backend, LOCK_NAME, opts.codec);
    if (!held) continue; // released meanwhile
    const h = held.info;
    const who = h ? describeHolder(h) : 'an unreadable lock object';
    const dead = h !== null && h.host === host && !isAlive(h);
    if (opts.breakLock || dead) {
      // Removes exactly the version judged here, never a successor's (see the top of this file).
      const r = await swapIfUnchanged(backend, LOCK_NAME, held.raw, null, claims);
      if (r.status === 'done') {
        if (opts.breakLock) {
          opts.onWarning?.(`breaking the lock on ${backend.location} held by ${who} (--break-lock)${h && h.host === host && !dead ? ': that process is still running, and stops before its next write' : ''}`);
        } else {
          (opts.onNote ?? opts.onWarning)?.(`removed a stale lock on ${backend.location}: ${who} is no longer running`);
        }
      } else if (r.status === 'busy') {
        // Another process is breaking (or its holder releasing) this very version: let it finish, then look again.
        if (performance.now() >= waitUntil) {
          const c = r.claimant;
          const hint =
            c && c.host !== host
              ? `if no ferry is running on ${c.host}, rerun with --break-lock`
              : 'run the command again once it has finished';
          throw new FerryError(
            'LOCKED',
            `vault ${backend.location} is locked by ${who}, and ${c ? describeHolder(c) : 'another process'} has been breaking or releasing that lock for over ${waitMs >= 1000 ? `${Math.round(waitMs / 1000)} s` : `${waitMs} ms`}; ${hint}`,
            { location: backend.location, holder: h, claimant: c, stale: true },
            EXIT.locked,
          );
        }
        await sleep(5 + Math.random() * 20);
        round--;
      }
      continue; // 'changed': someone else removed or replaced it; look again
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

/** The name of the claim on version `raw` of object `name` (see the top of this file). */
export function claimName(name: string, raw: Buffer): string {
  return CLAIM_PREFIX + createHash('sha256').update(name).update('\0').update(raw).digest('hex').slice(0, 32);
}

type Swap = { status: 'done' } | { status: 'changed' } | { status: 'busy'; claimant: LockInfo | null };

interface Claims {
  codec: LockCodec;
  /** Who we are, fresh for each claim object. */
  me(): LockInfo;
  /** Whether the owner of a claim is gone, so the claim may be taken over. */
  ownerGone(info: LockInfo | null): boolean;
  onWarning?: (message: string) => void;
  onNote?: (message: string) => void;
}

function claimsFor(
  opts: Pick<LockOptions, 'isAlive' | 'onWarning' | 'onNote'> & { codec: LockCodec; now: () => number },
  who: Pick<LockInfo, 'pid' | 'host' | 'boot' | 'pidStart'>,
  doing: string,
  breakLock: boolean,
): Claims {
  const isAlive = opts.isAlive ?? localProcessAlive;
  return {
    codec: opts.codec,
    me: () => {
      const now = new Date(opts.now()).toISOString();
      return { id: randomBytes(8).toString('hex'), ...who, created: now, refreshed: now, command: doing };
    },
    // As for the lock itself: a local owner is checked; one on another host (or unreadable) is gone only on --break-lock.
    ownerGone: (c) => (c && c.host === who.host ? !isAlive(c) : breakLock),
    onWarning: opts.onWarning,
    onNote: opts.onNote ?? opts.onWarning,
  };
}

/**
 * Replaces (`next`) or removes (null) object `name` if it holds exactly
 * `expected`, under the claim on `expected`: 'done'; 'changed' if it holds
 * something else or nothing; 'busy' if a live process holds the claim.
 */
async function swapIfUnchanged(backend: Backend, name: string, expected: Buffer, next: Buffer | null, claims: Claims, depth = 0): Promise<Swap> {
  const claim = claimName(name, expected);
  const mine = await claims.codec.encode(claim, claims.me());
  for (let attempt = 0; ; attempt++) {
    try {
      await backend.putNew(claim, mine);
      break;
    } catch (err) {
      if (!isCode(err, 'OBJECT_EXISTS')) throw err;
    }
    const other = await readObject(backend, claim, claims.codec);
    if (other && (depth >= MAX_CLAIM_DEPTH || !claims.ownerGone(other.info))) return { status: 'busy', claimant: other.info };
    if (other) {
      // Its owner died between claiming and finishing: take its claim over, by the same rule one level up.
      const r = await swapIfUnchanged(backend, claim, other.raw, mine, claims, depth + 1);
      if (r.status === 'done') {
        claims.onNote?.(`took over a claim on the lock left by ${other.info ? describeHolder(other.info) : 'an unreadable claim'}`);
        break;
      }
      if (r.status === 'busy') return r;
    }
    // The claim went or changed meanwhile: its owner finished (or another took it over); look again.
    if (attempt >= 3) return { status: 'busy', claimant: other?.info ?? null };
  }
  // The claim on `expected` is ours: until we delete it, no other process changes `name` while it holds `expected`.
  try {
    const current = await getOrNull(backend, name);
    if (!current?.equals(expected)) return { status: 'changed' };
    if (next) await backend.put(name, next);
    else await backend.delete(name);
    return { status: 'done' };
  } finally {
    // Ours alone to delete: it is replaced only once we are dead. If this fails, the claim stays
    // behind, harmless once `expected` is gone, and taken over once we have exited.
    await backend.delete(claim).catch((err) => claims.onWarning?.(`could not remove ${claim} from ${backend.location}: ${(err as Error).message}`));
  }
}

function isCode(err: unknown, code: string): boolean {
  return err instanceof FerryError && err.code === code;
}

async function getOrNull(backend: Backend, name: string): Promise<Buffer | null> {
  try {
    return await backend.get(name);
  } catch (err) {
    if (isCode(err, 'OBJECT_MISSING')) return null;
    throw err;
  }
}

/** A lock or claim object and what it says (null if it does not decode as one). */
async function readObject(backend: Backend, name: string, codec: LockCodec): Promise<{ raw: Buffer; info: LockInfo | null } | null> {
  const raw = await getOrNull(backend, name);
  if (!raw) return null;
  try {
    const info = await codec.decode(name, raw);
    if (typeof info?.id !== 'string' || typeof info.pid !== 'number' || typeof info.host !== 'string') return { raw, info: null };
    return { raw, info };
  } catch {
    return { raw, info: null };
  }
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
