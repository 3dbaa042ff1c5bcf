// ferry's own addon (native/ferry_native.c), loaded once for every user of
// it: early write-back (format/writeback.ts), scrypt's lanes on all cores
// (vault/scrypt.ts), file ranges read where the page cache holds them
// (format/filerange.ts), AES-GCM into ferry's own buffers (format/seal),
// folders listed with their entries' lstat in one call (source/dirscan.ts),
// small files read in batches on libuv's pool (source/reader.ts), whole
// sealed objects made and opened on that pool (format/seal/pool.ts), and a
// seed disk's objects written in one trip there (putFileNative).
// It is built by scripts/build-native.mjs (npm install runs it); without it
// (not built, not Linux, FERRY_NATIVE=0) each user falls back to plain Node
// and ferry only runs slower. An addon built from older sources may lack
// the later calls, so each user checks that its own is there.
import { createRequire } from 'node:module';
import { getSystemErrorMap } from 'node:util';

export interface Native {
  startWriteback(fd: number, offset: number, length: number, cb: (errno: number | null) => void): void;
  startWritebackSync(fd: number, offset: number, length: number): number;
  /** scrypt's ROMix on each 128*r-byte lane of `lanes`, in place, one after the other on a thread of libuv's pool. */
  scryptRomix(lane: Uint8Array, N: number, r: number, cb: (errno: number | null) => void): void;
  /** A read-only Buffer over `length` bytes of the file from `offset` (mmap), or the errno when it cannot be mapped. */
  mapRange(fd: number, offset: number, length: number, file: string): Buffer | number;
  /** From now on, a file cut short under a mapping is also reported on stdout as --json's error document. */
  errorsAsJson?(on: boolean): void;
  /** Empties a mapRange buffer (every view of it too) and unmaps it now. */
  unmapRange(b: Buffer): void;
  /** posix_fadvise(WILLNEED) on libuv's pool; calls back when queued. */
  prefetch(fd: number, offset: number, length: number, cb: (errno: number | null) => void): void;
  /**
   * Lists a folder and lstats its entries (relative to it) on libuv's pool,
   * or only lists it (mode 1), or only lstats `names` in it (mode 2): errno,
   * or null and the packed reply that source/dirscan.ts reads.
   */
  scanFolder?(path: Uint8Array, mode: number, names: Uint8Array | null, cb: (errno: number | null, reply?: Buffer) => void): void;
  /**
   * Creates `tmp` (NUL-terminated path; O_EXCL), writes `data` whole, starts
   * its write-back, closes it and renames it to `final`, on libuv's pool;
   * calls back with null or the errno (tmp removed).
   */
  putFile?(tmp: Uint8Array, final: Uint8Array, data: Uint8Array, cb: (errno: number | null) => void): void;
  /** glibc's malloc: at most `arenaMax` arenas, buffers from `mmapThreshold` bytes in mappings of their own (0: left alone); whether it took both. */
  mallocTune?(arenaMax: number, mmapThreshold: number): boolean;
  /** Both times of an open file to the nanosecond (seconds, nanoseconds 0..999999999 each): 0 or the errno. */
  futimens?(fd: number, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): number;
  /** Where the buffer's first byte sits modulo 4096 (for a page-aligned view, as O_DIRECT needs). */
  alignOf?(b: Uint8Array): number;
  /** SHA-256 of each `chunk` bytes of input into out (32 bytes each), with the OpenSSL inside Node; absent without it. */
  sha256Chunks?(input: Uint8Array, chunk: number, out: Uint8Array): void;
  /** The same on libuv's pool: input and out are the pool thread's until the callback (null, or an errno). */
  sha256ChunksAsync?(input: Uint8Array, chunk: number, out: Uint8Array, cb: (errno: number | null) => void): void;
  /**
   * Small files read whole (and their chunks hashed) on libuv's pool, as
   * source/reader.ts packs the requests; the buffers are the pool thread's
   * until the callback. Absent without the OpenSSL inside Node.
   */
  readFiles?(reqs: Uint8Array, paths: Uint8Array, out: Uint8Array, replies: Uint8Array, cb: (errno: number | null) => void): void;
  /**
   * A sealed object (docs/seal-format.md) made on libuv's pool into `out`
   * (at least plain + 44 bytes): zstd at `level` (0: raw) with the
   * writer's sampling, the system's libzstd, AES-256-GCM and `digest`'s
   * SHA-256 of the object (null: none); `wipePlain` zeroes the plaintext
   * after. Calls back with the object's length. Absent without libzstd or
   * Node's OpenSSL symbols.
   */
  sealObject?(key: Uint8Array, name: Uint8Array, plain: Uint8Array, level: number, out: Uint8Array, digest: Uint8Array | null, wipePlain: boolean,
    cb: (errno: number | null, length?: number) => void): void;
  /**
   * A sealed object whose header the caller checked, opened on libuv's
   * pool: codec 0 or 1, `out` exactly its plaintext (null: the tag alone
   * is checked), `digest` the object's SHA-256 (or null). Calls back with
   * 0, -1 (not authentic; out zeroed) or why an authentic body does not
   * decompress.
   */
  openObject?(key: Uint8Array, name: Uint8Array, sealed: Uint8Array, codec: number, out: Uint8Array | null, digest: Uint8Array | null,
    cb: (errno: number | null, status?: number | string) => void): void;
  /**
   * The restore's file writer, a thread of the addon's own (restore/writer.ts
   * builds the jobs): batches are done in order and reported to
   * `onResults(id, results)` on this thread; `killAfter` (-1: never) is a
   * test's hook that kills the process after so many bytes written.
   */
  startWriter?(killAfter: number, onResults: (id: number, results: NativeWriteResult[]) => void): NativeWriterHandle;
  writerSubmit?(writer: NativeWriterHandle, id: number, jobs: NativeWriteJob[]): void;
  /** Ends the writer's thread: once every batch is reported, or with `halt` after the job in hand (the rest dropped). */
  writerStop?(writer: NativeWriterHandle, halt: boolean): void;
  /**
   * AES-256-GCM into `out` (at least input's length; in place allowed) with
   * the OpenSSL inside Node; false when a decryption's tag does not match
   * (out zeroed). Absent when Node's OpenSSL symbols cannot be found.
   */
  gcm?(encrypt: boolean, key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, input: Uint8Array, out: Uint8Array, tag: Uint8Array): boolean;
}

