// Reads small files off the main thread, a batch at a time.
//
// A backup of many small files spends its main thread on the open, read and
// close of each one: three fs/promises calls, three thread-pool round trips
// and their promises per file. With ferry's addon, one call (readFiles) does
// a whole batch on a thread of libuv's pool, into one buffer per batch.
// Without it, reader threads do the same with synchronous calls, a batch of
// files per message, into one buffer per batch that moves back to the main
// thread without a copy (transferred, not shared: a shared buffer would stay
// alive until the reader thread's next garbage collection, which an idle
// reader does not run). Both check that each file is still the one listed,
// in the same words (tests compare them).
import { createHash } from 'node:crypto';
import { closeSync, constants as C, fstatSync, openSync, readSync, type BigIntStats } from 'node:fs';
import type { Worker } from 'node:worker_threads';
import { nativeAddon } from '../format/native.js';
import { startWorker } from '../format/threads.js';
import { errnoCode, errnoText } from '../format/native.js';
import { splitTime } from '../format/volume/catalog.js';
import { freeBuffer } from '../format/buffers.js';
import { kindOf } from '../format/fsio.js';

export interface ReadRequest {
  path: Uint8Array;
  /** Bytes to read from the start of the file (its size at lstat). */
  length: number;
  /** The file as the walk saw it: what is opened must still be that file. */
  dev: bigint;
  ino: bigint;
  /** Its modification time then: another one (or a larger size) means it was written since. */
  mtimeNs?: bigint;
  /** When given: the SHA-256 of each `chunk` bytes of what was read (the volume's chunk checksums), taken here. */
  chunk?: number;
}

/** Where the file's bytes are in the batch buffer and how many were read, or the error (message and errno code) that stopped it. */
export interface ReadReply {
  offset?: number;
  got?: number;
  error?: string;
  code?: string;
  /** The file's size when it was opened, and whether it changed since the walk listed it. */
  size?: number;
  changed?: boolean;
  /** Where the chunk hashes of what was read are in the batch buffer (32 bytes each, as many chunks as `got` spans). */
  hashAt?: number;
}

export interface ReadBatch {
  id: number;
  reqs: ReadRequest[];
}

export interface ReadBatchResult {
  id: number;
  buffer: ArrayBuffer;
  replies: ReadReply[];
}

/**
 * How a source file is opened: O_NOATIME, as a backup should not change what
 * it backs up (refused with EPERM on files of other users unless root: then
 * READ_FLAGS_ATIME); O_NONBLOCK, as a fifo swapped in since the lstat must
 * not hang the walk (no effect on files).
 */
export const READ_FLAGS = C.O_RDONLY | C.O_NOATIME | C.O_NOFOLLOW | C.O_NONBLOCK;
export const READ_FLAGS_ATIME = C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK;

/** The error code of a source file that is no longer what the walk listed (see changedSince). */
export const SOURCE_CHANGED = 'SOURCE_CHANGED';

const NOT_REGULAR = (mode: number) => `it is now ${kindOf(mode)}, not the regular file that was listed; left out`;
const REPLACED = 'it was replaced by another file since it was listed; left out';
const SYMLINK_NOW = 'it is now a symlink, not the regular file that was listed; left out';

/**
 * Why a source file opened for reading is not the one the walk listed, or
 * null when it is. Between the lstat and the open its path may have become a
 * folder (reads fail with EISDIR), a fifo (opened without blocking, it reads
 * as empty) or another file (saved over by rename): what is read must be the
 * file whose metadata is stored.
 */
export function changedSince(st: BigIntStats, dev: bigint, ino: bigint): string | null {
  if (!st.isFile()) return NOT_REGULAR(Number(st.mode));
  if (st.dev !== dev || st.ino !== ino) return REPLACED;
  return null;
}

/** Whether the same file was written since the walk listed it: a new modification time, or larger. */
export function writtenSince(st: BigIntStats, mtimeNs: bigint, size: number): boolean {
  return st.mtimeNs !== mtimeNs || st.size > BigInt(size);
}

/** The error of an open refused by O_NOFOLLOW: the path became a symlink since it was listed. */
export function symlinkSince(err: unknown): Error | null {
  if ((err as NodeJS.ErrnoException)?.code !== 'ELOOP') return null;
  return Object.assign(new Error(SYMLINK_NOW), { code: SOURCE_CHANGED });
}

