// Sealing on all cores. Compression dominates the cost of a sealed object
// (zstd level 1 runs at a few hundred MB/s, AES-GCM at GB/s), so backup and
// seed pipelines hand blocks to libuv's pool through ferry's addon
// (sealObject/openObject), or to worker threads without it. The queue is bounded: a
// producer awaits ready() before making the next block, so memory stays flat
// whatever the size of the source.
import { createHash, KeyObject } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { checkArg, FerryError, ErrorData } from '../errors.js';
import { startWorker } from '../threads.js';
import { checkName, checkOptions, corruptBody, DEFAULT_LEVEL, notAuthentic, Sealer, SealerOptions, SealOptions } from './seal.js';
import { FileRange, openRange, withRange } from '../filerange.js';
import { freeBuffer, ownsWhole, recycleBuffer, returnTo } from '../buffers.js';
import { errnoText, nativeAddon, type Native } from '../native.js';
import { decodeSealed, HEADER_SIZE, sealError, TAG_SIZE } from './layout.js';

type Op = 'seal' | 'unseal' | 'verify';

export interface TaskMessage {
  id: number;
  op: Op;
  name: string;
  data: Uint8Array;
  /** Seal these bytes of a file instead of `data` (empty): the worker maps or reads them itself. */
  range?: FileRange;
  opts?: SealOptions;
  /** Also return the SHA-256 digest (hex) of the output (sealed bytes, or for verify the input). */
  hash?: boolean;
}

export interface ResultHashes {
  sealed?: string;
}

/** A sealed object with the digest a seed manifest needs. */
export interface SealedWithHashes {
  sealed: Buffer;
  /** SHA-256 (hex) of the sealed bytes. */
  sealedSha256: string;
}

export type ResultMessage =
  | { id: number; ok: true; data: Uint8Array; hashes?: ResultHashes; /** The sealed block's memory, zeroed, to be used again. */ input?: Uint8Array }
  | { id: number; ok: false; ferry: { code: string; message: string; data: ErrorData; exitCode: number } }
  | { id: number; ok: false; internal: { message: string; stack?: string } };

export interface SealPoolOptions extends SealerOptions {
  /** Worker threads (default: os.availableParallelism()). 0 seals in the calling thread. */
  size?: number;
  /** Tasks that may wait for a worker before ready() holds producers back (default 1 per worker, at least 2: a seed with 4 held 4 more 2 MiB blocks, no faster). */
  maxQueue?: number;
  /**
   * Seal and open on libuv's pool through ferry's addon instead of worker
   * threads, when it has the calls (default true; the zstd and none
   * codecs: deflate goes to the workers).
   */
  native?: boolean;
}

interface NativeSeal {
  calls: Pick<Required<Native>, 'sealObject' | 'openObject'>;
  /** The key's bytes (zeroed by close()). */
  key: Buffer;
  codec: 'zstd' | 'none';
  level: number | undefined;
}
type Done = (err: unknown, result?: Buffer, hashes?: ResultHashes) => void;

interface Task {
  id: number;
  op: Op;
  name: string;
  data: Uint8Array;
  range?: FileRange;
  opts?: SealOptions;
  hash?: boolean;
  resolve: (b: Buffer, hashes?: ResultHashes) => void;
  reject: (e: unknown) => void;
}

interface Slot {
  worker: Worker;
  tasks: Map<number, Task>;
}

// Two tasks per worker: the next one is already waiting in the worker's inbox
// when it posts a result, so it never idles while the main thread is busy.
const PER_WORKER = 2;

const WORKER_URL = new URL('./worker.js', import.meta.url);

export { freeBuffer } from '../buffers.js';

/** Sealed results are written into buffers of the plaintext's size + 44, used again (see #out; 4 peaked a seed 5 MiB higher, no faster). */
const SPARE_OUT = 2;
/** Opened objects' buffers kept to be used again (#openOut): an evicted block's comes back as the next is opened. */
const SPARE_OPEN = 2;
/** Buffers smaller than this are neither kept nor taken from a spare list. */
const SPARE_MIN = 64 * 1024;

/** Large buffers kept to be used again, found by size; one not kept is freed at once. */
class Spares {
  readonly #list: Buffer[] = [];
  constructor(private readonly max: number) {}

