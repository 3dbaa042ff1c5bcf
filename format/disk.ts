// The virtual-disk interface the upper layers use. Nothing here is specific
// to VHD, so VHDX (or a disk kept in a vault) can implement it too.
//
// A disk is a byte array of `size` bytes cut into `blockSize` allocation
// units. A layer may have a parent: reading a range this layer does not hold
// reads it from the parent (a differencing chain reads as one disk).

export interface Extent {
  /** Byte offset inside the virtual disk. */
  offset: number;
  length: number;
}

export interface Disk {
  /** What the disk is (a file path, or vault:disk-id), for messages. */
  readonly name: string;
  /** Virtual size in bytes. */
  readonly size: number;
  /** Allocation unit in bytes. */
  readonly blockSize: number;
  /** Number of allocation units (ceil(size / blockSize)). */
  readonly blockCount: number;
  /** The disk this one differs from, if any. */
  readonly parent: Disk | null;
  readonly writable: boolean;

  /**
   * Reads `length` virtual bytes at `offset` through the chain, into a fresh
   * buffer of its own that the caller owns (it may keep it, change it, or
   * move its memory to another thread).
   */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * The same bytes lent, not copied, where the layer can (they lie in one
   * stored block it holds whole): a view into memory the disk keeps, which
   * the caller must not change and gives back with freeBuffer() once done
   * (format/buffers.ts); null where it cannot, for read() to do.
   */
  view?(offset: number, length: number): Promise<Buffer | null>;
  /** Writes into this layer (never into a parent). */
  write(offset: number, data: Buffer): Promise<void>;
  /** Whether this layer (not its parents) holds data for block `index`. */
  hasBlock(index: number): boolean;
  /** The byte ranges of block `index` that this layer itself holds. */
  ownExtents(index: number): Promise<Extent[]>;
  /** Flushes and closes this layer and its parents. */
  close(): Promise<void>;
}

/** Reads the whole chain's content of block `index` as one buffer (zeros where nothing holds data). */
export async function readBlock(disk: Disk, index: number): Promise<Buffer> {
  const start = index * disk.blockSize;
  return disk.read(start, Math.min(disk.blockSize, disk.size - start));
}

/** Depth-first list of the chain, child first. */
export function chainOf(disk: Disk): Disk[] {
  const out: Disk[] = [];
  for (let d: Disk | null = disk; d; d = d.parent) out.push(d);
  return out;
}
