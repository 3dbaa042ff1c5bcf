// A VHD (fixed, dynamic or differencing) as a Disk: reads through its chain,
// writes into its own layer, allocates blocks the way qemu does (block where
// the footer was, then the footer at the new end, then the BAT entry), so
// that a write torn at any instant leaves a file that still opens.
import { constants } from 'node:fs';
import { open as fsOpen, stat, type FileHandle } from 'node:fs/promises';
import type { Disk, Extent } from '../disk.js';
import { alignedTo, pageAligned, takeZeroed } from '../buffers.js';
import { nativeAddon } from '../native.js';
import { checkArg } from '../errors.js';
import { type ByteSource, type Decoded, decodeVhd, isFatal } from './decode.js';
import { encodeFooter, SECTOR, UNUSED, bitmapSize, type Footer } from './layout.js';
import { type Problem, VhdError } from './problems.js';
import { blockDeviceSize, writeAll } from '../fsio.js';

/** Random read/write access to the bytes of a VHD. */
export interface VhdStorage extends ByteSource {
  readonly writable: boolean;
  /** Bytes lent as a view (see Disk.view), or null: a store that keeps what it read whole (a vault's). */
  view?(position: number, length: number): Promise<Buffer | null>;
  write(position: number, data: Buffer): Promise<void>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

export class FileStorage implements VhdStorage {
  private constructor(
    readonly name: string,
    private readonly fh: FileHandle,
    readonly writable: boolean,
    private length: number,
  ) {}

  static async open(path: string, writable: boolean): Promise<FileStorage> {
    // the kind first: opening a fifo would wait for a writer for ever
    const before = await stat(path).catch((err: NodeJS.ErrnoException) => {
      throw openError(path, err);
    });
    if (!before.isFile() && !before.isBlockDevice()) throw notAFile(path, before);
    let fh: FileHandle;
    try {
      fh = await fsOpen(path, writable ? 'r+' : 'r');
    } catch (err) {
      throw openError(path, err as NodeJS.ErrnoException);
    }
    const st = await fh.stat();
    if (!st.isFile() && !st.isBlockDevice()) {
      await fh.close();
      throw notAFile(path, st);
    }
    // a VHD on a block device (an LV, a loop device): stat says 0 bytes
    const size = st.isBlockDevice() ? await blockDeviceSize(path, st.rdev).catch(async (err) => {
      await fh.close();
      throw err;
    }) : st.size;
    return new FileStorage(path, fh, writable, size);
  }

  async size(): Promise<number> {
    return this.length;
  }

  async read(position: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done === length ? buf : buf.subarray(0, done);
  }

  async readInto(buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, offset + done, length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }

  /**
   * Fills `bufs` one after the other from `position` (one preadv when it
   * can); returns the bytes read. Whole sectors are read past the page cache
   * (O_DIRECT) when the file system takes it: a VHD read once, as an export
   * reads it, gains nothing from the cache, and on this VM reading 1 GiB
   * through it while writing another took as long again (docs/PERFORMANCE.md).
   * A small buffer that is not aligned in memory is read through an aligned
   * one and copied.
   */
  async readvInto(bufs: Buffer[], position: number): Promise<number> {
    const want = bufs.reduce((n, b) => n + b.length, 0);
    const direct = want >= DIRECT_MIN && position % SECTOR === 0 && bufs.every((b) => b.length % SECTOR === 0) ? await this.#directFh() : null;
    if (direct) {
      const via = bufs.map((b) => (alignedTo(b, SECTOR) ? b : b.length <= 64 * 1024 ? pageAligned(b.length) : null));
      if (via.every((b) => b !== null)) {
        try {
          const got = (await direct.readv(via as Buffer[], position)).bytesRead;
          if (got === want) {
            via.forEach((b, i) => b !== bufs[i] && b!.copy(bufs[i]));
            return got;
          }
          // short (the file's end): read again through the cache, below
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
          this.#directRefused = true; // (a device of larger sectors, say: not again)
        }
      }
    }
    let done = (await this.fh.readv(bufs, position)).bytesRead;
    if (done >= want || done === 0) return done;
    // A short vector read (rare): finish buffer by buffer.
    let skip = done;
    for (const b of bufs) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      const got = await this.readInto(b, skip, b.length - skip, position + done);
      done += got;
      if (got < b.length - skip) break;
      skip = 0;
    }
    return done;
  }