function openForReadSync(path: Buffer): number {
  try {
    return openSync(path, READ_FLAGS);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw symlinkSince(err) ?? err;
    try {
      return openSync(path, READ_FLAGS_ATIME);
    } catch (err2) {
      throw symlinkSince(err2) ?? err2;
    }
  }
}

/** Reads one file from its start into `into`; never throws. With `dev` and `ino`, only that very file is read. */
export function readInto(path: Buffer, into: Uint8Array, dev?: bigint, ino?: bigint, mtimeNs?: bigint): ReadReply {
  let fd: number;
  try {
    fd = openForReadSync(path);
  } catch (err) {
    return { error: (err as Error).message, code: (err as NodeJS.ErrnoException).code };
  }
  try {
    let size: number | undefined;
    let changed = false;
    if (dev !== undefined && ino !== undefined) {
      const st = fstatSync(fd, { bigint: true });
      const why = changedSince(st, dev, ino);
      if (why) return { error: why, code: SOURCE_CHANGED };
      size = Number(st.size);
      changed = mtimeNs !== undefined && writtenSince(st, mtimeNs, into.length);
    }
    let got = 0;
    while (got < into.length) {
      const n = readSync(fd, into, got, into.length - got, got);
      if (n === 0) break;
      got += n;
    }
    return { got, size, changed };
  } catch (err) {
    return { error: (err as Error).message, code: (err as NodeJS.ErrnoException).code };
  } finally {
    try {
      closeSync(fd);
    } catch {
      /* read already done or failed */
    }
  }
}

/** Bytes a request takes in its batch buffer: its data, then room for its chunk hashes, 8-byte aligned. */
function room(r: ReadRequest): number {
  const hashes = r.chunk ? Math.ceil(r.length / r.chunk) * 32 : 0;
  return (r.length + hashes + 7) & ~7;
}

/** Reads a batch into one new buffer (each file at an 8-byte aligned offset, its chunk hashes after it). */
export function readBatch(m: ReadBatch): ReadBatchResult {
  let total = 0;
  for (const r of m.reqs) total += room(r);
  const buffer = new ArrayBuffer(total);
  const bytes = new Uint8Array(buffer);
  let at = 0;
  const replies = m.reqs.map((r) => {
    const path = Buffer.from(r.path.buffer, r.path.byteOffset, r.path.byteLength);
    const data = new Uint8Array(buffer, at, r.length);
    const reply = readInto(path, data, r.dev, r.ino, r.mtimeNs);
    if (reply.got !== undefined) {
      reply.offset = at;
      if (r.chunk) {
        reply.hashAt = at + r.length;
        const got = data.subarray(0, reply.got);
        const sha256Chunks = nativeAddon()?.sha256Chunks;
        if (sha256Chunks) sha256Chunks(got, r.chunk, bytes.subarray(reply.hashAt));
        else {
          for (let c = 0, h = reply.hashAt; c < got.length; c += r.chunk, h += 32) {
            bytes.set(createHash('sha256').update(got.subarray(c, c + r.chunk)).digest(), h);
          }
        }
      }
    }
    at += room(r);
    return reply;
  });
  return { id: m.id, buffer, replies };
}

const WORKER_URL = new URL('./reader-worker.js', import.meta.url);
/** Files and bytes per batch: one batch is one buffer, alive while any of its files' data is. */
const BATCH = 32;
const BATCH_BYTES = 2 * 1024 * 1024;

/** A file's data as read (`data`), or why it could not be read. */
export interface SmallRead {
  data?: Buffer;
  error?: string;
  code?: string;
  size?: number;
  changed?: boolean;
  /** The chunk hashes of `data`, when asked for. */
  hashes?: Buffer;
  /**
   * `data` lies in a batch's buffer with other files' data: called (once,
   * any number of calls) when it is no longer needed, the batch's buffer is
   * freed once every file of it is: at once, not at some later collection.
   */
  release?: () => void;
}

interface Slot {
  worker: Worker;
  waiting: Map<number, { resolve: (r: SmallRead) => void; chunk?: number }[]>;
  queued: number;
}

type Waiting = { req: ReadRequest; resolve: (r: SmallRead) => void };

/** Words per request and per reply of the addon's readFiles (READ_REQ, READ_REPLY in native/ferry_native.c). */
const REQ = 8;
const REPLY = 4;
const SYSCALLS = ['', 'open', 'fstat', 'read'];