  /** `size` bytes (contents undefined): a kept buffer of that size when there is one. */
  take(size: number): Buffer {
    const i = size >= SPARE_MIN ? this.#list.findIndex((b) => b.length === size) : -1;
    return i >= 0 ? this.#list.splice(i, 1)[0] : Buffer.allocUnsafeSlow(size);
  }

  /** Keeps `b` (its last user is done with it) if `keep` and there is room; frees it otherwise. */
  give(b: Buffer, keep: boolean): void {
    if (keep && b.length >= SPARE_MIN && this.#list.length < this.max) this.#list.push(b);
    else freeBuffer(b);
  }

  clear(): void {
    this.#list.length = 0;
  }
}

export class SealPool {
  readonly size: number;
  readonly maxQueue: number;
  readonly #sealer: Sealer;
  readonly #options: SealerOptions;
  readonly #slots: Slot[] = [];
  readonly #queue: Task[] = [];
  #readyWaiters: Array<() => void> = [];
  #drainWaiters: Array<() => void> = [];
  #nextId = 1;
  #running = 0;
  #closed = false;
  /** The addon's calls, when tasks run on libuv's pool (no workers); with the key's bytes and the default level. */
  readonly #native: NativeSeal | null = null;
  /** Result buffers of #native's seals, given back by the callers' freeBuffer(): their memory is used again. */
  readonly #spareOut = new Spares(SPARE_OUT);
  /** Opened objects' buffers given back by their users' freeBuffer() (#openOut). */
  readonly #spareOpen = new Spares(SPARE_OPEN);

  constructor(key: Uint8Array | KeyObject, opts: SealPoolOptions = {}) {
    const { size, maxQueue, random, native, ...sealerOpts } = opts;
    this.size = size ?? availableParallelism();
    checkArg(Number.isInteger(this.size) && this.size >= 0 && this.size <= 256, 'size', 'an integer from 0 to 256', this.size);
    this.maxQueue = maxQueue ?? Math.max(2, this.size);
    checkArg(Number.isInteger(this.maxQueue) && this.maxQueue >= 1, 'maxQueue', 'a positive integer', this.maxQueue);
    // A function cannot cross into a worker; an injected random source only makes sense in-thread.
    checkArg(random === undefined || this.size === 0, 'random', 'given only with size 0 (in-thread sealing)', 'a function');
    this.#sealer = new Sealer(key, { ...sealerOpts, random });
    this.#options = sealerOpts;
    const n = nativeAddon();
    const codec = sealerOpts.codec ?? 'zstd';
    if (this.size > 0 && native !== false && n?.sealObject && n.openObject && codec !== 'deflate') {
      this.#native = { calls: { sealObject: n.sealObject, openObject: n.openObject }, key: this.#sealer.key.export(), codec, level: sealerOpts.level };
    }
  }

  /** Whether tasks run through the addon on libuv's pool (else on worker threads, or in this thread with size 0). */
  get native(): boolean {
    return this.#native !== null;
  }

  /** Tasks accepted and not finished. */
  get pending(): number {
    return this.#queue.length + this.#running;
  }

  /** Seals `data`; with `give`, a Buffer that owns its whole memory moves to the worker without a copy (empty afterwards). */
  seal(name: string, data: Uint8Array, opts?: SealOptions, give = false): Promise<Buffer> {
    return this.#submit('seal', name, data, opts, false, undefined, give);
  }

  /**
   * Seals bytes of a file: the worker maps them (or reads them) itself, so
   * they are not copied through this thread. `range.fd` must stay open until
   * the promise settles.
   */
  sealRange(name: string, range: FileRange, opts?: SealOptions): Promise<Buffer> {
    return this.#submit('seal', name, range, opts);
  }

  /** Opens `sealed`; with `give`, a Buffer that owns its whole memory moves to the pool without a copy (empty afterwards). */
  unseal(name: string, sealed: Uint8Array, give = false): Promise<Buffer> {
    return this.#submit('unseal', name, sealed, undefined, false, undefined, give);
  }

