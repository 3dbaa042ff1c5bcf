// Creating VHDs: empty fixed, dynamic and differencing disks, and a streaming
// writer that lays a whole disk out in one sequential pass (header, blocks,
// then the BAT and footer), which is what `create --from` and `export` use.
import { nativeAddon } from '../native.js';
import { alignedTo, pageAligned } from '../buffers.js';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open as fsOpen, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, relative, resolve } from 'node:path';
import { checkArg } from '../errors.js';
import { geometryToWrite } from './geometry.js';
import {
  DEFAULT_BLOCK_SIZE,
  DiskType,
  type DynamicHeader,
  FIXED_DATA_OFFSET,
  FOOTER_COOKIE,
  type Footer,
  HEADER_COOKIE,
  LocatorStruct,
  MAX_VHD_SIZE,
  SECTOR,
  UNUSED,
  VHD_VERSION,
  bitmapSize,
  encodeFooter,
  encodeHeader,
  vhdTimestamp,
} from './layout.js';
import { VhdDisk } from './vhd.js';
import { writeError, tempBeside, writeAll } from '../fsio.js';

export const CREATOR_APP = 'frry';
export const CREATOR_VERSION = 0x00010000;

export interface FooterOptions {
  size: number;
  type: 'fixed' | 'dynamic' | 'differencing';
  uniqueId?: Buffer;
  date?: Date;
}

export function makeFooter(o: FooterOptions): Footer {
  const g = geometryToWrite(o.size);
  return {
    cookie: FOOTER_COOKIE,
    features: 2,
    version: VHD_VERSION,
    dataOffset: o.type === 'fixed' ? FIXED_DATA_OFFSET : 512n,
    timestamp: vhdTimestamp(o.date),
    creatorApp: CREATOR_APP,
    creatorVersion: CREATOR_VERSION,
    creatorOs: 'Wi2k',
    originalSize: BigInt(o.size),
    currentSize: BigInt(o.size),
    cylinders: g.cylinders,
    heads: g.heads,
    sectorsPerTrack: g.sectorsPerTrack,
    diskType: DiskType[o.type],
    checksum: 0,
    uniqueId: o.uniqueId ?? randomBytes(16),
    savedState: 0,
  };
}

export function checkSize(size: number): void {
  checkArg(
    Number.isSafeInteger(size) && size > 0 && size % SECTOR === 0 && size <= MAX_VHD_SIZE,
    'size',
    `a multiple of 512 bytes between 512 and 2040 GiB`,
    size,
  );
}

export interface ParentRef {
  /** Absolute path of the parent file. */
  path: string;
  uniqueId: Buffer;
  /** Parent modification time, in seconds since 2000 (the spec's "parent time stamp"). */
  timestamp: number;
}

interface Layout {
  header: Buffer;
  batOffset: number;
  batEntries: number;
  locatorData: Array<{ offset: number; data: Buffer }>;
  dataStart: number;
}

/** Header, BAT position and locator sectors of a new dynamic or differencing disk at `childPath`. */
function layoutDynamic(size: number, blockSize: number, childPath: string, parent?: ParentRef): Layout {
  const batEntries = Math.ceil(size / blockSize);
  const batBytes = Math.ceil((batEntries * 4) / SECTOR) * SECTOR;
  // Locator data goes between the header and the BAT: qemu puts new blocks
  // right after the BAT whatever lies there, so nothing of ours may live there.
  let next = 512 + 1024;
  const locators = Buffer.alloc(8 * 24);
  const locatorData: Layout['locatorData'] = [];
  let parentName = Buffer.alloc(512);
  if (parent) {
    const rel = relative(dirname(resolve(childPath)), parent.path) || basename(parent.path);
    const relWin = '.\\' + rel.split('/').join('\\');
    const relPosix = rel.startsWith('.') ? rel : './' + rel;
    const entries: Array<[string, Buffer]> = [
      ['W2ru', Buffer.from(relWin, 'utf16le')],
      ['W2ku', Buffer.from(parent.path, 'utf16le')],
      ['MacX', Buffer.from('file://' + encodeURI(relPosix), 'utf8')],
    ];
    entries.forEach(([code, data], i) => {
      const space = Math.ceil(data.length / SECTOR) * SECTOR;
      // Data space in bytes, as Windows, Virtual PC and blktap write it.
      LocatorStruct.encode({ platformCode: code, dataSpace: space, dataLength: data.length, reserved: 0, dataOffset: BigInt(next) }, locators, i * 24);
      locatorData.push({ offset: next, data });
      next += space;
    });
    // The parent name in the relative Windows form: libvhdi looks for what
    // follows its last backslash in the child's folder, and Windows accepts it.
    const name = Buffer.from(relWin, 'utf16le').swap16();
    parentName = Buffer.alloc(512);
    name.copy(parentName, 0, 0, Math.min(512, name.length));
  }
  const batOffset = next;
  next += batBytes;
  const h: DynamicHeader = {
    cookie: HEADER_COOKIE,
    dataOffset: 0xffffffffffffffffn,
    tableOffset: BigInt(batOffset),
    version: VHD_VERSION,
    maxTableEntries: batEntries,
    blockSize,
    checksum: 0,
    parentUniqueId: parent ? parent.uniqueId : Buffer.alloc(16),
    parentTimestamp: parent ? parent.timestamp : 0,
    parentName,
    locators,
  };
  return { header: encodeHeader(h), batOffset, batEntries, locatorData, dataStart: next };
}