/**
 * Reads small files off the main thread; `read` resolves with a file's bytes.
 * With ferry's addon, batches run on libuv's pool (readFiles), `threads` at
 * a time; without it, on as many reader threads of their own.
 */
export class SmallFileReader {
  private readonly slots: Slot[] = [];
  private batch: Waiting[] = [];
  private batchBytes = 0;
  private nextId = 1;
  private scheduled = false;
  private failure: Error | null = null;
  private readonly native: NonNullable<ReturnType<typeof nativeAddon>>['readFiles'];
  private readonly maxInFlight: number;
  private inFlight = 0;
  private readonly queued: Waiting[][] = [];

  /** `native: false`: reader threads even when the addon is there (tests compare the two). */
  constructor(threads = 2, opts: { native?: boolean } = {}) {
    // twice the threads: a batch waits on the pool while the busy main thread takes the last one's reply
    this.maxInFlight = Math.max(1, threads) * 2;
    this.native = opts.native === false ? undefined : nativeAddon()?.readFiles;
    if (this.native) return;
    for (let i = 0; i < threads; i++) {
      const worker = startWorker(WORKER_URL);
      worker.unref();
      const slot: Slot = { worker, waiting: new Map(), queued: 0 };
      worker.on('message', (m: ReadBatchResult) => {
        const w = slot.waiting.get(m.id);
        if (!w) return;
        slot.waiting.delete(m.id);
        slot.queued -= w.length;
        w.forEach((x, k) => {
          const r = m.replies[k];
          if (r.got === undefined) return x.resolve({ error: r.error, code: r.code });
          const hashes = r.hashAt !== undefined ? Buffer.from(m.buffer, r.hashAt, Math.ceil(r.got / x.chunk!) * 32) : undefined;
          x.resolve({ data: Buffer.from(m.buffer, r.offset!, r.got), size: r.size, changed: r.changed, hashes });
        });
      });
      worker.on('error', (err) => this.fail(slot, err));
      worker.on('exit', (code) => this.fail(slot, new Error(`a reader thread stopped (exit code ${code})`)));
      this.slots.push(slot);
    }
  }

  private fail(slot: Slot, err: Error): void {
    this.failure ??= err;
    for (const w of slot.waiting.values()) for (const x of w) x.resolve({ error: err.message });
    slot.waiting.clear();
    slot.queued = 0;
  }

