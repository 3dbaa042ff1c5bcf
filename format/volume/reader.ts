// Reads a files-kind volume from any Disk (a chain reads as one disk): the
// superblock is checked, the catalog is read and its SHA-256 checked, then
// lookups go to SQLite and file data is read through the extents, each chunk
// checked against its stored SHA-256 as it is read.
import { createHash } from 'node:crypto';
import { rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Disk } from '../disk.js';
import { FerryError, checkArg } from '../errors.js';
import { HASH_SIZE, SUPERBLOCK_SIZE, decodeSuperblock, type Superblock } from './layout.js';
import { ENTRY_COLUMNS_SQL, fromRaw, limitCatalogCache, type FileExtent, type VolumeEntry } from './catalog.js';
import { zeroChunkHash } from './writer.js';
import { catalogSpaceError, makeCatalogDir } from './tmpcat.js';
import { writeAll } from '../fsio.js';
import { nativeAddon } from '../native.js';
import { freeBuffer } from '../buffers.js';

export interface VolumeReaderOptions {
  /**
   * Catalogs larger than this are spooled to a temporary file instead of
   * memory (4 MiB). In memory, a catalog costs its size twice while it is
   * opened and once for as long as it is open; from a file, SQLite keeps
   * a few MiB of pages and the kernel's page cache the rest: a restore of
   * 66,000 entries peaked 40-47 MiB lower, in the same time.
   */
  memoryLimit?: number;
  tmpDir?: string;
}

/** A piece of a file's data, read from the volume; `ok` is false when its chunk's checksum failed. */
export interface ReadPiece {
  offset: number;
  data: Buffer;
  ok: boolean;
}

const ROOT = Buffer.from('/');

/** A path as the catalog spells it: `//` as `/`, no trailing slash (but "/"). */
export function toPathBuffer(p: Buffer | string): Buffer {
  let b = Buffer.isBuffer(p) ? p : Buffer.from(p);
  if (b.includes('//')) b = Buffer.from(b.toString('latin1').replace(/\/{2,}/g, '/'), 'latin1');
  while (b.length > 1 && b[b.length - 1] === 0x2f) b = b.subarray(0, b.length - 1);
  return b;
}

/** Upper bound for a BLOB range scan of everything under `dir/`. */
function subtreeRange(dir: Buffer): [Buffer, Buffer] {
  const base = dir.length === 1 && dir[0] === 0x2f ? Buffer.alloc(0) : dir;
  return [Buffer.concat([base, Buffer.from('/')]), Buffer.concat([base, Buffer.from('0')])]; // '0' = '/' + 1
}

export class VolumeReader {
  private readonly byPath: Database.Statement;
  private readonly byId: Database.Statement;
  private readonly children: Database.Statement;
  private readonly roots_: Database.Statement;
  private readonly page: Database.Statement;
  private readonly pageUnder: Database.Statement;
  readonly meta: Record<string, string>;

  private constructor(
    readonly disk: Disk,
    readonly superblock: Superblock,
    private readonly db: Database.Database,
  ) {
    // Every entry query reads arrays of the columns fromRaw() knows: cheaper
    // for better-sqlite3 to build than objects with named keys.
    const q = (where: string) => db.prepare(`SELECT ${ENTRY_COLUMNS_SQL} FROM entries ${where}`).safeIntegers(true).raw(true);
    this.byPath = q('WHERE path = ?');
    this.byId = q('WHERE id = ?');
    this.children = q('WHERE parent = ? ORDER BY name');
    this.roots_ = q('WHERE parent IS NULL ORDER BY path');
    this.page = q('WHERE id > ? ORDER BY id LIMIT 512');
    this.pageUnder = q('WHERE id > ? AND (path = ? OR (path >= ? AND path < ?)) ORDER BY id LIMIT 512');
    this.meta = {};
    for (const r of db.prepare('SELECT key, value FROM meta').all() as { key: string; value: unknown }[]) {
      this.meta[r.key] = Buffer.isBuffer(r.value) ? r.value.toString() : String(r.value);
    }
  }

