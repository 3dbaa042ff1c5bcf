// Writes restored regular files on a thread of their own.
//
// A restore spends most of its time in the kernel: open, write, fchown,
// fchmod, futimens, close and rename for every file. On the main thread
// those calls queue behind reading the catalog, checking chunk sums and
// driving the unsealing; on a writer thread they run beside it. The main
// thread decides everything (where a file goes, what to do with what is
// there) and hands over finished jobs in batches; the writer reports back,
// per job, whether the file is in place and what could not be set.
//
// The writer is a thread of ferry's addon (startWriter: writeJob's work in
// C, with no JavaScript heap of its own and no copy of the jobs) when the
// addon is built, else a worker thread running writeBatch below. Both give
// the same files and the same warnings (test/restore-writer.test.ts).
import {
  chmodSync, chownSync, closeSync, constants as C, lchownSync, fchmodSync, fstatSync, lstatSync, fchownSync, ftruncateSync, futimesSync, openSync, renameSync, unlinkSync, writeSync,
} from 'node:fs';
import { O_PATH, openFilesLimit, removeTree } from './anchor.js';
import type { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { formatSetfattr } from '../source/setfattr.js';
import { startWorker } from '../format/threads.js';
import { checkChunks } from '../format/volume/reader.js';
import { startWritebackSync } from '../format/writeback.js';
import { errnoCode, errnoText, nativeAddon, type Native, type NativeWriteJob, type NativeWriteResult, type NativeWriterHandle } from '../format/native.js';
import { freeBuffer, isLent } from '../format/buffers.js';
import { onInterrupt } from '../format/interrupt.js';

/** One regular file to create at `tmp` and rename onto `dst` (or, `direct`, to create at `dst`). */
export interface WriteJob {
  tmp: Uint8Array;
  dst: Uint8Array;
  /** In a directory this restore created: nothing can be in the way. */
  fresh: boolean;
  /**
   * Written at `dst` itself, which must not exist (O_EXCL), with no rename:
   * for fresh directories of a target marked as the restore's own
   * (marker.ts), where a half-written file left by a kill is known to be its.
   */
  direct?: boolean;
  /** Data at file offsets; gaps are holes (written as such when `sparse`). */
  pieces: { offset: number; data: Uint8Array }[];
  size: number;
  sparse: boolean;
  /** Owner to set (null: leave it). */
  uid: number | null;
  gid: number | null;
  mode: number;
  /** Times in seconds to set through the descriptor (null: the caller sets them). */
  atime: number | null;
  mtime: number | null;
  /** Or exactly, through the addon's futimens: seconds and nanoseconds of atime, then of mtime (atime and mtime are then µs near). */
  timesNs?: number[];
  /** The file's stored chunk sums, checked here (the data is written either way). */
  check?: { chunkSize: number; chunks: Uint8Array };
  /**
   * One part of a large file: the bytes [base, end), chunk-aligned at base.
   * Parts of one file share a key and come in order.
   */
  part?: { key: number; first: boolean; last: boolean; base: number; end: number };
  /** The file's data could not be read after some parts were written: close and remove what they wrote. */
  abort?: boolean;
  /**
   * Xattrs to set through the file's own descriptor, after its owner and
   * mode (chown clears capabilities): the file's xattrs when some are
   * security.* or trusted.* ones (capabilities) and the folder is one other
   * users can write. Set by name later, they could land on another user's
   * program put at the name, or on a file that took the restored one's
   * inode number.
   */
  fdXattrs?: { name: string; value: Uint8Array }[];
}

export interface WriteResult {
  /** The file is in place at dst (possibly with `warnings`). */
  ok: boolean;
  /** Why it is not (ok = false), or what could not be set (ok = true). */
  error?: string;
  /** The system error code of `error` (ENOSPC: the run stops). */
  errno?: string;
  warnings?: string[];
  /** Offset of the first chunk that did not match its stored sum. */
  badOffset?: number;
}

export interface WriteBatch {
  id: number;
  jobs: WriteJob[];
}

export interface WriteBatchResult {
  id: number;
  results: WriteResult[];
}

const PAGE = 4096;
const ENOSYS = osConstants.errno.ENOSYS;
const ZERO_PAGE = Buffer.alloc(PAGE);

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** Removes a leftover temporary entry (cheap when there is none). */
export function clearSync(p: Uint8Array): void {
  try {
    unlinkSync(p as Buffer);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code === 'EISDIR' || code === 'EPERM') removeTree(p as Buffer);
    else throw err;
  }
}