export interface CreateOptions {
  size: number;
  type?: 'fixed' | 'dynamic';
  blockSize?: number;
  date?: Date;
  uniqueId?: Buffer;
}

export interface StreamOptions extends CreateOptions {
  /**
   * Called with each buffer `blockAt` gave once the writer is done with it
   * (written, or skipped as zeros), so the caller can read the next block
   * into it: fresh 2 MiB buffers cost a page fault per 4 KiB every time.
   */
  recycle?: (buf: Buffer) => void;
  /** Permissions of the new file (default 0o666, less the umask); a restore gives 0o600. */
  mode?: number;
}

/**
 * Streams a whole disk into `path` in one pass. `blockAt(i)` gives block i's
 * bytes (exactly blockSize, or less for the last one) or null when it holds
 * only zeros; null blocks stay unallocated in a dynamic disk. Calls start in
 * block order, several in flight together (see readAhead), so each must
 * stand alone and return a buffer of its own. The file
 * is written under a temporary name and renamed into place when complete.
 */
export async function writeVhd(
  path: string,
  opts: StreamOptions,
  blockAt: (index: number) => Promise<Buffer | null>,
  onProgress?: (done: number, total: number) => void,
): Promise<void> {
  checkSize(opts.size);
  const type = opts.type ?? 'dynamic';
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  checkArg(blockSize >= SECTOR && (blockSize & (blockSize - 1)) === 0, 'blockSize', 'a power of two of at least 512', blockSize);
  const footer = encodeFooter(makeFooter({ size: opts.size, type, date: opts.date, uniqueId: opts.uniqueId }));
  const tmp = tempBeside(path);
  const fh = await fsOpen(tmp, 'w', opts.mode ?? 0o666).catch((err: unknown) => Promise.reject(writeError(err, path, `nothing was written at ${path}`)));
  const writes = new WriteQueue();
  const recycle = opts.recycle ?? (() => {});
  let out: BlockWriter | undefined;
  try {
    out = await BlockWriter.open(tmp, fh);
    const count = Math.ceil(opts.size / blockSize);
    const next = readAhead(count, blockAt);
    if (type === 'fixed') {
      let pos = 0;
      for (let i = 0; i < count; i++) {
        const b = await next();
        const len = Math.min(blockSize, opts.size - i * blockSize);
        // Zero blocks stay holes of the new file (they read as zeros): half
        // the writes on a half-empty disk, and a sparse file, as qemu-img makes.
        if (b && !isZero(b.subarray(0, len))) await writes.add(out.write([b.subarray(0, len)], pos).then(() => recycle(b)));
        else if (b) recycle(b);
        pos += len;
        onProgress?.(pos, opts.size);
      }
      await writes.drain();
      await writeAll(fh, footer, opts.size);
    } else {
      const lay = layoutDynamic(opts.size, blockSize, path);
      const bat = Buffer.alloc(Math.ceil((lay.batEntries * 4) / SECTOR) * SECTOR, 0xff);
      const bmBytes = bitmapSize(blockSize);
      const bm = out.buffer(bmBytes).fill(0xff);
      let pos = lay.dataStart;
      for (let i = 0; i < count; i++) {
        const b = await next();
        if (b && !isZero(b)) {
          bat.writeUInt32BE(pos / SECTOR, i * 4);
          // bitmap, data and the zero tail of a short last block: one pwritev
          const parts = b.length < blockSize ? [bm, b, Buffer.alloc(blockSize - b.length)] : [bm, b];
          await writes.add(out.write(parts, pos).then(() => recycle(b)));
          pos += bmBytes + blockSize;
        } else if (b) {
          recycle(b);
        }
        onProgress?.(Math.min((i + 1) * blockSize, opts.size), opts.size);
      }
      await writes.drain();
      await writeAll(fh, footer, 0);
      await writeAll(fh, lay.header, 512);
      await writeAll(fh, bat, lay.batOffset);
      await writeAll(fh, footer, pos);
    }
    await out.close();
    await fh.sync();
    await fh.close();
    await rename(tmp, path);
  } catch (err) {
    await writes.settle();
    await out?.close().catch(() => {});
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
    throw writeError(err, path, `free space there or write it elsewhere; nothing was written at ${path}`, `nothing was written at ${path}`);
  }
}