  /**
   * Seals and returns the SHA-256 of the sealed bytes, hashed off this
   * thread. (Not of the plaintext: a plaintext digest in a plain manifest
   * would let anyone confirm a guess of a block's content, and hashing 2 MiB
   * per block cost a seed a sixth of its sealing time.) With `give`, the caller hands `data` over: a
   * Buffer that owns its whole memory moves to the worker without a copy and
   * is empty (detached) afterwards.
   */
  async sealHashed(name: string, data: Uint8Array, opts?: SealOptions, give = false): Promise<SealedWithHashes> {
    let hashes: ResultHashes | undefined;
    // Hashed here first when the data may be gone by the time we would need it.
    const sealed = await this.#submit('seal', name, data, opts, true, (h) => (hashes = h), give);
    if (!hashes) {
      // In-thread pools hash here.
      const { createHash } = await import('node:crypto');
      hashes = { sealed: createHash('sha256').update(sealed).digest('hex') };
    }
    return { sealed, sealedSha256: hashes.sealed! };
  }

  /** Checks an object's authenticity under its name without decompressing it; resolves to its SHA-256 (hex). */
  async verify(name: string, sealed: Uint8Array): Promise<string> {
    let hashes: ResultHashes | undefined;
    await this.#submit('verify', name, sealed, undefined, true, (h) => (hashes = h));
    if (!hashes) {
      const { createHash } = await import('node:crypto');
      hashes = { sealed: createHash('sha256').update(sealed).digest('hex') };
    }
    return hashes.sealed!;
  }