  static async open(disk: Disk, opts: VolumeReaderOptions = {}): Promise<VolumeReader> {
    checkArg(!!disk && typeof disk.read === 'function', 'disk', 'a Disk', disk);
    if (disk.size < SUPERBLOCK_SIZE) {
      throw new FerryError('VOLUME_BAD_MAGIC', `${disk.name} is too small to hold a ferry volume`, { disk: disk.name });
    }
    const { sb, problems } = decodeSuperblock(await disk.read(0, SUPERBLOCK_SIZE));
    if (problems.length) {
      const p = problems[0];
      throw new FerryError(p.code, `${disk.name}: ${p.message}`, { disk: disk.name, offset: 0, field: p.field, problems });
    }
    for (const e of sb.catalogExtents) {
      if (e.diskOffset + e.length > disk.size) {
        throw new FerryError('VOLUME_BAD_FIELD', `${disk.name}: a catalog extent (${e.diskOffset}+${e.length}) lies past the end of the disk`, { disk: disk.name, field: 'catalogExtents' });
      }
    }
    const limit = opts.memoryLimit ?? 4 * 1024 * 1024;
    const sum = createHash('sha256');
    let db: Database.Database;
    const pieces = async function* () {
      for (const e of sb.catalogExtents) {
        for (let off = 0; off < e.length; off += 4 * 1024 * 1024) {
          const b = await disk.read(e.diskOffset + off, Math.min(4 * 1024 * 1024, e.length - off));
          sum.update(b);
          yield b;
        }
      }
    };
    const badCatalog = () =>
      new FerryError('VOLUME_BAD_CATALOG', `${disk.name}: the catalog does not match its checksum (damaged or foreign data)`, {
        disk: disk.name, offset: sb.catalogExtents[0]?.diskOffset,
      });
    if (sb.catalogSize <= limit) {
      const parts: Buffer[] = [];
      for await (const b of pieces()) parts.push(b);
      if (!sum.digest().equals(sb.catalogSha256)) throw badCatalog();
      db = new Database(Buffer.concat(parts), { readonly: true });
    } else {
      // SQLite holds the file open once it is opened: its name goes right
      // after, so that nothing is left behind however this process ends (a
      // restore killed, Ctrl-C), and at once when the spool fails (a full /tmp).
      const tmp = makeCatalogDir(opts.tmpDir);
      try {
        const file = join(tmp, 'catalog.db');
        const fh = await open(file, 'w');
        try {
          for await (const b of pieces()) await writeAll(fh, b);
        } finally {
          await fh.close();
        }
        if (!sum.digest().equals(sb.catalogSha256)) throw badCatalog();
        db = new Database(file, { readonly: true });
      } catch (err) {
        throw catalogSpaceError(err, tmp) ?? err;
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
    }
    try {
      limitCatalogCache(db);
      return new VolumeReader(disk, sb, db);
    } catch (err) {
      db.close();
      throw new FerryError('VOLUME_BAD_CATALOG', `${disk.name}: the catalog is not a ferry catalog (${(err as Error).message})`, { disk: disk.name });
    }
  }

  get uuid(): Buffer {
    return this.superblock.uuid;
  }

  get chunkSize(): number {
    return this.superblock.chunkSize;
  }

  count(): number {
    return Number((this.db.prepare('SELECT count(*) AS n FROM entries').get() as { n: number }).n);
  }

  stat(path: Buffer | string): VolumeEntry | null {
    const r = this.byPath.get(toPathBuffer(path)) as unknown[] | undefined;
    return r ? fromRaw(r) : null;
  }

  get(id: number): VolumeEntry | null {
    const r = this.byId.get(id) as unknown[] | undefined;
    return r ? fromRaw(r) : null;
  }

  /** Children of a directory, by name; null when there is no such directory. */
  readdir(dir: Buffer | string | VolumeEntry): VolumeEntry[] | null {
    const e = Buffer.isBuffer(dir) || typeof dir === 'string' ? this.stat(dir) : dir;
    if (!e || e.type !== 'dir') return null;
    return (this.children.all(e.id) as unknown[][]).map(fromRaw);
  }

  /** Roots of the stored tree: entries without a parent (normally just "/"). */
  roots(): VolumeEntry[] {
    return (this.roots_.all() as unknown[][]).map(fromRaw);
  }

  /**
   * Every entry (or every entry at and under `under`) in the order they were
   * written, which puts each directory before its contents. Reads the
   * catalog a page at a time, so memory stays flat.
   */
  *entries(opts: { under?: Buffer | string } = {}): IterableIterator<VolumeEntry> {
    let last = 0n;
    const under = opts.under === undefined ? null : toPathBuffer(opts.under);
    const range = under && !under.equals(ROOT) ? subtreeRange(under) : null;
    for (;;) {
      const rows = (range ? this.pageUnder.all(last, under, range[0], range[1]) : this.page.all(last)) as unknown[][];
      if (rows.length === 0) return;
      for (const r of rows) yield fromRaw(r);
      last = rows[rows.length - 1][0] as bigint;
    }
  }

  /** Reads `length` bytes of a file at `offset` (zeros in holes, short at the end of the file). */
  async read(file: VolumeEntry | Buffer | string, offset: number, length: number): Promise<Buffer> {
    const e = this.fileEntry(file);
    checkArg(Number.isSafeInteger(offset) && offset >= 0, 'offset', 'a byte offset', offset);
    checkArg(Number.isSafeInteger(length) && length >= 0, 'length', 'a byte count', length);
    const end = Math.min(e.size, offset + length);
    if (end <= offset) return Buffer.alloc(0);
    const out = Buffer.alloc(end - offset);
    const ext = e.extents;
    // first extent that ends after offset
    let lo = 0;
    let hi = ext.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ext[mid].fileOffset + ext[mid].length <= offset) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < ext.length && ext[i].fileOffset < end; i++) {
      const x = ext[i];
      const s = Math.max(offset, x.fileOffset);
      const t = Math.min(end, x.fileOffset + x.length);
      if (t <= s) continue;
      const b = await this.disk.read(x.diskOffset + (s - x.fileOffset), t - s);
      b.copy(out, s - offset);
    }
    return out;
  }

  /**
   * A file's stored data, chunk by chunk (holes are skipped: chunks that
   * are all hole yield nothing). Each chunk is checked against its stored
   * SHA-256; a damaged chunk is still yielded, with ok = false.
   */
  async *readData(file: VolumeEntry | Buffer | string, opts: { check?: boolean } = {}): AsyncGenerator<ReadPiece> {
    const e = this.fileEntry(file);
    // check: false hands the checking to the caller (checkChunks): pieces come with ok = true, unchecked
    const check = opts.check ?? true;
    const cs = this.chunkSize;
    const ext = e.extents;
    const nChunks = Math.ceil(e.size / cs);
    let xi = 0;
    for (let c = 0; c < nChunks; c++) {
      const cStart = c * cs;
      const cEnd = Math.min(e.size, cStart + cs);
      while (xi < ext.length && ext[xi].fileOffset + ext[xi].length <= cStart) xi++;
      const stored = e.chunks.subarray(c * HASH_SIZE, (c + 1) * HASH_SIZE);
      const pieces: { offset: number; data: Buffer }[] = [];
      for (let i = xi; i < ext.length && ext[i].fileOffset < cEnd; i++) {
        const x = ext[i];
        const s = Math.max(cStart, x.fileOffset);
        const t = Math.min(cEnd, x.fileOffset + x.length);
        if (t > s) pieces.push({ offset: s, data: await this.disk.read(x.diskOffset + (s - x.fileOffset), t - s) });
      }
      if (!check) {
        for (const p of pieces) yield { ...p, ok: true };
        continue;
      }
      let ok: boolean;
      if (pieces.length === 0) {
        ok = stored.length === HASH_SIZE && (cEnd - cStart === cs ? stored.equals(zeroChunkHash(cs)) : stored.equals(hashZeros(cEnd - cStart)));
        if (!ok) yield { offset: cStart, data: Buffer.alloc(0), ok };
        continue;
      }
      const h = createHash('sha256');
      let pos = cStart;
      for (const p of pieces) {
        if (p.offset > pos) h.update(Buffer.alloc(p.offset - pos));
        h.update(p.data);
        pos = p.offset + p.data.length;
      }
      if (cEnd > pos) h.update(Buffer.alloc(cEnd - pos));
      ok = stored.length === HASH_SIZE && h.digest().equals(stored);
      for (const p of pieces) yield { ...p, ok };
    }
  }

  /**
   * A file's data in one read, unchecked (as readData with check: false),
   * when it lies in a single extent with no hole and is at most `max` bytes
   * (most files); else null.
   */
  readWhole(file: VolumeEntry, max: number): Promise<Buffer> | null {
    const x = this.oneExtent(file);
    if (!x || x.length > max) return null;
    return this.disk.read(x.diskOffset, x.length);
  }

  /** The extent of a file that lies in one, with no hole (most files); else null. */
  oneExtent(file: VolumeEntry): FileExtent | null {
    const e = this.fileEntry(file);
    const x = e.extents.length === 1 ? e.extents[0] : undefined;
    return x && x.fileOffset === 0 && x.length === e.size ? x : null;
  }

  /**
   * `length` bytes of a file in one extent (oneExtent) from file offset
   * `from`, unchecked, in order: views into the disk's own memory where it
   * lends them (Disk.view, one per block: no copy), else one buffer read.
   * A view must not be changed, and goes back with freeBuffer() once done
   * with; a buffer read is the caller's, and freeBuffer() frees it too.
   */
  async readSpan(x: FileExtent, from: number, length: number): Promise<Buffer[]> {
    const d = this.disk;
    const at = x.diskOffset + from;
    if (d.view) {
      const views: Buffer[] = [];
      let pos = at;
      while (pos < at + length) {
        const n = Math.min(d.blockSize - (pos % d.blockSize), at + length - pos);
        const v = await d.view(pos, n);
        if (!v) break;
        views.push(v);
        pos += n;
      }
      if (pos === at + length) return views;
      for (const v of views) freeBuffer(v); // (a block that cannot lend: all of it read instead)
    }
    return [await d.read(at, length)];
  }

  /** Indexes of the chunks of a file whose data does not match its checksum. */
  async verify(file: VolumeEntry | Buffer | string): Promise<number[]> {
    const bad = new Set<number>();
    for await (const p of this.readData(file)) if (!p.ok) bad.add(Math.floor(p.offset / this.chunkSize));
    return [...bad].sort((a, b) => a - b);
  }

  private fileEntry(file: VolumeEntry | Buffer | string): VolumeEntry {
    let e = Buffer.isBuffer(file) || typeof file === 'string' ? this.stat(file) : file;
    // a hard link's data is its group's first entry's
    if (e && e.type === 'hardlink' && e.linkGroup !== null) e = this.get(e.linkGroup) ?? e;
    if (!e) throw new FerryError('VOLUME_NO_ENTRY', `${String(file)} is not in the volume`, { path: String(file) });
    if (e.type !== 'file') throw new FerryError('VOLUME_NOT_A_FILE', `${e.path.toString()} is a ${e.type}, not a file`, { path: e.path.toString() });
    return e;
  }

  /** Closes the catalog (not the disk: the caller opened it). */
  close(): void {
    if (this.db.open) this.db.close();
  }
}

