// A sparse in-memory Disk: a reference implementation of format/disk.ts for
// tests and for building small volumes before they are written out.
import type { Disk, Extent } from './disk.js';
import { checkArg } from './errors.js';

export class MemDisk implements Disk {
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly blockCount: number;
  readonly parent: Disk | null;
  readonly writable = true;
  private readonly blocks = new Map<number, Buffer>();

  constructor(size: number, opts: { blockSize?: number; parent?: Disk | null; name?: string } = {}) {
    checkArg(Number.isSafeInteger(size) && size >= 0, 'size', 'a whole number of bytes', size);
    this.size = opts.parent ? opts.parent.size : size;
    this.blockSize = opts.blockSize ?? opts.parent?.blockSize ?? 2 * 1024 * 1024;
    this.blockCount = Math.ceil(this.size / this.blockSize);
    this.parent = opts.parent ?? null;
    this.name = opts.name ?? 'memory';
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkArg(offset >= 0 && length >= 0 && offset + length <= this.size, 'range', `inside the disk (size ${this.size})`, `${offset}+${length}`);
    const out = this.parent ? await this.parent.read(offset, length) : Buffer.alloc(length);
    for (let pos = offset; pos < offset + length; ) {
      const bi = Math.floor(pos / this.blockSize);
      const inBlock = pos - bi * this.blockSize;
      const n = Math.min(this.blockSize - inBlock, offset + length - pos);
      const b = this.blocks.get(bi);
      if (b) {
        // a MemDisk layer holds whole blocks: copy-on-write pulled the parent's bytes in
        b.copy(out, pos - offset, inBlock, inBlock + n);
      }
      pos += n;
    }
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    checkArg(offset >= 0 && offset + data.length <= this.size, 'range', `inside the disk (size ${this.size})`, `${offset}+${data.length}`);
    for (let pos = offset; pos < offset + data.length; ) {
      const bi = Math.floor(pos / this.blockSize);
      const inBlock = pos - bi * this.blockSize;
      const n = Math.min(this.blockSize - inBlock, offset + data.length - pos);
      let b = this.blocks.get(bi);
      if (!b) {
        const len = Math.min(this.blockSize, this.size - bi * this.blockSize);
        b = this.parent ? await this.parent.read(bi * this.blockSize, len) : Buffer.alloc(len);
        this.blocks.set(bi, b);
      }
      data.copy(b, inBlock, pos - offset, pos - offset + n);
      pos += n;
    }
  }

  hasBlock(index: number): boolean {
    return this.blocks.has(index);
  }

  async ownExtents(index: number): Promise<Extent[]> {
    const b = this.blocks.get(index);
    return b ? [{ offset: index * this.blockSize, length: b.length }] : [];
  }

  async close(): Promise<void> {
    if (this.parent) await this.parent.close();
  }
}