  async write(position: number, data: Buffer): Promise<void> {
    await writeAll(this.fh, data, position);
    if (position + data.length > this.length) this.length = position + data.length;
  }

  async sync(): Promise<void> {
    await this.fh.sync();
  }

  /** A second descriptor with O_DIRECT, opened at first use; null when the file system refuses it (or without the addon, which tells alignment). */
  #direct: Promise<FileHandle | null> | undefined;
  /** A read through #direct was refused (EINVAL): not used again (closed with the file). */
  #directRefused = false;

  async #directFh(): Promise<FileHandle | null> {
    if (this.#directRefused) return null;
    this.#direct ??= this.writable || !nativeAddon()?.alignOf ? Promise.resolve(null) : fsOpen(this.name, constants.O_RDONLY | constants.O_DIRECT).catch(() => null);
    return this.#direct;
  }

  async close(): Promise<void> {
    const d = await this.#direct;
    await Promise.all([this.fh.close(), d?.close()]);
  }
}

/** Reads smaller than this go through the page cache (headers, bitmaps: read again and again). */
const DIRECT_MIN = 256 * 1024;

export function openError(path: string, err: NodeJS.ErrnoException): Error {
  const why: Record<string, string> = {
    ENOENT: 'no such file',
    EISDIR: 'is a directory, not a VHD file',
  };
  if (err.code && why[err.code]) {
    return new VhdError({ code: 'VHD_NOT_A_FILE', severity: 'fatal', file: path, message: why[err.code] });
  }
  // the file is there: the way to it is not (a parent a merge must write, a child on a read-only disk)
  const denied: Record<string, string> = {
    EACCES: 'permission denied; run ferry as a user who may read it (and write it, to merge into it or write through it)',
    EPERM: 'not permitted; run ferry as a user who may read it (and write it, to merge into it or write through it)',
    EROFS: 'on a read-only file system; remount it writable, or copy the disk to a writable place first',
  };
  if (err.code && denied[err.code]) {
    return new VhdError({ code: 'VHD_NO_ACCESS', severity: 'fatal', file: path, message: denied[err.code] });
  }
  return err;
}

/** Whether the first `sectors` bits of a bitmap are all set. */
function allSet(bm: Buffer, sectors: number): boolean {
  const whole = sectors >> 3;
  for (let i = 0; i < whole; i++) if (bm[i] !== 0xff) return false;
  for (let s = whole * 8; s < sectors; s++) if (!bit(bm, s)) return false;
  return true;
}

/** Bit i of a VHD sector bitmap: MSB first. */
function bit(bm: Buffer, i: number): boolean {
  return (bm[i >> 3] & (0x80 >> (i & 7))) !== 0;
}

export interface VhdOpenOptions {
  writable?: boolean;
  /** The parent layer of a differencing disk (see chain.ts for resolving it). */
  parent?: Disk | null;
}

export class VhdDisk implements Disk {
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly blockCount: number;
  readonly type: 'fixed' | 'dynamic' | 'differencing';
  readonly writable: boolean;
  parent: Disk | null;
  readonly footer: Footer;
  readonly info: Decoded;
  private readonly bat: Uint32Array | undefined;
  private readonly bitmapBytes: number;
  private readonly bitmaps = new Map<number, Buffer>();
  /** Where the next block goes: the footer's position, or past whatever a torn write left. */
  private nextFree: number;
  private footerBuf: Buffer;
  private closed = false;