function hashZeros(n: number): Buffer {
  return createHash('sha256').update(Buffer.alloc(n)).digest();
}

/**
 * Checks a file's data against its stored chunk sums, as readData does, for
 * pieces read with `check: false` (sorted by offset, holes between them read
 * as zeros). Returns the offset of the first chunk that does not match, or
 * null when all do.
 */
export function checkChunks(pieces: { offset: number; data: Uint8Array }[], size: number, chunkSize: number, chunks: Uint8Array): number | null {
  const nChunks = Math.ceil(size / chunkSize);
  if (chunks.length !== nChunks * HASH_SIZE) return 0;
  const native = nativeAddon()?.sha256Chunks;
  let pi = 0;
  for (let c = 0; c < nChunks; c++) {
    const cStart = c * chunkSize;
    const cEnd = Math.min(size, cStart + chunkSize);
    while (pi < pieces.length && pieces[pi].offset + pieces[pi].data.length <= cStart) pi++; // pieces that end before this chunk
    const p = pieces[pi];
    if (native && p && p.offset <= cStart && p.offset + p.data.length >= cEnd) {
      // this chunk and those after it that lie whole in the same piece (most of a restore's data): summed in one call
      const pEnd = p.offset + p.data.length;
      const last = pEnd >= size ? nChunks : Math.floor(pEnd / chunkSize);
      const upTo = Math.min(size, last * chunkSize);
      const sums = Buffer.allocUnsafe((last - c) * HASH_SIZE);
      native(p.data.subarray(cStart - p.offset, upTo - p.offset), chunkSize, sums);
      const stored = chunks.subarray(c * HASH_SIZE, last * HASH_SIZE);
      if (!sums.equals(stored)) {
        for (let k = 0; ; k++) if (!sums.subarray(k * HASH_SIZE, (k + 1) * HASH_SIZE).equals(stored.subarray(k * HASH_SIZE, (k + 1) * HASH_SIZE))) return (c + k) * chunkSize;
      }
      c = last - 1;
      continue;
    }
    const stored = chunks.subarray(c * HASH_SIZE, (c + 1) * HASH_SIZE);
    if (pi >= pieces.length || pieces[pi].offset >= cEnd) {
      // all hole: the sum of zeros, known without hashing (a sparse file may have terabytes of them)
      const zero = cEnd - cStart === chunkSize ? zeroChunkHash(chunkSize) : hashZeros(cEnd - cStart);
      if (!zero.equals(stored)) return cStart;
      continue;
    }
    // a chunk across pieces, or partly a hole
    const h = createHash('sha256');
    let pos = cStart;
    for (let k = pi; k < pieces.length && pieces[k].offset < cEnd; k++) {
      const q = pieces[k];
      const s = Math.max(pos, q.offset);
      const t = Math.min(cEnd, q.offset + q.data.length);
      if (s > pos) h.update(zeros(s - pos));
      if (t > s) h.update(q.data.subarray(s - q.offset, t - q.offset));
      pos = Math.max(pos, t);
    }
    if (cEnd > pos) h.update(zeros(cEnd - pos));
    if (!h.digest().equals(stored)) return cStart;
  }
  return null;
}

let zeroBuf = Buffer.alloc(0);
function zeros(n: number): Buffer {
  if (zeroBuf.length < n) zeroBuf = Buffer.alloc(n);
  return zeroBuf.subarray(0, n);
}