/**
 * Owner and mode of the entry at `p` itself, never of what a symlink there
 * points to, nor of another file put at its name: chmod(2) follows a
 * symlink, and in a folder another user can write, that user can put one
 * (to /etc/shadow) or their own program where a restored node or folder was
 * a moment ago. The entry is opened with O_PATH | O_NOFOLLOW (which opens no
 * device and needs no read permission), checked to be of the `kind`
 * expected (a folder; a node: fifo, socket or device, never a regular
 * file), and changed through /proc/self/fd: chown first (it clears setuid
 * bits), then chmod. Where O_PATH or /proc is missing: lstat, then by path.
 */
export function setMetaNoFollow(p: Buffer, kind: 'dir' | 'node', mode: number, owner: { uid: number; gid: number } | null = null): void {
  const check = (st: { isDirectory(): boolean; isSymbolicLink(): boolean; isFile(): boolean }) => {
    if (kind === 'dir' ? !st.isDirectory() : st.isSymbolicLink() || st.isDirectory() || st.isFile()) {
      throw Object.assign(new Error(`${p.toString('utf8')} is no longer the ${kind === 'dir' ? 'folder' : 'node'} restored there (replaced meanwhile); its owner and mode were not set`), { code: 'ELOOP' });
    }
  };
  const apply = (name: string | Buffer, nofollowOwner: boolean) => {
    if (owner) (nofollowOwner ? lchownSync : chownSync)(name, owner.uid, owner.gid);
    chmodSync(name, mode);
  };
  if (O_PATH !== null) {
    let fd: number | null = null;
    try {
      fd = openSync(p, O_PATH | C.O_NOFOLLOW);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    }
    if (fd !== null) {
      try {
        check(fstatSync(fd));
        try {
          apply(`/proc/self/fd/${fd}`, false); // the magic link leads to this very inode
          return;
        } catch (err) {
          const e = err as NodeJS.ErrnoException;
          if (e.code !== 'ENOENT') {
            // (the magic link's name means nothing to the user: the caller names the entry)
            e.message = e.message.replace(/, \w+ '\/proc\/self\/fd\/\d+'$/, '');
            throw e;
          }
          // no /proc: by path below
        }
      } finally {
        closeSync(fd);
      }
    }
  }
  check(lstatSync(p));
  apply(p, true);
}

/** The parts of `data` (at file offset `offset`) that are not whole zero pages. */
export function nonZeroRuns(offset: number, data: Buffer): { offset: number; data: Buffer }[] {
  const out: { offset: number; data: Buffer }[] = [];
  let start = -1;
  for (let i = 0; i < data.length; ) {
    const end = Math.min(data.length, (Math.floor((offset + i) / PAGE) + 1) * PAGE - offset);
    const zero = end - i === PAGE && data.subarray(i, end).equals(ZERO_PAGE);
    if (!zero && start < 0) start = i;
    if (zero && start >= 0) {
      out.push({ offset: offset + start, data: data.subarray(start, i) });
      start = -1;
    }
    i = end;
  }
  if (start >= 0) out.push({ offset: offset + start, data: data.subarray(start) });
  return out;
}

/**
 * Files from this size on (and every part of a large one) start going to the
 * disk as soon as written (startWritebackSync): the disk writes while the
 * next files are unsealed, and the sync after a restore is short. Per small
 * file it cost more system time than it saved (docs/PERFORMANCE.md).
 */
const WRITEBACK_MIN = 1024 * 1024;

/**
 * Test hook: FERRY_TEST_KILL_AFTER_BYTES=N kills the whole process once the
 * writer has written N bytes, so that tests can stop a restore in the middle
 * of a file at a known point. Unset in normal use.
 */
const KILL_AFTER = /^[0-9]+$/.test(process.env.FERRY_TEST_KILL_AFTER_BYTES ?? '') ? Number(process.env.FERRY_TEST_KILL_AFTER_BYTES) : null;
let written = 0;