/** The addon's writer (opaque). */
export type NativeWriterHandle = { readonly __nativeWriter: unique symbol };
/** [tmp, dst, flags, size, uid, gid, mode, key, times, chunkSize, chunks, checkBase, checkSize, offsets, datas, xattrNames, xattrValues] */
export type NativeWriteJob = [
  Uint8Array, Uint8Array, number, number, number, number, number, number, number[] | null, number, Uint8Array | null, number, number,
  number[], Uint8Array[], string[] | null, Uint8Array[] | null,
];
/** [status, errno, syscall, atDst, badOffset, ...warnings as (kind, errno, xattr index) triples] */
export type NativeWriteResult = [number, number, string | null, boolean, number, ...number[]];

let native: Native | null | undefined;

/** The addon, or null when it is not built or switched off. */
export function nativeAddon(): Native | null {
  if (native === undefined) {
    native = null;
    if (process.platform === 'linux' && process.env.FERRY_NATIVE !== '0') {
      try {
        native = createRequire(import.meta.url)('../../native/index.cjs') as Native;
      } catch {
        // not built: every user has a plain-Node way
      }
    }
  }
  return native;
}

/** Node's code for an errno ("ENOENT"), or undefined for one it does not know. */
export function errnoCode(errno: number): string | undefined {
  return getSystemErrorMap().get(-errno)?.[0];
}

/** Node's words for an errno from the addon, as its own fs errors put them: "EACCES: permission denied, scandir '/x'" ("EIO: i/o error, read" without a path). */
export function errnoText(errno: number, syscall: string, path?: string): string {
  const [code, text] = getSystemErrorMap().get(-errno) ?? [`errno ${errno}`, 'unknown error'];
  return `${code}: ${text}, ${syscall}${path === undefined ? '' : ` '${path}'`}`;
}

/** An errno from the addon as Node's own fs errors are: code, errno, syscall, path. */
export function errnoError(errno: number, syscall: string, path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(errnoText(errno, syscall, path)), { code: errnoCode(errno) ?? `errno ${errno}`, errno: -errno, syscall, path });
}

/** `data` written to `tmp` and renamed to `final` in one trip to libuv's pool (the addon's putFile); false without it. */
export function putFileNative(tmp: string, final: string, data: Uint8Array): Promise<boolean> {
  const put = nativeAddon()?.putFile;
  if (!put) return Promise.resolve(false);
  return new Promise((resolve, reject) =>
    put(Buffer.from(`${tmp}\0`), Buffer.from(`${final}\0`), data, (errno) => (errno === null ? resolve(true) : reject(errnoError(errno, 'write', tmp)))),
  );
}
