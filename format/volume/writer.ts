// Writes a fresh files-kind volume onto a Disk (layout in layout.ts, spec in
// docs/volume-format.md). File data goes to the allocation pointer in large
// sequential writes (two 1 MiB buffers: one filling while the other is
// written; large pieces go as they are); the catalog is built in a temporary
// SQLite file and copied into the volume by finish(), then the superblock is
// written and both are read back and checked before the writer reports
// success.
import { createHash, randomBytes, webcrypto, type Hash } from 'node:crypto';
import { rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Disk } from '../disk.js';
import { FerryError, checkArg } from '../errors.js';
import {
  ALIGN, DATA_START, DEFAULT_CHUNK_SIZE, HASH_SIZE, MAX_CATALOG_EXTENTS, SUPERBLOCK_SIZE, VERSION, MAGIC,
  alignUp, decodeSuperblock, encodeSuperblock, type DiskRange,
} from './layout.js';
import { catalogSpaceError, makeCatalogDir } from './tmpcat.js';
import { nativeAddon } from '../native.js';
import { INDEXES, INSERT_SQL, parentPath, setupCatalog, toRow, type EntryMeta, type FileExtent } from './catalog.js';

/** Bytes of one file copied between two progress reports within it. */
const PROGRESS_STEP = 16 * 1024 * 1024;

/**
 * A piece of a file's data at a file offset; pieces come in increasing,
 * non-overlapping order. The writer may keep a piece's buffer until its write
 * completes: a source must hand over fresh buffers, never refill one, unless
 * it gives the piece a `release`: the writer calls it once it no longer needs
 * `data` (copied, or written to the disk), and from then on the source may
 * use that memory again. A consumer that never calls it is fine too.
 */
export interface DataPiece {
  offset: number;
  data: Buffer;
  release?: () => void;
  /**
   * On a file's first piece: the SHA-256 of each `chunk` bytes of the whole
   * file (holes as zeros), `size` bytes in all, taken by the source as it
   * read them. The writer then does not hash the pieces again when its
   * chunk size is `chunk`.
   */
  hashed?: { chunk: number; size: number; hashes: Buffer };
}

/** A file's content: pieces (gaps between them are holes) or plain buffers (read one after another). */
export type FileContent = AsyncIterable<DataPiece | Buffer>;

export interface VolumeProgress {
  files: number;
  bytes: number;
}

export interface VolumeWriterOptions {
  /** Volume id; random when not given. */
  uuid?: Buffer;
  /** Bytes per checksummed chunk (a multiple of 4096); 1 MiB by default. */
  chunkSize?: number;
  /** Where the catalog is built before it goes into the volume (os.tmpdir() by default). */
  tmpDir?: string;
  /** Clock, ns since the epoch (injectable for tests). */
  now?: () => bigint;
  /** Free-form facts stored in the catalog's meta table (e.g. kind, sources). */
  meta?: Record<string, string>;
  onProgress?: (p: VolumeProgress) => void;
}

export interface VolumeStats {
  entries: number;
  files: number;
  /** Bytes of file data stored (holes excluded). */
  bytes: number;
  catalogBytes: number;
  /** First never-written byte of the data area: what the volume occupies. */
  allocPtr: number;
  uuid: Buffer;
}

/** Thrown by addFile when the content (the source) failed: nothing of the entry was kept. */
export class ContentError extends FerryError {
  constructor(readonly path: Buffer, readonly reason: unknown) {
    super('SOURCE_READ', `cannot read ${path.toString()}: ${(reason as Error)?.message ?? String(reason)}`, { path: path.toString() });
  }
}

const BUFFER_SIZE = 1024 * 1024;
/** Pieces at least this large go to the disk as they are when the buffer is empty (saves a copy). */
const DIRECT_WRITE = 1024 * 1024;

/** Sequential writer at the allocation pointer, double-buffered. */
/**
 * A write left in flight is awaited later, or never if the volume is
 * aborted: mark its failure handled now so it cannot crash the process; the
 * await still sees it.
 */