/** Files being written in parts (large files): their descriptors, by part key, in the writer thread. */
const openParts = new Map<number, number>();

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already reported, or nothing to report */
  }
}

function unlinkQuietly(p: Buffer): void {
  try {
    unlinkSync(p);
  } catch {
    /* nothing left behind, or nothing we can do */
  }
}

/**
 * Sets xattrs on files held open, one setfattr for them all: it follows
 * /proc/<pid>/fd/<fd> to that very file, whatever is at its name now.
 * Returns, per file, what could not be set (or null).
 */
function setXattrsThroughFds(files: { fd: number; xattrs: { name: string; value: Uint8Array }[] }[]): (string | null)[] {
  const at = (fd: number) => `/proc/${process.pid}/fd/${fd}`;
  const r = spawnSync('setfattr', ['--restore=-'], { input: formatSetfattr(files.map((f) => ({ path: Buffer.from(at(f.fd)), xattrs: f.xattrs }))), stdio: ['pipe', 'ignore', 'pipe'] });
  const all = (why: string) => files.map(() => `cannot set the extended attributes: ${why}`);
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return all('setfattr (package attr) is not installed');
  if (r.error) return all(r.error.message);
  // setfattr goes on after a file it cannot change, and names it: "setfattr: <path>: <error>"
  const errs = new Map<string, string[]>();
  const other: string[] = [];
  for (const line of r.stderr.toString('utf8').split('\n')) {
    const m = /^setfattr: (\/proc\/\d+\/fd\/\d+): (.*)$/.exec(line);
    if (m) errs.set(m[1], [...(errs.get(m[1]) ?? []), m[2]]);
    else if (line.trim()) other.push(line.replace(/^setfattr: /, ''));
  }
  return files.map((f) => {
    const mine = errs.get(at(f.fd));
    if (mine) return `cannot set the extended attributes: ${mine.join('; ')}`;
    if (r.status !== 0 && errs.size === 0) return `cannot set the extended attributes: ${other.join('; ') || `setfattr exited ${r.status}`}`;
    return null;
  });
}

/** A file written whole whose xattrs go on through its descriptor with others' before it is closed and renamed (writeBatch). */
interface HeldFile {
  fd: number;
  j: WriteJob;
  result: WriteResult;
}

/**
 * Writes a batch of jobs. Files whose xattrs go on through their
 * descriptor (fdXattrs) stay open until the batch is written, and one
 * setfattr sets them all: a process per file would fork the whole restore
 * for each (on SELinux systems every file has security.selinux).
 */
export function writeBatch(jobs: WriteJob[]): WriteResult[] {
  const held: HeldFile[] = [];
  const release = () => {
    const files = held.splice(0);
    const why = setXattrsThroughFds(files.map((h) => ({ fd: h.fd, xattrs: h.j.fdXattrs! })));
    files.forEach((h, i) => {
      if (why[i]) (h.result.warnings ??= []).push(why[i]!);
      finishFile(h.fd, h.j, h.result);
    });
  };
  const results = jobs.map((j) => {
    const r = writeJob(j, held);
    if (held.length >= maxHeld()) release();
    return r;
  });
  if (held.length) release();
  return results;
}

/** Files held open at once for their xattrs: 64, fewer under a low open-file limit. */
const maxHeld = () => Math.max(4, Math.min(64, Math.floor(openFilesLimit() / 8)));

/**
 * Creates one file, or one part of a large one (`part`: the first part
 * opens it, the last sets its metadata and renames it into place); never
 * throws. A part after a failed one fails too, with the same message.
 */
