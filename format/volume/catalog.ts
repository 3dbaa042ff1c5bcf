// The catalog of a files-kind volume: an SQLite database (one row per entry),
// stored inside the volume like a file. Schema and column encodings are
// specified in docs/volume-format.md; this module is the one place that
// turns rows into entries and back.
//
// 64-bit values (times in ns, inode, device) are SQLite INTEGERs read with
// safeIntegers, so nothing is rounded through a double. Unsigned 64-bit
// values (ino, dev, rdev) are stored as their two's-complement signed form.
import type Database from 'better-sqlite3';

export const ENTRY_TYPES = ['file', 'dir', 'symlink', 'hardlink', 'chardev', 'blockdev', 'fifo', 'socket'] as const;
export type EntryType = (typeof ENTRY_TYPES)[number];

export interface Xattr {
  /** The attribute name's bytes, as a latin1 string (lossless for any byte). */
  name: string;
  value: Buffer;
}

/** What the source knows about one entry: the part every layer shares. */
export interface EntryMeta {
  /** Absolute path on the source machine, as bytes. */
  path: Buffer;
  type: EntryType;
  /** Permission bits, with setuid, setgid and sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  atimeNs: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  /** Apparent size in bytes (files; the target's length for symlinks). */
  size: number;
  ino: bigint;
  dev: bigint;
  nlink: number;
  /** Device number of a chardev/blockdev (Linux dev_t encoding). */
  rdev: bigint;
  /** Symlink target, or for a 'hardlink' the path of the group's first entry. */
  target: Buffer | null;
  xattrs: Xattr[];
  /** Ancestor of a source root, kept so the tree is complete; restore does not change an existing one. */
  implicit: boolean;
}

/** A file's data: `length` bytes at `fileOffset` live at `diskOffset`. */
export interface FileExtent {
  fileOffset: number;
  diskOffset: number;
  length: number;
}

export interface VolumeEntry extends EntryMeta {
  id: number;
  parent: number | null;
  /** Id of the first entry of the hard-link group (itself for the first), null when not linked. */
  linkGroup: number | null;
  extents: FileExtent[];
  /** SHA-256 of each chunk of the file's logical bytes, 32 bytes each, concatenated. */
  chunks: Buffer;
}

export const SCHEMA = `
CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value BLOB
);
CREATE TABLE entries (
  id         INTEGER PRIMARY KEY,
  parent     INTEGER,
  path       BLOB NOT NULL UNIQUE,
  name       BLOB NOT NULL,
  type       TEXT NOT NULL,
  mode       INTEGER NOT NULL,
  uid        INTEGER NOT NULL,
  gid        INTEGER NOT NULL,
  atime_ns   INTEGER NOT NULL,
  mtime_ns   INTEGER NOT NULL,
  ctime_ns   INTEGER NOT NULL,
  size       INTEGER NOT NULL,
  ino        INTEGER NOT NULL,
  dev        INTEGER NOT NULL,
  nlink      INTEGER NOT NULL,
  rdev       INTEGER NOT NULL,
  target     BLOB,
  xattrs     BLOB,
  link_group INTEGER,
  implicit   INTEGER NOT NULL DEFAULT 0,
  extents    BLOB,
  chunks     BLOB
);
`;

/**
 * Made when the catalog is complete (VolumeWriter.finish): built from the rows at
 * once, it costs a seed less than kept up row by row (the writer finds
 * parents in a map of its own, never through it).
 */
export const INDEXES = `
CREATE INDEX entries_parent ON entries (parent, name);
`;

export const COLUMNS = [
  'parent', 'path', 'name', 'type', 'mode', 'uid', 'gid', 'atime_ns', 'mtime_ns', 'ctime_ns', 'size',
  'ino', 'dev', 'nlink', 'rdev', 'target', 'xattrs', 'link_group', 'implicit', 'extents', 'chunks',
] as const;

/** Values bound by position, in COLUMNS order (toRow): a named binding looks 21 names up per row, 40 % slower over a seed's catalog. */
export const INSERT_SQL = `INSERT INTO entries (${COLUMNS.join(', ')}) VALUES (${COLUMNS.map(() => '?').join(', ')})`;

const EXTENT_BYTES = 24;

export function encodeExtents(extents: FileExtent[]): Buffer | null {
  if (extents.length === 0) return null;
  const b = Buffer.alloc(extents.length * EXTENT_BYTES);
  extents.forEach((e, i) => {
    b.writeBigUInt64LE(BigInt(e.fileOffset), i * EXTENT_BYTES);
    b.writeBigUInt64LE(BigInt(e.diskOffset), i * EXTENT_BYTES + 8);
    b.writeBigUInt64LE(BigInt(e.length), i * EXTENT_BYTES + 16);
  });
  return b;
}

export function decodeExtents(b: Buffer | null): FileExtent[] {
  if (!b) return [];
  const out: FileExtent[] = [];
  for (let i = 0; i + EXTENT_BYTES <= b.length; i += EXTENT_BYTES) {
    out.push({ fileOffset: u64At(b, i), diskOffset: u64At(b, i + 8), length: u64At(b, i + 16) });
  }
  return out;
}

/** An unsigned 64-bit LE number as a double, as Number(readBigUInt64LE) gives it, with no BigInt made when it is below 2^53. */
function u64At(b: Buffer, at: number): number {
  const hi = b.readUInt32LE(at + 4);
  return hi < 0x200000 ? hi * 0x100000000 + b.readUInt32LE(at) : Number(b.readBigUInt64LE(at));
}

/** xattrs column: JSON `[[name, base64 value], ...]`, NULL when there are none. */
export function encodeXattrs(x: Xattr[]): Buffer | null {
  if (x.length === 0) return null;
  return Buffer.from(JSON.stringify(x.map((a) => [a.name, a.value.toString('base64')])));
}