  protected constructor(readonly storage: VhdStorage, d: Decoded, parent: Disk | null) {
    this.name = storage.name;
    this.info = d;
    this.footer = d.footer!;
    this.type = d.type!;
    this.size = d.size!;
    this.writable = storage.writable;
    this.parent = parent;
    this.bat = d.bat;
    // Fixed disks have no blocks; present them as 2 MiB units, all allocated.
    this.blockSize = d.blockSize ?? 2 * 1024 * 1024;
    this.blockCount = Math.ceil(this.size / this.blockSize);
    this.bitmapBytes = d.blockSize ? bitmapSize(d.blockSize) : 0;
    this.footerBuf = encodeFooter(this.footer);
    const end = d.footerAtEnd ? d.footerOffset! : d.fileSize;
    this.nextFree = Math.ceil(end / SECTOR) * SECTOR;
  }

  get problems(): Problem[] {
    return this.info.problems;
  }

  /** Opens a VHD from its storage; fatal problems throw a VhdError. */
  static async fromStorage(storage: VhdStorage, opts: VhdOpenOptions = {}): Promise<VhdDisk> {
    const d = await decodeVhd(storage);
    if (isFatal(d)) {
      await storage.close();
      throw new VhdError(d.problems.find((p) => p.severity === 'fatal')!);
    }
    if (storage.writable) {
      // Writing into a disk whose block table points into itself or past the
      // end would overwrite one block with another: refuse, name the problem.
      const unsafe = d.problems.find((p) => p.code === 'VHD_BAT_OVERLAP' || p.code === 'VHD_BAT_PAST_END' || p.code === 'VHD_BAT_TOO_SMALL');
      if (unsafe) {
        await storage.close();
        throw new VhdError({ ...unsafe, severity: 'fatal', message: `${unsafe.message}; refusing to write into a damaged disk (read it, or export it to a new one)` });
      }
    }
    const disk = new VhdDisk(storage, d, opts.parent ?? null);
    if (storage.writable) await disk.repairTail();
    return disk;
  }

  static async open(path: string, opts: VhdOpenOptions = {}): Promise<VhdDisk> {
    const storage = await FileStorage.open(path, !!opts.writable);
    return VhdDisk.fromStorage(storage, opts);
  }

  /** A writer found no footer at the end (a torn allocation): put one back. */
  private async repairTail(): Promise<void> {
    if (this.type === 'fixed' || this.info.footerAtEnd) return;
    await this.storage.write(this.nextFree, this.footerBuf);
    this.info.footerAtEnd = true;
    this.info.footerOffset = this.nextFree;
  }

  get parentUniqueId(): Buffer | undefined {
    return this.info.header?.parentUniqueId;
  }

  get uniqueId(): Buffer {
    return this.footer.uniqueId;
  }

  hasBlock(index: number): boolean {
    if (this.type === 'fixed') return index >= 0 && index < this.blockCount;
    return !!this.bat && index < this.bat.length && this.bat[index] !== UNUSED && this.blockOk(index);
  }

  /** File offset of block `index`'s bitmap, or undefined when absent. */
  blockOffset(index: number): number | undefined {
    if (!this.bat || index >= this.bat.length || this.bat[index] === UNUSED) return undefined;
    return this.bat[index] * SECTOR;
  }

  private blockOk(index: number): boolean {
    return this.bat![index] * SECTOR + this.bitmapBytes <= this.storageEnd();
  }

  private storageEnd(): number {
    return this.info.footerAtEnd ? this.info.footerOffset! : this.info.fileSize;
  }

  private async bitmap(index: number): Promise<Buffer> {
    let bm = this.bitmaps.get(index);
    if (bm) return bm;
    const pos = this.bat![index] * SECTOR;
    bm = await this.storage.read(pos, this.bitmapBytes);
    if (bm.length < this.bitmapBytes) this.pastEnd(index);
    this.remember(index, bm);
    return bm;
  }

  private remember(index: number, bm: Buffer): void {
    if (this.bitmaps.size >= 8192) this.bitmaps.clear();
    this.bitmaps.set(index, bm);
  }

  private pastEnd(index: number): never {
    throw new VhdError({
      code: 'VHD_BAT_PAST_END',
      severity: 'error',
      file: this.name,
      offset: Number(this.info.header?.tableOffset ?? 0) + index * 4,
      field: `bat[${index}]`,
      message: `block ${index} lies past the end of the file; the disk is truncated or its block table is damaged`,
    });
  }