/**
 * Equal-sized buffers handed out and taken back: a pipeline that reads
 * ahead and writes behind needs a few, not one per block.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  /** Where each buffer handed out starts in its memory (page-aligned ones are views). */
  private readonly starts = new WeakMap<ArrayBufferLike, number>();
  /** `aligned`: buffers start on a page (what BlockWriter writes past the page cache), when the addon can tell where memory sits. */
  constructor(
    readonly size: number,
    private readonly aligned = false,
  ) {}
  /** A buffer of `size` bytes, contents undefined. */
  take(): Buffer {
    const kept = this.free.pop();
    if (kept) return kept;
    const b = (this.aligned ? pageAligned(this.size) : null) ?? Buffer.allocUnsafeSlow(this.size);
    this.starts.set(b.buffer, b.byteOffset);
    return b;
  }
  give(b: Buffer): void {
    if (this.free.length >= 2 * READ_AHEAD + 4) return;
    const start = this.starts.get(b.buffer) ?? (b.buffer.byteLength === this.size ? 0 : undefined);
    if (start === undefined || b.byteOffset !== start) return;
    this.free.push(Buffer.from(b.buffer, start, this.size));
  }
}

/**
 * A new file's blocks written past the page cache (O_DIRECT) where they
 * are aligned to sectors in memory, length and place, else through the
 * ordinary descriptor: on this VM the cache's write-back made a cold
 * export take 1.2-2.6 s where direct writes took 0.8-1.0 s (docs/PERFORMANCE.md).
 * A file system that refuses O_DIRECT (tmpfs, some FUSE), or a write it
 * will not take (EINVAL: a disk of 4 KiB sectors), goes through `fh` from
 * then on. The caller syncs and closes `fh`; this closes its own descriptor.
 */
export class BlockWriter {
  /** The O_DIRECT descriptor once a write was refused (EINVAL): no longer used, closed in close(). */
  private refused: FileHandle | null = null;

  private constructor(
    private readonly fh: FileHandle,
    private direct: FileHandle | null,
  ) {}

  static async open(tmp: string, fh: FileHandle): Promise<BlockWriter> {
    const direct = nativeAddon()?.alignOf ? await fsOpen(tmp, constants.O_WRONLY | constants.O_DIRECT).catch(() => null) : null;
    return new BlockWriter(fh, direct);
  }

  /** A buffer of `size` bytes, contents undefined, that this writer can write directly. */
  buffer(size: number): Buffer {
    return pageAligned(size) ?? Buffer.allocUnsafeSlow(size);
  }

  async write(parts: Buffer[], pos: number): Promise<void> {
    const d = this.direct;
    if (d && pos % SECTOR === 0 && parts.every((b) => b.length % SECTOR === 0 && alignedTo(b, SECTOR))) {
      try {
        return await writevAll(d, parts, pos);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        this.direct = null;
        this.refused = d;
      }
    }
    return writevAll(this.fh, parts, pos);
  }

  async close(): Promise<void> {
    await Promise.all([this.direct?.close(), this.refused?.close()]);
  }
}

/** How many blocks the source may be read ahead of the writer. */
export const READ_AHEAD = 4;

/**
 * Starts `fetch(0..count-1)` in order, keeping READ_AHEAD blocks started
 * beyond the one the consumer waits for (so up to READ_AHEAD + 1 in flight);
 * the returned function hands out the results in order. Reading the source then overlaps writing
 * and keeps the device queue busy: with one block of prefetch, `vhd create
 * --from` and `vhd export` spent half their time waiting for reads (see
 * docs/PERFORMANCE.md).
 */
export function readAhead<T>(count: number, fetch: (index: number) => Promise<T>): () => Promise<T> {
  const queue: Array<Promise<T>> = [];
  let issued = 0;
  const fill = () => {
    while (queue.length < READ_AHEAD && issued < count) {
      const p = fetch(issued++);
      // handled here so a failure ahead of the consumer is not an unhandled
      // rejection; the consumer still sees it when it reaches that block
      p.catch(() => {});
      queue.push(p);
    }
  };
  fill();
  return () => {
    const p = queue.shift();
    if (!p) return Promise.reject(new Error('readAhead: read past the last block'));
    fill();
    return p;
  };
}

/**
 * Writes that may be in flight together (positions are all known up front,
 * and each buffer is the writer's own): reading the source, copying into the
 * page cache and the kernel's writeback then overlap, as in qemu-img.
 */
export class WriteQueue {
  private readonly inFlight: Array<Promise<void>> = [];
  private failure: { err: unknown } | undefined;

  constructor(private readonly limit = READ_AHEAD) {}