  /**
   * Reads up to `length` bytes from the start of the file at `path`, if it is
   * still the regular file `dev`/`ino`; with `chunk`, hashes each chunk of it too.
   */
  read(path: Buffer, length: number, dev: bigint, ino: bigint, mtimeNs?: bigint, chunk?: number): Promise<SmallRead> {
    if (this.failure) return Promise.resolve({ error: this.failure.message });
    return new Promise((resolve) => {
      this.batch.push({ req: { path, length, dev, ino, mtimeNs, chunk }, resolve });
      this.batchBytes += length;
      if (this.batch.length >= BATCH || this.batchBytes >= BATCH_BYTES) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => {
          this.scheduled = false;
          this.flush();
        });
      }
    });
  }

  private flush(): void {
    const b = this.batch;
    if (b.length === 0) return;
    this.batch = [];
    this.batchBytes = 0;
    if (this.failure) {
      for (const x of b) x.resolve({ error: this.failure.message });
      return;
    }
    if (this.native) {
      this.queued.push(b);
      this.sendNative();
      return;
    }
    // the thread with the least queued work takes the batch
    let slot = this.slots[0];
    for (const s of this.slots) if (s.queued < slot.queued) slot = s;
    const id = this.nextId++;
    slot.waiting.set(id, b.map((x) => ({ resolve: x.resolve, chunk: x.req.chunk })));
    slot.queued += b.length;
    const msg: ReadBatch = { id, reqs: b.map((x) => x.req) };
    slot.worker.postMessage(msg);
  }

  /** Starts the next queued batches on libuv's pool, up to maxInFlight at a time. */
  private sendNative(): void {
    while (this.inFlight < this.maxInFlight && this.queued.length > 0) {
      const b = this.queued.shift()!;
      if (this.failure) {
        for (const x of b) x.resolve({ error: this.failure.message });
        continue;
      }
      try {
        this.sendBatch(b);
      } catch (err) {
        // an addon that refuses these arguments, or no memory for the batch: the callers read by themselves
        this.failure ??= err as Error;
        for (const x of b) x.resolve({ error: this.failure.message });
      }
    }
  }

  /** One batch to the addon's readFiles; throws (nothing in flight) when it cannot be sent. */
  private sendBatch(b: Waiting[]): void {
    const reqs = new BigInt64Array(b.length * REQ);
    let pathBytes = 0;
    for (const x of b) pathBytes += x.req.path.length + 1;
    const paths = Buffer.allocUnsafe(pathBytes);
    let pathAt = 0;
    let total = 0;
    b.forEach((x, i) => {
      const r = x.req;
      const q = i * REQ;
      paths.set(r.path, pathAt);
      paths[pathAt + r.path.length] = 0;
      reqs[q] = BigInt(pathAt);
      reqs[q + 1] = BigInt(r.length);
      reqs[q + 2] = r.dev;
      reqs[q + 3] = r.ino;
      // the time as seconds and nanoseconds: nanoseconds past 2262 do not fit 64 bits
      const [sec, ns] = r.mtimeNs === undefined ? [0n, -1n] : splitTime(r.mtimeNs);
      reqs[q + 4] = sec;
      reqs[q + 5] = BigInt(r.chunk ?? 0);
      reqs[q + 6] = BigInt(total);
      reqs[q + 7] = ns;
      pathAt += r.path.length + 1;
      total += room(r);
    });
    // not zeroed here (its page faults would be the main thread's): the addon zeroes what it does not write
    const out = Buffer.allocUnsafeSlow(Math.max(total, 8));
    const replies = new Float64Array(b.length * REPLY);
    const done = (errno: number | null) => {
      this.inFlight--;
      if (errno !== null) this.failure ??= new Error(`the addon's file reads failed (${errnoText(errno, 'readFiles')})`);
      const rs = b.map((x, i) => (this.failure && errno !== null ? { error: this.failure.message } : nativeReply(x.req, replies, i, out, Number(reqs[i * REQ + 6]))));
      // the batch's buffer goes when the last file read into it is released
      let live = 0;
      const gone = () => {
        if (--live === 0) freeBuffer(out);
      };
      for (const r of rs) {
        if (!r.data) continue;
        live++;
        let held = true;
        r.release = () => {
          if (held) {
            held = false;
            gone();
          }
        };
      }
      if (live === 0) freeBuffer(out);
      b.forEach((x, i) => x.resolve(rs[i]));
      this.sendNative();
    };
    this.native!(new Uint8Array(reqs.buffer), paths, out, new Uint8Array(replies.buffer), done);
    this.inFlight++;
  }

  /** Whether reads can still go to the threads (after close(), callers read by themselves). */
  get open(): boolean {
    return this.failure === null;
  }

  async close(): Promise<void> {
    this.failure ??= new Error('the reader is closed');
    for (const b of this.queued.splice(0)) for (const x of b) x.resolve({ error: this.failure.message });
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}

/** One file's result of the addon's readFiles: its reply words, its data at `at` in `out`. */
function nativeReply(req: ReadRequest, replies: Float64Array, i: number, out: Buffer, at: number): SmallRead {
  const [status, got, size, extra] = replies.subarray(i * REPLY, i * REPLY + REPLY);
  if (status === 0) {
    // (the hashes copied: they outlive the data's release, and the batch's buffer with it)
    const hashes = req.chunk ? Buffer.from(out.subarray(at + req.length, at + req.length + Math.ceil(got / req.chunk) * 32)) : undefined;
    return { data: out.subarray(at, at + got), size, changed: extra === 1, hashes };
  }
  if (status === -1) return { error: NOT_REGULAR(size), code: SOURCE_CHANGED };
  if (status === -2) return { error: REPLACED, code: SOURCE_CHANGED };
  if (status === -3) return { error: SYMLINK_NOW, code: SOURCE_CHANGED };
  const syscall = SYSCALLS[extra] ?? 'read';
  // Node names the path of a failed open, not of a failed fstat or read
  return { error: errnoText(status, syscall, syscall === 'open' ? Buffer.from(req.path).toString() : undefined), code: errnoCode(status) ?? `errno ${status}` };
}

/** A Node-style error from a reader thread's reply. */
export function replyError(r: SmallRead): Error {
  const err = new Error(r.error ?? 'read failed') as NodeJS.ErrnoException;
  if (r.code) err.code = r.code;
  return err;
}
