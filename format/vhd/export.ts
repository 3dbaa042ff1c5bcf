// Flattening any Disk (a chain, a vault disk) into a raw image or a VHD.
import { open as fsOpen, rename, rm } from 'node:fs/promises';
import type { Disk } from '../disk.js';
import { BlockWriter, BufferPool, WriteQueue, isZero, readAhead, writeVhd } from './create.js';
import { writeError, tempBeside } from '../fsio.js';

export type ExportType = 'raw' | 'fixed' | 'dynamic';

/** A range of the disk that could not be read, and why. */
export interface Unreadable {
  offset: number;
  length: number;
  error: Error;
}

export interface ExportOptions {
  onProgress?: (done: number, total: number) => void;
  /** Salvage: a 2 MiB range that cannot be read is reported here and written as zeros (else the export fails). */
  onUnreadable?: (r: Unreadable) => void;
  /** raw: the image's length when it is less than the disk's (a volume of a size that is not whole sectors). */
  rawLength?: number;
  /** Permissions of the new file (default 0o666, less the umask). */
  mode?: number;
}

export async function exportDisk(disk: Disk, to: string, type: ExportType, opts: ExportOptions = {}): Promise<void> {
  const { onProgress, onUnreadable } = opts;
  const bs = 2 * 1024 * 1024;
  const pool = new BufferPool(bs, true); // (page-aligned: BlockWriter writes them past the page cache)
  const into = (disk as Disk & { readInto?: (out: Buffer, offset: number) => Promise<void> }).readInto?.bind(disk);
  const read = async (start: number, len: number): Promise<Buffer | null> => {
    // Blocks no layer holds are zero: skip reading them.
    if (!anyLayerHas(disk, start, len)) return null;
    if (!into) return disk.read(start, len);
    // Buffers come back from the writer (see recycle): no fresh 2 MiB of page faults per block.
    const b = pool.take().subarray(0, len); // readInto writes all of it
    try {
      await into(b, start);
    } catch (err) {
      pool.give(b);
      throw err;
    }
    return b;
  };
  const blockAt = async (i: number): Promise<Buffer | null> => {
    const start = i * bs;
    const len = Math.min(bs, disk.size - start);
    if (!onUnreadable) return read(start, len);
    try {
      return await read(start, len);
    } catch (err) {
      onUnreadable({ offset: start, length: len, error: err as Error });
      return null; // a hole: zeros
    }
  };
  const recycle = (b: Buffer) => pool.give(b);
  if (type !== 'raw') {
    await writeVhd(to, { size: disk.size, type, blockSize: bs, recycle, mode: opts.mode }, blockAt, onProgress);
    return;
  }
  const tmp = tempBeside(to);
  const fh = await fsOpen(tmp, 'w', opts.mode ?? 0o666).catch((err: unknown) => Promise.reject(writeError(err, to, `nothing was written at ${to}`)));
  const writes = new WriteQueue();
  let out: BlockWriter | undefined;
  try {
    // blocks past the page cache where they can (BlockWriter)
    out = await BlockWriter.open(tmp, fh);
    const count = Math.ceil(disk.size / bs);
    const next = readAhead(count, blockAt);
    for (let i = 0; i < count; i++) {
      const b = await next();
      // zeros stay holes of the new file
      if (b && !isZero(b)) await writes.add(out.write([b], i * bs).then(() => recycle(b)));
      else if (b) recycle(b);
      onProgress?.(Math.min((i + 1) * bs, disk.size), disk.size);
    }
    await writes.drain();
    await out.close();
    await fh.truncate(Math.min(disk.size, opts.rawLength ?? disk.size));
    await fh.sync();
    await fh.close();
    await rename(tmp, to);
  } catch (err) {
    await writes.settle();
    await out?.close().catch(() => {});
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
    throw writeError(err, to, `free space there or write it elsewhere; nothing was written at ${to}`, `nothing was written at ${to}`);
  }
}

/** Whether any layer of the chain holds data in [start, start+len). */
function anyLayerHas(disk: Disk, start: number, len: number): boolean {
  for (let d: Disk | null = disk; d; d = d.parent) {
    const first = Math.floor(start / d.blockSize);
    const last = Math.floor((start + len - 1) / d.blockSize);
    for (let i = first; i <= last; i++) if (d.hasBlock(i)) return true;
  }
  return false;
}