  /** Queues a started write; waits while `limit` are in flight; throws the first failure. */
  async add(write: Promise<void>): Promise<void> {
    this.inFlight.push(
      write.catch((err) => {
        this.failure ??= { err };
      }),
    );
    if (this.inFlight.length >= this.limit) await this.inFlight.shift();
    if (this.failure) throw this.failure.err;
  }

  /** Waits for every queued write; throws the first failure. */
  async drain(): Promise<void> {
    await this.settle();
    if (this.failure) throw this.failure.err;
  }

  /** Waits for every queued write, whatever the outcome (before closing the file on an error). */
  async settle(): Promise<void> {
    while (this.inFlight.length > 0) await this.inFlight.shift();
  }
}

const ZERO = Buffer.alloc(DEFAULT_BLOCK_SIZE);
export function isZero(b: Buffer): boolean {
  for (let off = 0; off < b.length; off += ZERO.length) {
    const n = Math.min(ZERO.length, b.length - off);
    if (b.compare(ZERO, 0, n, off, off + n) !== 0) return false;
  }
  return true;
}

/** Writes `bufs` one after the other from `pos`: one pwritev, then the rest of a short write. */
async function writevAll(fh: FileHandle, bufs: Buffer[], pos: number): Promise<void> {
  let done = (await fh.writev(bufs, pos)).bytesWritten;
  for (const b of bufs) {
    if (done >= b.length) {
      done -= b.length;
      pos += b.length;
      continue;
    }
    await writeAll(fh, b.subarray(done), pos + done);
    pos += b.length;
    done = 0;
  }
}

/** Creates an empty fixed or dynamic disk. */
export async function createVhd(path: string, opts: CreateOptions): Promise<void> {
  if ((opts.type ?? 'dynamic') === 'fixed') {
    checkSize(opts.size);
    // A fixed disk is its data then a footer: extend the file sparsely.
    const tmp = tempBeside(path);
    const fh = await fsOpen(tmp, 'w');
    try {
      await writeAll(fh, encodeFooter(makeFooter({ size: opts.size, type: 'fixed', date: opts.date, uniqueId: opts.uniqueId })), opts.size);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    return;
  }
  await writeVhd(path, opts, async () => null);
}

export interface EmptyImage {
  /** Bytes 0..dataStart of the file: footer copy, dynamic header, locators, BAT. */
  prefix: Buffer;
  /** The footer that ends the file (equal to the copy at 0). */
  footer: Buffer;
  dataStart: number;
  uniqueId: Buffer;
}

/**
 * An empty dynamic or differencing image, in memory. `childPath` and the
 * parent's path only shape the relative locators.
 */
export function emptyImage(o: {
  size: number;
  blockSize?: number;
  parent?: ParentRef;
  childPath?: string;
  uniqueId?: Buffer;
  date?: Date;
}): EmptyImage {
  checkSize(o.size);
  const blockSize = o.blockSize ?? DEFAULT_BLOCK_SIZE;
  const uniqueId = o.uniqueId ?? randomBytes(16);
  const lay = layoutDynamic(o.size, blockSize, o.childPath ?? '/child.vhd', o.parent);
  const footer = encodeFooter(makeFooter({ size: o.size, type: o.parent ? 'differencing' : 'dynamic', date: o.date, uniqueId }));
  const prefix = Buffer.alloc(lay.dataStart, 0);
  footer.copy(prefix, 0);
  lay.header.copy(prefix, 512);
  prefix.fill(0xff, lay.batOffset, lay.batOffset + Math.ceil((lay.batEntries * 4) / SECTOR) * SECTOR);
  for (const l of lay.locatorData) l.data.copy(prefix, l.offset);
  return { prefix, footer, dataStart: lay.dataStart, uniqueId };
}

/** Creates a differencing disk at `path` over the VHD at `parentPath`. */
export async function createDifferencing(path: string, parentPath: string, opts: { date?: Date; uniqueId?: Buffer } = {}): Promise<void> {
  const parentAbs = resolve(parentPath);
  const parent = await VhdDisk.open(parentAbs);
  let ref: ParentRef;
  let size: number;
  let blockSize: number;
  try {
    const st = await stat(parentAbs);
    size = parent.size;
    blockSize = parent.type === 'fixed' ? DEFAULT_BLOCK_SIZE : parent.blockSize;
    ref = { path: parentAbs, uniqueId: parent.uniqueId, timestamp: vhdTimestamp(st.mtime) };
  } finally {
    await parent.close();
  }
  const img = emptyImage({ size, blockSize, parent: ref, childPath: path, ...opts });
  const tmp = tempBeside(path);
  const fh = await fsOpen(tmp, 'w');
  try {
    await writeAll(fh, Buffer.concat([img.prefix, img.footer]), 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

export { UNUSED };