  private checkRange(offset: number, length: number, what: string): void {
    if (this.closed) throw new Error(`${this.name} is closed`);
    // (the message's strings made only when it fails: this runs for every read)
    if (Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.size) return;
    checkArg(false, what, `inside the disk (0..${this.size})`, `${offset}+${length}`);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length, 'read range');
    const out = Buffer.allocUnsafe(length); // (readInto writes every byte)
    await this.readInto(out, offset);
    return out;
  }

  async view(offset: number, length: number): Promise<Buffer | null> {
    this.checkRange(offset, length, 'read range');
    const st = this.storage;
    if (!st.view || this.type === 'fixed' || length === 0) return null;
    const bs = this.blockSize;
    const bi = Math.floor(offset / bs);
    const inBlock = offset - bi * bs;
    if (inBlock + length > bs || !this.bat || bi >= this.bat.length || this.bat[bi] === UNUSED) return null;
    // only where this layer holds every sector asked for
    const bm = this.bitmaps.get(bi) ?? (await this.bitmap(bi));
    for (let s = Math.floor(inBlock / SECTOR), last = Math.floor((inBlock + length - 1) / SECTOR); s <= last; s++) if (!bit(bm, s)) return null;
    return st.view(this.bat[bi] * SECTOR + this.bitmapBytes + inBlock, length);
  }

  /** Fills `out` with the chain's bytes from `offset`: every byte of it is written (it may arrive dirty). */
  async readInto(out: Buffer, offset: number): Promise<void> {
    const length = out.length;
    if (this.type === 'fixed') {
      const got = await this.storage.read(offset, length);
      if (got.length < length) {
        throw new VhdError({
          code: 'VHD_TRUNCATED',
          severity: 'error',
          file: this.name,
          offset: offset + got.length,
          message: `fixed disk ends before its declared size (${this.size} bytes)`,
        });
      }
      got.copy(out);
      return;
    }
    const bs = this.blockSize;
    for (let pos = offset; pos < offset + length; ) {
      const bi = Math.floor(pos / bs);
      const inBlock = pos - bi * bs;
      const n = Math.min(bs - inBlock, offset + length - pos);
      const dst = out.subarray(pos - offset, pos - offset + n);
      await this.readBlockPart(bi, inBlock, dst);
      pos += n;
    }
  }

  private async fromParent(pos: number, dst: Buffer): Promise<void> {
    if (!this.parent) {
      dst.fill(0);
      return;
    }
    const p = this.parent as Disk & { readInto?: (b: Buffer, o: number) => Promise<void> };
    if (pos + dst.length > this.parent.size) {
      // A parent smaller than the child reads as zeros past its end.
      const n = Math.max(0, this.parent.size - pos);
      dst.fill(0, n);
      if (n > 0) (await this.parent.read(pos, n)).copy(dst);
      return;
    }
    if (p.readInto) await p.readInto(dst, pos);
    else (await this.parent.read(pos, dst.length)).copy(dst);
  }

  private async readBlockPart(bi: number, inBlock: number, dst: Buffer): Promise<void> {
    const bs = this.blockSize;
    const virt = bi * bs + inBlock;
    const diff = this.type === 'differencing';
    if (!this.bat || bi >= this.bat.length || this.bat[bi] === UNUSED) {
      if (diff) await this.fromParent(virt, dst);
      else dst.fill(0);
      return;
    }
    const dataPos = this.bat[bi] * SECTOR + this.bitmapBytes;
    const st = this.storage as VhdStorage & Partial<Pick<FileStorage, 'readInto' | 'readvInto'>>;
    let bm = this.bitmaps.get(bi);
    let filled = false; // dst already holds the block's stored bytes
    if (!bm && st.readvInto && inBlock === 0 && dst.length === bs) {
      // A whole block: bitmap and data in one request, as they lie on disk
      // (a 2 MiB block read as 512 bytes then 2 MiB was two requests, and
      // the second no longer sequential for the device queue).
      const fresh = Buffer.allocUnsafe(this.bitmapBytes);
      const got = await st.readvInto([fresh, dst], dataPos - this.bitmapBytes);
      if (got < fresh.length) this.pastEnd(bi);
      this.remember(bi, fresh);
      if (got === fresh.length + dst.length) {
        if (allSet(fresh, bs / SECTOR)) return;
        filled = true; // some sectors are not present: those runs are redone below
      } else {
        dst.fill(0); // the file ends inside the block: read run by run below, as ever
      }
      bm = fresh;
    }
    bm ??= await this.bitmap(bi);
    // Walk runs of equal bits: set bits read here, clear bits read the parent
    // (differencing) or zeros (dynamic, as the spec and libvhdi have it).
    const firstSector = Math.floor(inBlock / SECTOR);
    const lastSector = Math.floor((inBlock + dst.length - 1) / SECTOR);
    let s = firstSector;
    while (s <= lastSector) {
      const here = bit(bm, s);
      let e = s + 1;
      while (e <= lastSector && bit(bm, e) === here) e++;
      const runStart = Math.max(inBlock, s * SECTOR);
      const runEnd = Math.min(inBlock + dst.length, e * SECTOR);
      const part = dst.subarray(runStart - inBlock, runEnd - inBlock);
      if (here) {
        if (filled) {
          // already read, with the bitmap
        } else if (st.readInto) {
          // Straight into the caller's buffer: no block-sized copy per read.
          if ((await st.readInto(part, 0, part.length, dataPos + runStart)) < part.length) this.pastEnd(bi);
        } else {
          const got = await this.storage.read(dataPos + runStart, runEnd - runStart);
          if (got.length < runEnd - runStart) this.pastEnd(bi);
          got.copy(part);
        }
      } else {
        // Not present: zeros (dynamic) or the parent's bytes (differencing),
        // whatever the file holds there.
        if (diff) await this.fromParent(bi * bs + runStart, part);
        else part.fill(0);
      }
      s = e;
    }
  }

  async ownExtents(index: number): Promise<Extent[]> {
    if (this.type === 'fixed') {
      const start = index * this.blockSize;
      return [{ offset: start, length: Math.min(this.blockSize, this.size - start) }];
    }
    if (!this.hasBlock(index)) return [];
    const bm = await this.bitmap(index);
    const sectors = Math.ceil(Math.min(this.blockSize, this.size - index * this.blockSize) / SECTOR);
    const out: Extent[] = [];
    let s = 0;
    while (s < sectors) {
      if (!bit(bm, s)) {
        s++;
        continue;
      }
      let e = s + 1;
      while (e < sectors && bit(bm, e)) e++;
      out.push({ offset: index * this.blockSize + s * SECTOR, length: (e - s) * SECTOR });
      s = e;
    }
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.checkRange(offset, data.length, 'write range');
    if (!this.writable) throw new Error(`${this.name} is open read-only`);
    if (this.type === 'fixed') {
      await this.storage.write(offset, data);
      return;
    }
    const bs = this.blockSize;
    for (let pos = offset; pos < offset + data.length; ) {
      const bi = Math.floor(pos / bs);
      const inBlock = pos - bi * bs;
      const n = Math.min(bs - inBlock, offset + data.length - pos);
      await this.writeBlockPart(bi, inBlock, data.subarray(pos - offset, pos - offset + n));
      pos += n;
    }
  }

  private async writeBlockPart(bi: number, inBlock: number, data: Buffer): Promise<void> {
    const bs = this.blockSize;
    const blockLen = Math.min(bs, this.size - bi * bs);
    // Widen to whole 4 KiB groups (one bitmap byte), filling the edges from
    // what the chain reads there now: bitmap bytes are then only ever 0x00 or
    // 0xFF, which every reader (libvhdi included) decodes correctly.
    const G = 8 * SECTOR;
    const wStart = Math.floor(inBlock / G) * G;
    const wEnd = Math.min(Math.ceil((inBlock + data.length) / G) * G, Math.ceil(blockLen / SECTOR) * SECTOR);
    let buf = data;
    if (wStart !== inBlock || wEnd !== inBlock + data.length) {
      buf = Buffer.alloc(wEnd - wStart);
      const readEnd = Math.min(wEnd, blockLen);
      if (inBlock > wStart) await this.readBlockPart(bi, wStart, buf.subarray(0, inBlock - wStart));
      if (readEnd > inBlock + data.length) {
        await this.readBlockPart(bi, inBlock + data.length, buf.subarray(inBlock + data.length - wStart, readEnd - wStart));
      }
      data.copy(buf, inBlock - wStart);
    }
    if (this.bat![bi] === UNUSED) {
      await this.allocate(bi, wStart, buf);
      return;
    }
    if (!this.blockOk(bi)) this.pastEnd(bi);
    const blockPos = this.bat![bi] * SECTOR;
    await this.storage.write(blockPos + this.bitmapBytes + wStart, buf);
    const bm = await this.bitmap(bi);
    const first = wStart / SECTOR;
    const last = (wStart + buf.length) / SECTOR; // exclusive; multiple of 8 unless at the disk's end
    let changed = false;
    for (let s = first; s < last; s++) {
      const m = 0x80 >> (s & 7);
      if (!(bm[s >> 3] & m)) {
        bm[s >> 3] |= m;
        changed = true;
      }
    }
    if (changed) {
      const b0 = Math.floor(first / 8 / SECTOR) * SECTOR;
      const b1 = Math.ceil(Math.ceil(last / 8) / SECTOR) * SECTOR;
      await this.storage.write(blockPos + b0, bm.subarray(b0, b1));
    }
  }

  /** Writes a new block with `buf` at `inBlock` (4 KiB-aligned), the rest zero and absent. */
  private async allocate(bi: number, inBlock: number, buf: Buffer): Promise<void> {
    const bs = this.blockSize;
    const block = takeZeroed(this.bitmapBytes + bs);
    const bm = block.subarray(0, this.bitmapBytes);
    if (this.type === 'dynamic') {
      // qemu ignores dynamic bitmaps, libvhdi honours them: mark every sector
      // present and keep unwritten ones zero so that both read the same.
      bm.fill(0xff);
    } else {
      const first = inBlock / SECTOR;
      const last = (inBlock + buf.length) / SECTOR;
      for (let s = first; s < last; s++) bm[s >> 3] |= 0x80 >> (s & 7);
    }
    buf.copy(block, this.bitmapBytes + inBlock);
    const pos = this.nextFree;
    const newEnd = pos + block.length;
    // qemu's order: block, then the footer at the new end, then the BAT entry.
    await this.storage.write(pos, block);
    await this.storage.write(newEnd, this.footerBuf);
    const entry = Buffer.alloc(4);
    entry.writeUInt32BE(pos / SECTOR);
    await this.storage.write(Number(this.info.header!.tableOffset) + bi * 4, entry);
    this.bat![bi] = pos / SECTOR;
    this.nextFree = newEnd;
    this.info.footerOffset = newEnd;
    this.info.fileSize = newEnd + SECTOR;
    this.bitmaps.set(bi, Buffer.from(bm));
  }

  async flush(): Promise<void> {
    if (this.writable) await this.storage.sync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.writable) await this.storage.sync();
    await this.storage.close();
    if (this.parent) await this.parent.close();
  }

  /** Closes only this layer, leaving the parent open. */
  async closeLayer(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.writable) await this.storage.sync();
    await this.storage.close();
  }
}

/** VHD_NOT_A_FILE for `path`, found as `st` where `wanted` was (checked before an open: a fifo's would wait for ever). */
export function notAFile(path: string, st: import('node:fs').Stats, wanted = 'a VHD file or block device'): VhdError {
  const what = st.isDirectory() ? 'a folder' : st.isFIFO() ? 'a fifo' : st.isSocket() ? 'a socket' : st.isCharacterDevice() ? 'a character device' : 'not a regular file';
  return new VhdError({ code: 'VHD_NOT_A_FILE', severity: 'fatal', file: path, message: `${what}, not ${wanted}` });
}