function settled(p: Promise<void>): Promise<void> {
  p.catch(() => {});
  return p;
}

class SeqWriter {
  private bufs = [Buffer.allocUnsafe(BUFFER_SIZE), Buffer.allocUnsafe(BUFFER_SIZE)];
  private cur = 0;
  private used = 0;
  private bufStart: number;
  private inflight: Promise<void> | null = null;

  constructor(private readonly disk: Disk, start: number) {
    this.bufStart = start;
  }

  get pos(): number {
    return this.bufStart + this.used;
  }

  /**
   * `data` must not be changed by the caller afterwards: large pieces are
   * written without a copy. `release` is called once `data` is no longer
   * needed (copied, or its write settled).
   */
  async append(data: Buffer, release?: () => void): Promise<void> {
    if (this.used === 0 && data.length >= DIRECT_WRITE) {
      if (this.inflight) {
        try {
          await this.inflight;
        } catch (err) {
          release?.(); // (the write before failed: this one is never made)
          throw err;
        }
      }
      const w = this.disk.write(this.bufStart, data);
      this.inflight = settled(release ? w.finally(release) : w);
      this.bufStart += data.length;
      return;
    }
    try {
      let off = 0;
      while (off < data.length) {
        const n = Math.min(BUFFER_SIZE - this.used, data.length - off);
        data.copy(this.bufs[this.cur], this.used, off, off + n);
        this.used += n;
        off += n;
        if (this.used === BUFFER_SIZE) await this.flushBuffer();
      }
    } finally {
      release?.();
    }
  }

  /** Zero-fills up to the next multiple of `align`. */
  async pad(align = ALIGN): Promise<void> {
    const target = alignUp(this.pos, align);
    if (target === this.pos) return;
    const n = target - this.pos;
    this.bufs[this.cur].fill(0, this.used, this.used + n);
    this.used += n;
    if (this.used === BUFFER_SIZE) await this.flushBuffer();
  }

  /** Forgets everything from `to` on (a file whose source failed): its bytes will be overwritten. */
  rewind(to: number): void {
    if (to >= this.bufStart) this.used = to - this.bufStart;
    else {
      this.bufStart = to;
      this.used = 0;
    }
  }

  private async flushBuffer(): Promise<void> {
    if (this.inflight) await this.inflight;
    const buf = this.bufs[this.cur];
    const start = this.bufStart;
    const len = this.used;
    this.inflight = len ? settled(this.disk.write(start, buf.subarray(0, len))) : null;
    this.cur ^= 1;
    this.bufStart = start + len;
    this.used = 0;
  }

  async flush(): Promise<void> {
    await this.flushBuffer();
    if (this.inflight) await this.inflight;
    this.inflight = null;
  }
}

/** Per-chunk SHA-256 over a file's logical bytes (holes count as zeros). */
export class ChunkHasher {
  private pos = 0;
  private cur: Hash | null = null;
  private readonly out: (Buffer | Promise<Buffer>)[] = [];
  private pending = 0;
  private last: Promise<Buffer> | null = null;
  private readonly zeros: Buffer;
  private taken: DataPiece['hashed'] | null = null;

  constructor(private readonly chunkSize: number) {
    this.zeros = zeroChunk(chunkSize);
  }

  /** Takes the source's hashes of the whole file, if they are of this chunk size and nothing was fed yet; then feed() does nothing. */
  take(hashed: DataPiece['hashed']): void {
    if (hashed && hashed.chunk === this.chunkSize && this.pos === 0 && !this.cur) this.taken = hashed;
  }