  /** Resolves when the queue has room: await it before producing the next block. */
  ready(): Promise<void> {
    if (this.#queue.length < this.maxQueue) return Promise.resolve();
    return new Promise((resolve) => this.#readyWaiters.push(resolve));
  }

  /** Waits for every accepted task, then stops the workers. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.pending > 0) await new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
    await Promise.all(this.#slots.splice(0).map((s) => s.worker.terminate()));
    this.#native?.key.fill(0);
    this.#spareOut.clear();
    this.#spareOpen.clear();
  }

  #submit(op: Op, name: string, input: Uint8Array | FileRange, opts?: SealOptions, hash = false, onHashes?: (h: ResultHashes | undefined) => void, give = false): Promise<Buffer> {
    if (this.#closed) return Promise.reject(new Error('SealPool is closed'));
    const range = input instanceof Uint8Array ? undefined : input;
    const data = input instanceof Uint8Array ? input : new Uint8Array(0);
    if (this.size === 0) {
      // In-thread: still asynchronous, so callers behave the same either way.
      return Promise.resolve().then(() => {
        if (range) return withRange(range, (bytes) => this.#sealer.seal(name, bytes, opts));
        if (op === 'seal') return this.#sealer.seal(name, data, opts);
        if (op === 'verify') {
          this.#sealer.verify(name, data);
          return Buffer.alloc(0);
        }
        return this.#sealer.unseal(name, data);
      });
    }
    // Argument errors belong to the caller's stack, not a worker's.
    checkArg(typeof name === 'string' && name.length > 0, 'name', 'a non-empty string', name);
    checkArg(input instanceof Uint8Array || (op === 'seal' && Number.isInteger(range?.fd) && range!.length > 0), op === 'seal' ? 'data' : 'sealed', 'a Buffer', input);
    // Our own copy, transferred to the worker: the caller keeps its buffer, and
    // a view into a large buffer never clones the whole of it. A caller that
    // hands its buffer over (`give`) saves the copy when the buffer is whole.
    const whole = ownsWhole(data);
    let copy: Uint8Array;
    if (give && whole) {
      // moved into a new ArrayBuffer (no copy) for the addon, as postMessage moves it to a worker: the caller's is empty either way
      copy = this.#native ? new Uint8Array(structuredClone(data.buffer, { transfer: [data.buffer] })) : data;
    } else {
      // (also what the addon opens: the caller may reuse or free its buffer as soon as this returns,
      // and a pool thread must never read memory a detach has freed)
      copy = new Uint8Array(data.byteLength);
      copy.set(data);
    }
    return new Promise<Buffer>((resolve, reject) => {
      this.#queue.push({
        id: this.#nextId++,
        op,
        name,
        data: copy,
        range,
        opts,
        hash,
        resolve: (b, h) => {
          onHashes?.(h);
          resolve(b);
        },
        reject,
      });
      this.#dispatch();
    });
  }

  #dispatch(): void {
    while (this.#native && this.#queue.length > 0 && this.#running < this.size * PER_WORKER) {
      this.#running++;
      this.#runNative(this.#queue.shift()!, this.#native);
    }
    while (!this.#native && this.#queue.length > 0) {
      // Fill idle workers (spawning up to size) before doubling up on busy ones.
      let slot = this.#slots.find((s) => s.tasks.size === 0);
      if (!slot && this.#slots.length < this.size) slot = this.#spawn();
      slot ??= this.#slots.find((s) => s.tasks.size < PER_WORKER);
      if (!slot) break;
      const task = this.#queue.shift()!;
      slot.tasks.set(task.id, task);
      this.#running++;
      slot.worker.ref();
      const msg: TaskMessage = { id: task.id, op: task.op, name: task.name, data: task.data, range: task.range, opts: task.opts, hash: task.hash };
      slot.worker.postMessage(msg, [task.data.buffer as ArrayBuffer]);
    }
    if (this.#queue.length < this.maxQueue && this.#readyWaiters.length > 0) {
      const waiters = this.#readyWaiters;
      this.#readyWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Runs `task` through the addon on libuv's pool; settles it, then dispatches the next. */
  #runNative(task: Task, n: NativeSeal): void {
    const done: Done = (err, result, hashes) => {
      if (err) task.reject(err);
      else task.resolve(result!, hashes);
      this.#running--;
      this.#dispatch();
      this.#checkDrained();
    };
    try {
      if (task.op === 'seal') this.#sealNative(task, n, done);
      else this.#openNative(task, n, done);
    } catch (err) {
      done(err);
    }
  }

  #sealNative(task: Task, n: NativeSeal, done: Done): void {
    checkName(task.name);
    const opts = task.opts ?? {};
    const codec = opts.codec ?? n.codec;
    // as Sealer.seal() checks them in a worker: the same USAGE errors, and no level the addon would take otherwise (0: raw; 1.5: 1)
    if (opts.codec !== undefined || opts.level !== undefined) checkOptions(opts, codec);
    const level = opts.level ?? (opts.codec === undefined ? n.level : undefined) ?? DEFAULT_LEVEL[codec];
    if (codec === 'deflate') {
      // not in the addon: in this thread (asked for per object, which ferry never does)
      const sealed = task.range ? withRange(task.range, (b) => this.#sealer.seal(task.name, b, opts)) : this.#sealer.seal(task.name, task.data, opts);
      done(null, sealed, task.hash ? { sealed: createHash('sha256').update(sealed).digest('hex') } : undefined);
      return;
    }
    const range = task.range ? openRange(task.range) : undefined;
    const plain = range ? range.data : Buffer.from(task.data.buffer, task.data.byteOffset, task.data.byteLength);
    const out = this.#out(plain.length);
    const digest = task.hash ? Buffer.allocUnsafe(32) : null;
    // a block given over (a seed's) is zeroed by the pool thread, to be taken again (takeZeroed)
    const recycle = !range && plain.length >= 1024 * 1024 && ownsWhole(task.data);
    n.calls.sealObject(n.key, Buffer.from(task.name, 'utf8'), plain, codec === 'none' ? 0 : level, out, digest, recycle, (errno, length) => {
      let err: unknown = errno === null ? null : nativeFailure('seal', task.name, errno);
      try {
        range?.check();
      } catch (e) {
        err ??= e;
      } finally {
        range?.release();
      }
      if (recycle) recycleBuffer(task.data, errno === null);
      if (err) {
        this.#giveBack(out);
        done(err);
        return;
      }
      const sealed = out.subarray(0, length!);
      // its memory comes back here when the caller frees it (freeBuffer)
      if (sealed.length !== out.length) returnTo(sealed, () => this.#giveBack(out));
      done(null, sealed, digest ? { sealed: digest.toString('hex') } : undefined);
    });
  }

  #openNative(task: Task, n: NativeSeal, done: Done): void {
    checkName(task.name);
    const sealed = Buffer.from(task.data.buffer, task.data.byteOffset, task.data.byteLength);
    const d = decodeSealed(sealed, this.#sealer.maxLength);
    if (d.problems.length > 0) throw sealError(task.name, d.problems[0]);
    const codec = d.codecName!;
    if (task.op === 'unseal' && codec === 'deflate') {
      done(null, this.#sealer.unseal(task.name, sealed));
      return;
    }
    const length = Number(d.header!.length);
    const out = task.op === 'unseal' ? this.#openOut(codec === 'none' ? sealed.length - HEADER_SIZE - TAG_SIZE : length) : null;
    const digest = task.hash ? Buffer.allocUnsafe(32) : null;
    n.calls.openObject(n.key, Buffer.from(task.name, 'utf8'), sealed, codec === 'zstd' ? 1 : 0, out, digest, (errno, status) => {
      // the sealed bytes are ours alone (a copy, or handed over): freed now, not at some later collection
      freeBuffer(task.data);
      if (errno !== null) done(nativeFailure('open', task.name, errno));
      else if (status === -1) done(notAuthentic(task.name));
      else if (typeof status === 'string') done(corruptBody(task.name, codec, status));
      else done(null, out ?? Buffer.alloc(0), digest ? { sealed: digest.toString('hex') } : undefined);
    });
  }

  /**
   * A buffer for `size` bytes of plaintext opened: a spare one when there is
   * one. Large ones come back here when their user frees them (a stored
   * disk's evicted blocks): a restore opens a 2 MiB block after another,
   * and a fresh one each time is 512 pages to fault in.
   */
  #openOut(size: number): Buffer {
    const out = this.#spareOpen.take(size);
    if (size >= SPARE_MIN) returnTo(out, () => this.#spareOpen.give(out, !this.#closed));
    return out;
  }

  /** A buffer for a sealed object of `size` bytes of plaintext: a spare one when there is one. */
  #out(size: number): Buffer {
    return this.#spareOut.take(size + HEADER_SIZE + TAG_SIZE);
  }

  #giveBack(out: Buffer): void {
    this.#spareOut.give(out, !this.#closed);
  }

  #spawn(): Slot {
    const worker = startWorker(WORKER_URL, { workerData: { key: this.#sealer.key, options: this.#options } });
    const slot: Slot = { worker, tasks: new Map() };
    worker.on('message', (m: ResultMessage) => {
      const task = slot.tasks.get(m.id);
      if (!task) return;
      slot.tasks.delete(m.id);
      if (m.ok) {
        // a sealed block's memory, back from the worker: the task's input was ours (a copy, or handed over)
        if (m.input) recycleBuffer(m.input, true);
        task.resolve(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength), m.hashes);
      }
      else if ('ferry' in m) task.reject(new FerryError(m.ferry.code, m.ferry.message, m.ferry.data, m.ferry.exitCode));
      else task.reject(Object.assign(new Error(`seal worker: ${m.internal.message}`), { workerStack: m.internal.stack }));
      this.#finish(slot);
    });
    // A worker that dies takes only the tasks it holds with it; the next task gets a new worker.
    const onDeath = (err: unknown) => {
      const i = this.#slots.indexOf(slot);
      if (i < 0) return;
      this.#slots.splice(i, 1);
      for (const task of slot.tasks.values()) {
        task.reject(err instanceof Error ? err : new Error(`seal worker exited: ${String(err)}`));
        this.#running--;
      }
      slot.tasks.clear();
      if (!this.#closed || this.pending > 0) this.#dispatch();
      this.#checkDrained();
    };
    worker.on('error', onDeath);
    worker.on('exit', (code) => onDeath(new Error(`seal worker exited with code ${code}`)));
    this.#slots.push(slot);
    return slot;
  }

  #finish(slot: Slot): void {
    this.#running--;
    // Idle workers must not keep the process alive.
    if (slot.tasks.size === 0) slot.worker.unref();
    this.#dispatch();
    this.#checkDrained();
  }

  #checkDrained(): void {
    if (this.pending === 0 && this.#drainWaiters.length > 0) {
      const waiters = this.#drainWaiters;
      this.#drainWaiters = [];
      for (const w of waiters) w();
    }
  }
}

/** The addon could not do a task at all (memory, OpenSSL, the random source): not the object's fault. */
function nativeFailure(op: 'seal' | 'open', name: string, errno: number): Error {
  return new Error(`could not ${op} object ${name} in ferry's addon: ${errnoText(errno, op)}`);
}