export function decodeXattrs(b: Buffer | null): Xattr[] {
  if (!b) return [];
  const list = JSON.parse(b.toString('utf8')) as [string, string][];
  return list.map(([name, v]) => ({ name, value: Buffer.from(v, 'base64') }));
}

const s64 = (n: bigint) => BigInt.asIntN(64, n);
const u64 = (n: bigint) => BigInt.asUintN(64, n);

const NS = 1_000_000_000n;
const TIME_BLOB = 12;

/**
 * A time in nanoseconds as the catalog holds it: an INTEGER, or, when 64
 * bits of nanoseconds cannot hold it (before 1677-09-21 or after
 * 2262-04-11: ext4 keeps times to 2446, btrfs further), a 12-byte BLOB of
 * seconds (signed 64-bit LE) and nanoseconds (unsigned 32-bit LE).
 */
export function encodeTime(ns: bigint): bigint | Buffer {
  if (BigInt.asIntN(64, ns) === ns) return ns;
  const [sec, sub] = splitTime(ns);
  const b = Buffer.alloc(TIME_BLOB);
  b.writeBigInt64LE(sec, 0);
  b.writeUInt32LE(Number(sub), 8);
  return b;
}

/** A time in nanoseconds as whole seconds (floored) and the nanoseconds past them (0..999,999,999): how the kernel keeps it. */
export function splitTime(ns: bigint): [bigint, bigint] {
  const sub = ((ns % NS) + NS) % NS;
  return [(ns - sub) / NS, sub];
}

export function decodeTime(v: unknown): bigint {
  if (typeof v === 'bigint') return v;
  if (Buffer.isBuffer(v) && v.length === TIME_BLOB && v.readUInt32LE(8) < NS) return v.readBigInt64LE(0) * NS + BigInt(v.readUInt32LE(8));
  throw new Error(`a catalog time is neither an integer nor a ${TIME_BLOB}-byte time`);
}

/** Name of the last path component. */
export function baseName(path: Buffer): Buffer {
  if (path.length === 1 && path[0] === 0x2f) return path;
  const i = path.lastIndexOf(0x2f);
  return path.subarray(i + 1);
}

/** Parent path of an absolute path; null for "/". */
export function parentPath(path: Buffer): Buffer | null {
  if (path.length === 1 && path[0] === 0x2f) return null;
  const i = path.lastIndexOf(0x2f);
  return i <= 0 ? Buffer.from('/') : path.subarray(0, i);
}

export function toRow(
  e: EntryMeta,
  extra: { parent: number | null; linkGroup: number | null; extents: FileExtent[]; chunks: Buffer | null },
): unknown[] {
  // in COLUMNS order
  return [
    extra.parent,
    e.path,
    baseName(e.path),
    e.type,
    e.mode,
    e.uid,
    e.gid,
    encodeTime(e.atimeNs),
    encodeTime(e.mtimeNs),
    encodeTime(e.ctimeNs),
    e.size,
    s64(e.ino),
    s64(e.dev),
    e.nlink,
    s64(e.rdev),
    e.target,
    encodeXattrs(e.xattrs),
    extra.linkGroup,
    e.implicit ? 1 : 0,
    encodeExtents(extra.extents),
    extra.chunks && extra.chunks.length ? extra.chunks : null,
  ];
}

/** The columns every entry query selects, in the order fromRaw() reads them. */
export const ENTRY_COLUMNS_SQL =
  'id, parent, path, type, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, size, ino, dev, nlink, rdev, target, xattrs, link_group, implicit, extents, chunks';

/**
 * An entry from a row of `SELECT ${ENTRY_COLUMNS_SQL}` read with raw(true)
 * and safeIntegers(true) (every INTEGER arrives as a bigint, so nothing is
 * rounded through a double).
 */
export function fromRaw(r: unknown[]): VolumeEntry {
  const n = (v: unknown) => (v === null || v === undefined ? null : Number(v as bigint));
  return {
    id: Number(r[0] as bigint),
    parent: n(r[1]),
    path: r[2] as Buffer,
    type: r[3] as EntryType,
    mode: Number(r[4] as bigint),
    uid: Number(r[5] as bigint),
    gid: Number(r[6] as bigint),
    atimeNs: decodeTime(r[7]),
    mtimeNs: decodeTime(r[8]),
    ctimeNs: decodeTime(r[9]),
    size: Number(r[10] as bigint),
    ino: u64(r[11] as bigint),
    dev: u64(r[12] as bigint),
    nlink: Number(r[13] as bigint),
    rdev: u64(r[14] as bigint),
    target: (r[15] as Buffer | null) ?? null,
    xattrs: decodeXattrs(r[16] as Buffer | null),
    linkGroup: n(r[17]),
    implicit: Number(r[18] as bigint) !== 0,
    extents: decodeExtents(r[19] as Buffer | null),
    chunks: (r[20] as Buffer | null) ?? EMPTY,
  };
}

const EMPTY = Buffer.alloc(0);

/**
 * SQLite's page cache for a catalog, built or read: 2 MiB. better-sqlite3
 * builds SQLite with 16 MB, which a seed's catalog (rows appended in one
 * transaction, indexes made at the end) and a restore's (walked in order)
 * grew the process by for nothing: the catalog's file is in the kernel's
 * page cache anyway.
 */
export function limitCatalogCache(db: Database.Database): void {
  db.pragma('cache_size = -2048');
}

export function setupCatalog(db: Database.Database): void {
  db.pragma('page_size = 4096');
  db.pragma('journal_mode = OFF');
  db.pragma('synchronous = OFF');
  limitCatalogCache(db);
  db.exec(SCHEMA);
}