  /**
   * Hashes `data`, the file's bytes from `offset`. Without `done`, feed() is
   * done with data when it returns. With `done`, data stays as it is until
   * done() is called (once): then its whole chunks are hashed where they lie,
   * on libuv's pool (the addon), with no copy.
   */
  feed(offset: number, data: Buffer, done?: () => void): void {
    if (this.taken) {
      done?.();
      return;
    }
    if (offset > this.pos) this.fillZeros(offset);
    const inPlace = done ? nativeAddon()?.sha256ChunksAsync : undefined;
    let handed = false;
    let off = 0;
    while (off < data.length) {
      const inChunk = this.pos % this.chunkSize;
      if (inPlace && !handed && inChunk === 0 && !this.cur && data.length - off >= this.chunkSize) {
        const n = Math.floor((data.length - off) / this.chunkSize);
        const sums = Buffer.allocUnsafe(n * HASH_SIZE);
        this.pending++;
        const p = new Promise<Buffer>((resolve, reject) =>
          inPlace(data.subarray(off, off + n * this.chunkSize), this.chunkSize, sums, (errno) => {
            this.pending--;
            done!();
            if (errno === null) resolve(sums);
            else reject(new Error(`SHA-256 of the file's chunks failed (errno ${errno})`));
          }),
        );
        p.catch(() => {}); // (end() awaits it; a file given up before that must not leave it unhandled)
        this.out.push(p);
        this.last = p;
        handed = true;
        off += n * this.chunkSize;
        this.pos += n * this.chunkSize;
        continue;
      }
      if (inChunk === 0 && !this.cur && data.length - off >= this.chunkSize) {
        // a whole chunk in one piece: hashed on the thread pool, beside the main
        // thread's copying (digest() copies its input first: the caller may
        // reuse `data` as soon as feed() returns)
        const whole = data.subarray(off, off + this.chunkSize);
        this.pending++;
        const p = webcrypto.subtle.digest('SHA-256', whole).then((d) => {
          this.pending--;
          return Buffer.from(d);
        });
        this.out.push(p);
        this.last = p;
        off += this.chunkSize;
        this.pos += this.chunkSize;
        continue;
      }
      const n = Math.min(this.chunkSize - inChunk, data.length - off);
      (this.cur ??= createHash('sha256')).update(data.subarray(off, off + n));
      off += n;
      this.pos += n;
      if (this.pos % this.chunkSize === 0) this.endChunk();
    }
    if (done && !handed) done();
  }

  /** Waits when too many chunks are still being hashed (each holds its buffer). */
  async backpressure(): Promise<void> {
    if (this.pending > 16 && this.last) await this.last;
  }

  async end(size: number): Promise<Buffer> {
    if (this.taken) {
      if (size !== this.taken.size) throw new Error(`the source hashed ${this.taken.size} bytes of a file that ends at ${size}`);
      return this.taken.hashes;
    }
    if (size > this.pos) this.fillZeros(size);
    if (this.cur) this.endChunk();
    return Buffer.concat(await Promise.all(this.out));
  }

  private fillZeros(to: number): void {
    while (this.pos < to) {
      const inChunk = this.pos % this.chunkSize;
      if (inChunk === 0 && to - this.pos >= this.chunkSize && !this.cur) {
        this.out.push(zeroChunkHash(this.chunkSize));
        this.pos += this.chunkSize;
        continue;
      }
      const n = Math.min(this.chunkSize - inChunk, to - this.pos);
      (this.cur ??= createHash('sha256')).update(this.zeros.subarray(0, n));
      this.pos += n;
      if (this.pos % this.chunkSize === 0) this.endChunk();
    }
  }

  private endChunk(): void {
    this.out.push(this.cur!.digest());
    this.cur = null;
  }
}

const zeroChunks = new Map<number, Buffer>();
const zeroHashes = new Map<number, Buffer>();
function zeroChunk(size: number): Buffer {
  let z = zeroChunks.get(size);
  if (!z) zeroChunks.set(size, (z = Buffer.alloc(size)));
  return z;
}
/** SHA-256 of a whole chunk of zeros (a chunk that is all hole). */
export function zeroChunkHash(size: number): Buffer {
  let h = zeroHashes.get(size);
  if (!h) zeroHashes.set(size, (h = createHash('sha256').update(zeroChunk(size)).digest()));
  return h;
}