export function writeJob(j: WriteJob, held?: HeldFile[]): WriteResult {
  const direct = j.direct === true;
  const dst = asBuffer(j.dst);
  const tmp = direct ? dst : asBuffer(j.tmp);
  if (j.abort) {
    const fd = j.part ? openParts.get(j.part.key) : undefined;
    if (fd === undefined) return { ok: false, error: 'aborted' }; // an earlier part failed, and removed the file
    openParts.delete(j.part!.key);
    closeQuietly(fd);
    unlinkQuietly(tmp); // direct: the file the first part created (O_EXCL)
    return { ok: false, error: 'aborted' };
  }
  const warnings: string[] = [];
  let badOffset: number | null = null;
  if (j.check) {
    const base = j.part?.base ?? 0;
    const end = j.part?.end ?? j.size;
    const cs = j.check.chunkSize;
    const rel = j.part ? j.pieces.map((p) => ({ offset: p.offset - base, data: p.data })) : j.pieces;
    const chunks = j.part ? j.check.chunks.subarray((base / cs) * 32, Math.ceil(end / cs) * 32) : j.check.chunks;
    const at = checkChunks(rel, end - base, cs, chunks);
    if (at !== null) badOffset = base + at;
  }
  const first = !j.part || j.part.first;
  const last = !j.part || j.part.last;
  let fd: number;
  if (first) {
    try {
      if (!j.fresh && !direct) clearSync(tmp);
      // in a fresh directory nothing can be in the way; elsewhere a leftover was
      // cleared above, and O_EXCL refuses anything put there since (a hard
      // link planted at the name would otherwise be written through)
      fd = openSync(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
    } catch (err) {
      return { ok: false, error: (err as Error).message, errno: (err as NodeJS.ErrnoException).code };
    }
    if (j.part && !last) openParts.set(j.part.key, fd);
  } else {
    const open = openParts.get(j.part!.key);
    if (open === undefined) return { ok: false, error: 'an earlier part failed' };
    fd = open;
  }
  let closed = false;
  try {
    for (const p of j.pieces) {
      const data = asBuffer(p.data);
      for (const run of j.sparse ? nonZeroRuns(p.offset, data) : [{ offset: p.offset, data }]) {
        let off = 0;
        while (off < run.data.length) {
          const n = writeSync(fd, run.data, off, run.data.length - off, run.offset + off);
          off += n;
          if (KILL_AFTER !== null && (written += n) >= KILL_AFTER) process.kill(process.pid, 'SIGKILL');
        }
      }
    }
    if (j.pieces.length > 0 && (j.part || j.size >= WRITEBACK_MIN)) startWritebackSync(fd);
    if (last) {
      if (j.part) openParts.delete(j.part.key);
      if (j.sparse) ftruncateSync(fd, j.size); // the holes of a sparse file stay holes
      if (j.uid !== null && j.gid !== null) {
        try {
          fchownSync(fd, j.uid, j.gid);
        } catch (err) {
          warnings.push(`cannot set the owner: ${(err as Error).message}`);
        }
      }
      try {
        fchmodSync(fd, j.mode); // after chown, which clears setuid/setgid
      } catch (err) {
        warnings.push(`cannot set the mode: ${(err as Error).message}`);
      }
      const r = okResult(warnings, badOffset);
      closed = true; // from here on, finishFile's to close
      if (j.fdXattrs?.length) {
        // xattrs after owner and mode (chown clears capabilities), through this descriptor
        if (held) {
          held.push({ fd, j, result: r }); // set with the batch's others, then finished (writeBatch)
          return r;
        }
        const why = setXattrsThroughFds([{ fd, xattrs: j.fdXattrs }])[0];
        if (why) (r.warnings ??= []).push(why);
      }
      finishFile(fd, j, r);
      return r;
    }
  } catch (err) {
    if (j.part) openParts.delete(j.part.key);
    if (!closed) closeQuietly(fd);
    unlinkQuietly(tmp); // direct: the file this job created (O_EXCL), never one it found
    return { ok: false, error: (err as Error).message, errno: (err as NodeJS.ErrnoException).code };
  }
  return okResult(warnings, badOffset);
}

function okResult(warnings: string[], badOffset: number | null): WriteResult {
  const r: WriteResult = { ok: true };
  if (warnings.length) r.warnings = warnings;
  if (badOffset !== null) r.badOffset = badOffset;
  return r;
}

/**
 * The end of a whole file written at fd: its times, then closed and
 * renamed into place. A failure turns `r` into one and removes the file.
 */
function finishFile(fd: number, j: WriteJob, r: WriteResult): void {
  const direct = j.direct === true;
  const dst = asBuffer(j.dst);
  const tmp = direct ? dst : asBuffer(j.tmp);
  const t = j.timesNs;
  const ns = t ? nativeAddon()?.futimens : undefined;
  const err = t ? (ns ? ns(fd, t[0], t[1], t[2], t[3]) : ENOSYS) : -1; // -1: none asked for
  if (err !== 0 && j.atime !== null && j.mtime !== null) {
    try {
      futimesSync(fd, j.atime, j.mtime);
      if (err > 0) (r.warnings ??= []).push(`cannot set the nanosecond times (${errnoText(err, 'futimens')}): set to the microsecond`);
    } catch (e) {
      (r.warnings ??= []).push(`cannot set the times: ${(e as Error).message}`);
    }
  }
  try {
    closeSync(fd); // (closed even when it reports an error: never closed twice)
    if (!direct) renameSync(tmp, dst);
  } catch (err) {
    unlinkQuietly(tmp); // direct: the file this job created (O_EXCL), never one it found
    r.ok = false;
    r.error = (err as Error).message;
    r.errno = (err as NodeJS.ErrnoException).code;
  }
}

const WORKER_URL = new URL('./writer-worker.js', import.meta.url);
/** Jobs per message, and data per message: small batches keep the writer busy, large ones keep messages few. */
const BATCH_JOBS = 128;
const BATCH_BYTES = 4 * 1024 * 1024;
/** Data handed over and not yet written: the main thread waits above this (16 MiB restored no faster, and peaked 5-10 MiB higher). */
const MAX_PENDING_BYTES = 8 * 1024 * 1024;

interface Pending {
  jobs: { job: WriteJob; done: (r: WriteResult) => void }[];
  bytes: number;
  /** Native batches: results known before the writer saw the job (a leftover that could not be cleared). */
  early?: (WriteResult | undefined)[];
}

// The addon writer's flags (native/ferry_native.c, startWriter) and outcomes.
const WF = { FRESH: 1, DIRECT: 2, SPARSE: 4, ABORT: 8, OWNER: 16, PART: 32, FIRST: 64, LAST: 128, CHECK: 256, TIMES: 512, SKIP: 1024 } as const;
const WS = { DONE: 0, FAILED: 1, ABORTED: 2, NO_PART: 3 } as const;
const WW_WHAT: Record<number, [string, string]> = { 1: ['the owner', 'fchown'], 2: ['the mode', 'fchmod'], 3: ['the extended attributes', 'fsetxattr'], 4: ['the times', 'futimens'] };

/**
 * Seconds as whole seconds and nanoseconds: a time restore/files.ts's
 * usSeconds() made, aimed at the middle of its microsecond (the double is
 * good to about 0.24 us): the microsecond is the one below, as libuv's
 * futimes takes it. (Rounding took the next one for about half of them.)
 */
function secondsToParts(x: number): [number, number] {
  const s = Math.floor(x);
  return [s, Math.min(999_999_000, Math.floor((x - s) * 1e6) * 1000)];
}

/** A job as the addon's writer takes it. */
function toNative(j: WriteJob, skip: boolean): NativeWriteJob {
  const part = j.part;
  let flags = (j.fresh ? WF.FRESH : 0) | (j.direct ? WF.DIRECT : 0) | (j.sparse ? WF.SPARSE : 0) | (j.abort ? WF.ABORT : 0) | (skip ? WF.SKIP : 0);
  if (j.uid !== null && j.gid !== null) flags |= WF.OWNER;
  if (part) flags |= WF.PART | (part.first ? WF.FIRST : 0) | (part.last ? WF.LAST : 0);
  let times: number[] | null = null;
  if (j.timesNs) times = j.timesNs;
  else if (j.atime !== null && j.mtime !== null) times = [...secondsToParts(j.atime), ...secondsToParts(j.mtime)];
  if (times) flags |= WF.TIMES;
  let chunks: Uint8Array | null = null;
  let chunkSize = 0;
  let checkBase = 0;
  let checkSize = 0;
  if (j.check) {
    flags |= WF.CHECK;
    chunkSize = j.check.chunkSize;
    checkBase = part?.base ?? 0;
    const end = part?.end ?? j.size;
    checkSize = end - checkBase;
    chunks = part ? j.check.chunks.subarray((checkBase / chunkSize) * 32, Math.ceil(end / chunkSize) * 32) : j.check.chunks;
  }
  const x = j.fdXattrs?.length ? j.fdXattrs : null;
  return [
    j.tmp, j.dst, flags, j.size, j.uid ?? 0, j.gid ?? 0, j.mode, part?.key ?? 0, times, chunkSize, chunks, checkBase, checkSize,
    j.pieces.map((p) => p.offset), j.pieces.map((p) => p.data), x ? x.map((a) => a.name) : null, x ? x.map((a) => a.value) : null,
  ];
}

/** The addon writer's outcome of `j` as writeJob() reports it. */
function fromNative(j: WriteJob, r: NativeWriteResult): WriteResult {
  const [status, errno, syscall, atDst, badOffset] = r;
  if (status === WS.FAILED) {
    const at = atDst || j.direct ? j.dst : j.tmp;
    return { ok: false, error: errnoText(errno, syscall ?? 'write', asBuffer(at).toString()), errno: errnoCode(errno) };
  }
  if (status === WS.ABORTED) return { ok: false, error: 'aborted' };
  if (status === WS.NO_PART) return { ok: false, error: 'an earlier part failed' };
  const warnings: string[] = [];
  for (let k = 5; k + 2 < r.length; k += 3) {
    const [what, call] = WW_WHAT[r[k] as number] ?? ['something', 'write'];
    const name = r[k] === 3 ? `${j.fdXattrs?.[r[k + 2] as number]?.name}: ` : '';
    warnings.push(`cannot set ${what}: ${name}${errnoText(r[k + 1] as number, call)}`);
  }
  return okResult(warnings, badOffset >= 0 ? badOffset : null);
}

/** A job that will not be written: its data freed (or given back, when lent), and its callback told why. */
function refuse(j: { job: WriteJob; done: (r: WriteResult) => void }, error: string): void {
  for (const p of j.job.pieces) freeBuffer(p.data);
  j.done({ ok: false, error });
}

/**
 * Hands write jobs to the writer thread, in batches, with a bound on the
 * data in flight. `write` resolves once the job is accepted (not done); its
 * `done` callback runs when the file is in place or failed. `drain()` waits
 * for everything handed over. The thread is the addon's when it has one
 * (no JavaScript there: writeJob's work in C), else a worker thread running
 * writeBatch.
 */
export class FileWriter {
  private readonly worker: Worker | null = null;
  private readonly native: { handle: NativeWriterHandle; submit: NonNullable<Native['writerSubmit']>; stop: NonNullable<Native['writerStop']> } | null = null;
  private batch: Pending = { jobs: [], bytes: 0 };
  private readonly sent = new Map<number, Pending>();
  private nextId = 1;
  private pendingBytes = 0;
  private waiters: (() => void)[] = [];
  private failure: Error | null = null;
  private scheduled = false;
  private unregister: (() => void) | null = null;

  constructor() {
    const n = nativeAddon();
    // (FERRY_WRITER=worker: the worker thread even with the addon, for comparing the two)
    if (n?.startWriter && n.writerSubmit && n.writerStop && process.env.FERRY_WRITER !== 'worker') {
      const handle = n.startWriter(KILL_AFTER ?? -1, (id, results) => this.reported(id, (p) => p.jobs.map((j, i) => p.early?.[i] ?? fromNative(j.job, results[i]))));
      const stop = n.writerStop;
      this.native = { handle, submit: n.writerSubmit, stop };
      // on Ctrl-C, nothing may go on writing into the folders the exit handlers remove (a tar restore's staging copy)
      this.unregister = onInterrupt(async () => stop(handle, true));
      return;
    }
    const worker = startWorker(WORKER_URL);
    this.worker = worker;
    worker.unref();
    worker.on('message', (m: WriteBatchResult) => this.reported(m.id, () => m.results));
    worker.on('error', (err) => this.fail(err));
    worker.on('exit', (code) => {
      if (this.sent.size > 0 || this.batch.jobs.length > 0) this.fail(new Error(`the restore's writer thread stopped (exit code ${code})`));
    });
  }

  /** A batch is done: each job's callback, then room for more. */
  private reported(id: number, results: (p: Pending) => WriteResult[]): void {
    const p = this.sent.get(id);
    if (!p) return;
    this.sent.delete(id);
    const rs = results(p);
    // (the worker frees what it was given; the addon's writer hands the data back, written: freed now)
    if (this.native) for (const { job } of p.jobs) for (const piece of job.pieces) freeBuffer(piece.data);
    p.jobs.forEach((j, i) => j.done(rs[i]));
    this.pendingBytes -= p.bytes;
    this.wake();
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.sent.values()) for (const j of p.jobs) refuse(j, err.message);
    this.sent.clear();
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  async write(job: WriteJob, done: (r: WriteResult) => void): Promise<void> {
    if (this.failure) {
      refuse({ job, done }, this.failure.message);
      return;
    }
    let bytes = 0;
    for (const p of job.pieces) bytes += p.data.byteLength;
    this.batch.jobs.push({ job, done });
    this.batch.bytes += bytes;
    this.pendingBytes += bytes;
    if (this.batch.jobs.length >= BATCH_JOBS || this.batch.bytes >= BATCH_BYTES) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.flush();
      });
    }
    while (this.pendingBytes > MAX_PENDING_BYTES && !this.failure) await new Promise<void>((r) => this.waiters.push(r));
  }

  private flush(): void {
    const b = this.batch;
    if (b.jobs.length === 0) return;
    this.batch = { jobs: [], bytes: 0 };
    if (this.failure) {
      for (const j of b.jobs) refuse(j, this.failure.message);
      this.pendingBytes -= b.bytes;
      return;
    }
    const id = this.nextId++;
    this.sent.set(id, b);
    if (this.native) {
      this.submitNative(id, b, this.native);
      return;
    }
    // A view lent by a stored disk goes as a copy of its own (a message
    // would carry the whole block it views), and is given back at once.
    for (const { job } of b.jobs) {
      for (const p of job.pieces) {
        if (!isLent(p.data)) continue;
        const view = p.data;
        p.data = Buffer.from(view);
        freeBuffer(view);
      }
    }
    // data buffers that are wholly their own memory move without a copy
    const transfer: ArrayBuffer[] = [];
    const seen = new Set<ArrayBufferLike>();
    for (const { job } of b.jobs) {
      for (const p of job.pieces) {
        const ab = p.data.buffer;
        if (ab instanceof ArrayBuffer && p.data.byteOffset === 0 && p.data.byteLength === ab.byteLength && !seen.has(ab)) {
          seen.add(ab);
          transfer.push(ab);
        }
      }
    }
    const msg: WriteBatch = { id, jobs: b.jobs.map((j) => j.job) };
    try {
      this.worker!.postMessage(msg, transfer);
    } catch {
      this.worker!.postMessage(msg); // something not transferable: copy it all
    }
  }

  private submitNative(id: number, b: Pending, n: NonNullable<FileWriter['native']>): void {
    const jobs = b.jobs.map(({ job }, i) => {
      // a leftover in the way goes first (here: removeTree's care with what is in it); O_EXCL refuses anything put there since
      if (!job.fresh && !job.direct && !job.abort && (!job.part || job.part.first)) {
        try {
          clearSync(job.tmp);
        } catch (err) {
          (b.early ??= [])[i] = { ok: false, error: (err as Error).message, errno: (err as NodeJS.ErrnoException).code };
          return toNative(job, true);
        }
      }
      return toNative(job, false);
    });
    try {
      n.submit(n.handle, id, jobs);
    } catch (err) {
      this.sent.delete(id);
      for (const j of b.jobs) refuse(j, (err as Error).message);
      this.pendingBytes -= b.bytes;
    }
  }

  /** Waits until every job handed over is done. */
  async drain(): Promise<void> {
    this.flush();
    while (this.sent.size > 0 && !this.failure) await new Promise<void>((r) => this.waiters.push(r));
  }

  async close(): Promise<void> {
    await this.drain().catch(() => {});
    this.unregister?.();
    if (this.native) this.native.stop(this.native.handle, false);
    else await this.worker!.terminate();
  }
}