export class VolumeWriter {
  private readonly seq: SeqWriter;
  private readonly db: Database.Database;
  private readonly insert: Database.Statement;
  private readonly findId: Database.Statement;
  private readonly setGroup: Database.Statement;
  private readonly dirs = new Map<string, number>();
  private readonly uuid: Buffer;
  private readonly chunkSize: number;
  private readonly now: () => bigint;
  private readonly tmp: string;
  private stats = { entries: 0, files: 0, bytes: 0 };
  private inTx = 0;
  private done = false;

  private constructor(private readonly disk: Disk, private readonly opts: VolumeWriterOptions) {
    this.uuid = opts.uuid ?? randomBytes(16);
    this.chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    this.now = opts.now ?? (() => BigInt(Date.now()) * 1_000_000n);
    this.seq = new SeqWriter(disk, DATA_START);
    this.tmp = makeCatalogDir(opts.tmpDir);
    this.db = new Database(join(this.tmp, 'catalog.db'));
    setupCatalog(this.db);
    this.insert = this.db.prepare(INSERT_SQL);
    this.findId = this.db.prepare('SELECT id FROM entries WHERE path = ?').safeIntegers(true);
    this.setGroup = this.db.prepare('UPDATE entries SET link_group = ? WHERE id = ? AND link_group IS NULL');
    this.db.exec('BEGIN');
  }

  /** Starts a fresh volume on `disk` (which must be writable and empty where the volume goes). */
  static async create(disk: Disk, opts: VolumeWriterOptions = {}): Promise<VolumeWriter> {
    checkArg(!!disk && typeof disk.write === 'function', 'disk', 'a Disk', disk);
    checkArg(disk.writable, 'disk', 'writable', disk.name);
    checkArg(disk.size >= DATA_START * 2, 'disk', 'at least 2 MiB large', disk.size);
    const cs = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    checkArg(Number.isSafeInteger(cs) && cs >= ALIGN && cs % ALIGN === 0 && cs <= 64 * 1024 * 1024, 'chunkSize', 'a multiple of 4096 up to 64 MiB', cs);
    if (opts.uuid) checkArg(opts.uuid.length === 16, 'uuid', '16 bytes', opts.uuid);
    return new VolumeWriter(disk, opts);
  }

  /**
   * Adds an entry that has no data (dir, symlink, hardlink, device, fifo,
   * socket, empty file). A hardlink's target (the first entry of its group)
   * must be in the volume already.
   */
  async addEntry(meta: EntryMeta): Promise<number> {
    return this.record(meta, [], null);
  }

  /** Whether an entry is recorded at `path`. */
  has(path: Buffer): boolean {
    return this.findId.get(path) !== undefined;
  }

  /**
   * Adds a regular file with its content. The stored size is meta.size read
   * after the content is consumed (a source may correct it), raised to the
   * end of the data. If the content throws, nothing is kept and a
   * ContentError is thrown.
   */
  async addFile(meta: EntryMeta, content: FileContent): Promise<number> {
    this.checkOpen();
    checkArg(meta.type === 'file', 'meta.type', '"file" for addFile', meta.type);
    const start = this.seq.pos;
    const extents: FileExtent[] = [];
    const hasher = new ChunkHasher(this.chunkSize);
    let next = 0; // file offset right after the last piece
    let stored = 0;
    let reported = 0;
    const it = content[Symbol.asyncIterator]();
    // Whatever stops the copy early (a full disk, a bad piece), the source is
    // stopped too: a file reader left suspended would keep its file open
    // until the garbage collector closes it ("Closing file descriptor N on
    // garbage collection").
    let ended = false;
    try {
      for (;;) {
        let r: IteratorResult<DataPiece | Buffer>;
        try {
          r = await it.next();
        } catch (err) {
          ended = true;
          this.seq.rewind(start);
          throw new ContentError(meta.path, err);
        }
        if (r.done) {
          ended = true;
          break;
        }
        const piece: DataPiece = Buffer.isBuffer(r.value) ? { offset: next, data: r.value } : r.value;
        if (piece.data.length === 0) {
          piece.release?.();
          continue;
        }
        if (piece.offset < next) {
          piece.release?.();
          this.seq.rewind(start);
          throw new ContentError(meta.path, new Error(`data piece at ${piece.offset} overlaps the previous one (ends at ${next})`));
        }
        const last = extents[extents.length - 1];
        if (!last || piece.offset !== next) {
          await this.seq.pad();
          extents.push({ fileOffset: piece.offset, diskOffset: this.seq.pos, length: 0 });
        }
        if (piece.hashed && stored === 0) hasher.take(piece.hashed);
        let release = piece.release;
        if (release) {
          // a piece whose memory stays until it is released: hashed where it lies, and released after both
          const whenBoth = release;
          let holds = 2;
          release = () => {
            if (--holds === 0) whenBoth();
          };
          hasher.feed(piece.offset, piece.data, release);
        } else hasher.feed(piece.offset, piece.data); // (done with the data when it returns)
        await hasher.backpressure();
        // (its length first: a released piece's memory may be gone once append returns)
        const length = piece.data.length;
        await this.seq.append(piece.data, release);
        extents[extents.length - 1].length += length;
        next = piece.offset + length;
        stored += length;
        // a large file moves the progress while it is copied, not only at its end
        if (stored - reported >= PROGRESS_STEP) {
          reported = stored;
          this.opts.onProgress?.({ files: this.stats.entries, bytes: this.stats.bytes + stored });
        }
      }
    } finally {
      if (!ended) {
        try {
          await it.return?.();
        } catch {
          /* the error that stopped the copy is the one to report */
        }
      }
    }
    await this.seq.pad();
    const size = Math.max(meta.size, next);
    const chunks = await hasher.end(size);
    this.stats.bytes += stored;
    // (an object spread here cost about 3 us and 2 KB a file)
    return this.record(meta.size === size ? meta : Object.assign({}, meta, { size }), extents, chunks);
  }

  private async record(meta: EntryMeta, extents: FileExtent[], chunks: Buffer | null): Promise<number> {
    this.checkOpen();
    const pkey = parentPath(meta.path);
    let parent: number | null = null;
    if (pkey) {
      parent = this.dirs.get(pkey.toString('latin1')) ?? null;
      if (parent === null) parent = await this.addMissingParent(pkey, meta);
    }
    let linkGroup: number | null = null;
    if (meta.type === 'hardlink') {
      // A link to nothing would be stored without its data and fail only at
      // restore: refused here, where the one who added it can still say so.
      const row = meta.target ? (this.findId.get(meta.target) as { id: bigint } | undefined) : undefined;
      if (!row) {
        const of = meta.target ? meta.target.toString() : '(no target)';
        throw new FerryError('VOLUME_LINK_TARGET', `${meta.path.toString()} is a hard link of ${of}, which is not in the volume: add that file first`, { path: meta.path.toString() });
      }
      linkGroup = Number(row.id);
      this.setGroup.run(linkGroup, linkGroup);
    }
    let id: number;
    try {
      id = Number(this.insert.run(toRow(meta, { parent, linkGroup, extents, chunks })).lastInsertRowid);
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') {
        throw new FerryError('VOLUME_DUPLICATE_PATH', `${meta.path.toString()} was added to the volume twice`, { path: meta.path.toString() });
      }
      throw catalogSpaceError(err, this.tmp) ?? err;
    }
    if (meta.type === 'dir') this.dirs.set(meta.path.toString('latin1'), id);
    if (meta.type === 'file') this.stats.files++;
    this.stats.entries++;
    if (++this.inTx >= 5000) {
      try {
        this.db.exec('COMMIT; BEGIN');
      } catch (err) {
        throw catalogSpaceError(err, this.tmp) ?? err;
      }
      this.inTx = 0;
    }
    this.opts.onProgress?.({ files: this.stats.entries, bytes: this.stats.bytes });
    return id;
  }

  /** A child arrived before its parent: the parent is recorded as an implicit directory. */
  private async addMissingParent(path: Buffer, child: EntryMeta): Promise<number> {
    return this.record({
      path: Buffer.from(path), type: 'dir', mode: 0o755, uid: 0, gid: 0,
      atimeNs: child.mtimeNs, mtimeNs: child.mtimeNs, ctimeNs: child.mtimeNs,
      size: 0, ino: 0n, dev: child.dev, nlink: 1, rdev: 0n, target: null, xattrs: [], implicit: true,
    }, [], null);
  }

  private checkOpen(): void {
    if (this.done) throw new FerryError('VOLUME_CLOSED', 'the volume writer is already finished');
  }

  /** Writes the catalog and the superblock, reads both back, and returns what was written. */
  async finish(): Promise<VolumeStats> {
    this.checkOpen();
    this.done = true;
    try {
      const meta = this.db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)');
      const facts: Record<string, string> = {
        format: 'ferry-files-volume',
        version: String(VERSION),
        uuid: this.uuid.toString('hex'),
        chunk_size: String(this.chunkSize),
        hash: 'sha256',
        generation: '1',
        written_ns: String(this.now()),
        ...this.opts.meta,
      };
      try {
        for (const [k, v] of Object.entries(facts)) meta.run(k, v);
        this.db.exec(INDEXES);
        this.db.exec('COMMIT');
      } catch (err) {
        throw catalogSpaceError(err, this.tmp) ?? err;
      }
      this.db.close();

      await this.seq.pad();
      const catalogStart = this.seq.pos;
      const sum = createHash('sha256');
      let catalogSize = 0;
      const fh = await open(join(this.tmp, 'catalog.db'), 'r');
      try {
        // Two buffers in turn: one is read into while the other may still be
        // being written; a buffer is reused once the writer has released it.
        const bufs = [Buffer.allocUnsafe(BUFFER_SIZE), Buffer.allocUnsafe(BUFFER_SIZE)];
        const free: Promise<void>[] = [Promise.resolve(), Promise.resolve()];
        for (let k = 0; ; k ^= 1) {
          await free[k];
          const { bytesRead } = await fh.read(bufs[k], 0, BUFFER_SIZE, catalogSize);
          if (bytesRead === 0) break;
          const piece = bufs[k].subarray(0, bytesRead);
          sum.update(piece);
          let release!: () => void;
          free[k] = new Promise<void>((r) => (release = r));
          await this.seq.append(piece, release);
          catalogSize += bytesRead;
        }
      } finally {
        await fh.close();
      }
      await this.seq.pad();
      await this.seq.flush();
      const allocPtr = this.seq.pos;
      const catalogExtents: DiskRange[] = [{ diskOffset: catalogStart, length: catalogSize }];
      if (catalogExtents.length > MAX_CATALOG_EXTENTS) throw new Error('unreachable');
      const sb = encodeSuperblock({
        magic: MAGIC, version: VERSION, sbSize: SUPERBLOCK_SIZE, uuid: this.uuid, generation: 1,
        writtenNs: this.now(), chunkSize: this.chunkSize, align: ALIGN, dataStart: DATA_START, allocPtr,
        catalogSize, catalogExtentCount: 1, flags: 0, catalogSha256: sum.digest(), diskSize: this.disk.size,
        catalogExtents,
      });
      await this.disk.write(0, sb);

      // Read back before trusting it.
      const back = decodeSuperblock(await this.disk.read(0, SUPERBLOCK_SIZE));
      if (back.problems.length) {
        throw new FerryError('VOLUME_READBACK', `the superblock read back from ${this.disk.name} is wrong: ${back.problems[0].message}`, { disk: this.disk.name });
      }
      const check = createHash('sha256');
      for (let off = 0; off < catalogSize; off += BUFFER_SIZE) {
        check.update(await this.disk.read(catalogStart + off, Math.min(BUFFER_SIZE, catalogSize - off)));
      }
      if (!check.digest().equals(back.sb.catalogSha256)) {
        throw new FerryError('VOLUME_READBACK', `the catalog read back from ${this.disk.name} does not match what was written`, { disk: this.disk.name });
      }
      return { ...this.stats, catalogBytes: catalogSize, allocPtr, uuid: this.uuid };
    } finally {
      rmSync(this.tmp, { recursive: true, force: true });
    }
  }

  /** Drops the catalog being built; what was written to the disk stays unreferenced. */
  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    try {
      if (this.db.open) this.db.close();
    } finally {
      rmSync(this.tmp, { recursive: true, force: true });
    }
  }
}

/** One entry to write: its metadata and, for a regular file, a way to read its content. */
export interface SourceEntry extends EntryMeta {
  content?: () => FileContent;
  /**
   * For a hard link of a regular file: its own path's data. Read only when
   * the group's first file could not be stored; the link is then stored as
   * the regular file that starts the group.
   */
  linkContent?: () => FileContent;
}

export interface EntryWarning {
  code: string;
  message: string;
  path?: Buffer;
  /** The system error code behind it, when there is one. */
  errno?: string;
}

export interface WriteVolumeOptions extends VolumeWriterOptions {
  /** A file whose content failed is reported here and left out; without it the error is thrown. */
  onWarning?: (w: EntryWarning) => void;
}

/** Writes every entry into a fresh volume on `disk`: the one call seeding needs. */
export async function writeVolume(
  disk: Disk,
  entries: AsyncIterable<SourceEntry> | Iterable<SourceEntry>,
  opts: WriteVolumeOptions = {},
): Promise<VolumeStats & { skipped: number }> {
  const w = await VolumeWriter.create(disk, opts);
  let skipped = 0;
  /** Whether the file was stored; one whose content failed is reported and left out. */
  const addFile = async (e: SourceEntry, content: FileContent): Promise<boolean> => {
    try {
      await w.addFile(e, content);
      return true;
    } catch (err) {
      if (!(err instanceof ContentError)) throw err;
      // a source that reported the failure itself marks the error `reported`
      const reported = (err.reason as { reported?: boolean } | null)?.reported === true;
      if (!reported && !opts.onWarning) throw err;
      skipped++;
      if (!reported) opts.onWarning!({ code: err.code, message: err.message, path: e.path });
      return false;
    }
  };
  // The first path of a hard-link group holds its data; when that file could
  // not be stored (it vanished or could not be read after the walk), the
  // group's next link that can be read takes its place: stored as the file
  // that starts the group, the later links point at it. Keyed by the path
  // the walk named as first (latin1), the path that holds the data instead.
  const firsts = new Map<string, Buffer>();
  try {
    for await (const e of entries) {
      if (e.type === 'hardlink' && e.target) {
        const first = firsts.get(e.target.toString('latin1')) ?? e.target;
        if (w.has(first)) {
          await w.addEntry(first === e.target ? e : { ...e, target: first });
        } else if (e.linkContent) {
          const named = e.target;
          // the source may correct the size as it reads: that is this entry's
          Object.assign(e, { type: 'file', target: null });
          if (await addFile(e, e.linkContent())) firsts.set(named.toString('latin1'), e.path);
        } else {
          const err = new ContentError(e.path, new Error(`it is a hard link of ${e.target.toString()}, which could not be stored`));
          if (!opts.onWarning) throw err;
          skipped++;
          opts.onWarning({ code: err.code, message: err.message, path: e.path });
        }
      } else if (e.type === 'file' && e.content) {
        await addFile(e, e.content());
      } else {
        await w.addEntry(e);
      }
    }
  } catch (err) {
    await w.abort();
    throw err;
  }
  return { ...(await w.finish()), skipped };
}

export { HASH_SIZE };
