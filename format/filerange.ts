// A range of a file handed to a seal worker instead of its bytes: the worker
// maps the range (native/, mmap) and compresses it where the page cache holds
// it, so the bytes are neither copied into a buffer first nor land in fresh
// pages (measured on a store: docs/PERFORMANCE.md). Without the addon, or when
// the file cannot be mapped, the worker reads the range itself.
import { fstatSync, readSync } from 'node:fs';
import { FerryError } from './errors.js';
import { nativeAddon } from './native.js';

export interface FileRange {
  /** An open descriptor; the caller keeps it open until the range is done with. */
  fd: number;
  offset: number;
  length: number;
  /** For messages. */
  file: string;
}

export function isFileRange(x: unknown): x is FileRange {
  return typeof x === 'object' && x !== null && !(x instanceof Uint8Array) && typeof (x as FileRange).fd === 'number';
}

/** Whether ranges are mapped (else read): the addon is built and not switched off. */
export function mappingAvailable(): boolean {
  return nativeAddon()?.mapRange !== undefined;
}

/**
 * Under --json: a file cut short under a mapping (SIGBUS, which ends the
 * process in the addon's handler) is also reported as the error document
 * on stdout, as every other error is.
 */
export function mappingErrorsAsJson(): void {
  nativeAddon()?.errorsAsJson?.(true);
}

/** SOURCE_CHANGED: the file now ends at `size`, before the end of the range ferry reads. */
export function sourceChanged(r: Omit<FileRange, 'fd'>, size: number): FerryError {
  return new FerryError(
    'SOURCE_CHANGED',
    `${r.file} changed while ferry was reading it: it holds ${size} bytes, and the block at offset ${r.offset} needs ${r.offset + r.length}; nothing of this run was committed: run again when nothing writes to it`,
    { file: r.file, size, offset: r.offset, length: r.length },
  );
}

/**
 * The range's bytes: mapped when it can be, else read. release() when done
 * with them; the buffer and every view of it are empty after. A file that
 * has become shorter than the range is SOURCE_CHANGED: here, and at check(),
 * which a caller makes once it has used the bytes. A mapping reads zeros,
 * not SIGBUS, where the file was cut inside the range's last page.
 */
export function openRange(r: FileRange): { data: Buffer; release: () => void; check: () => void } {
  const size = fstatSync(r.fd).size;
  if (size < r.offset + r.length) throw sourceChanged(r, size);
  const n = nativeAddon();
  const mapped = n?.mapRange && r.length > 0 ? n.mapRange(r.fd, r.offset, r.length, r.file) : null;
  if (mapped instanceof Uint8Array) {
    const check = () => {
      const now = fstatSync(r.fd).size;
      if (now < r.offset + r.length) throw sourceChanged(r, now);
    };
    return { data: mapped, release: () => n!.unmapRange(mapped), check };
  }
  const data = Buffer.allocUnsafeSlow(r.length);
  let done = 0;
  while (done < r.length) {
    const got = readSync(r.fd, data, done, r.length - done, r.offset + done);
    if (got === 0) throw sourceChanged(r, r.offset + done);
    done += got;
  }
  return { data, release: () => {}, check: () => {} };
}

/** fn's result on the range's bytes (openRange), released after, and checked once fn has read them. */
export function withRange<T>(r: FileRange, fn: (bytes: Buffer) => T): T {
  const o = openRange(r);
  try {
    const result = fn(o.data);
    o.check(); // (a mapping reads zeros where the file was cut inside its last page)
    return result;
  } finally {
    o.release();
  }
}

/** Starts reading the range into the page cache (a hint; resolves once queued, never rejects). */
export function prefetchRange(r: FileRange): Promise<void> {
  const n = nativeAddon();
  if (!n?.prefetch) return Promise.resolve();
  return new Promise((resolve) => n.prefetch(r.fd, r.offset, r.length, () => resolve()));
}

/** How many blocks ahead of the one mapped are asked into the page cache. */
const MAP_PREFETCH = 8;
const mappedBlocks = new WeakSet<Buffer>();

/**
 * For a source read block by block in order (`vhd create --from`): a
 * function that maps block `index` (`length` bytes at index * blockSize)
 * and asks the kernel to read the next few ahead, or returns null for a
 * block it cannot map (past the file's end at open, or refused), which the
 * caller then reads. Null when nothing can be mapped: no addon, not a
 * regular file (`fileSize` < 0). A file cut short under a mapping ends the
 * process with one line (the addon's SIGBUS handler).
 */
export function mapSourceBlock(fd: number, file: string, fileSize: number, blockSize: number): ((index: number, length: number) => Buffer | null) | null {
  if (!mappingAvailable() || fileSize < 0) return null;
  let asked = 0;
  return (index, length) => {
    const offset = index * blockSize;
    if (offset + length > fileSize) return null;
    for (asked = Math.max(asked, index); asked < index + MAP_PREFETCH && asked * blockSize < fileSize; asked++) {
      void prefetchRange({ fd, offset: asked * blockSize, length: Math.min(blockSize, fileSize - asked * blockSize), file });
    }
    return mapBlock({ fd, offset, length, file });
  };
}

/**
 * The range mapped (unmapSourceBlock frees it), or null when it cannot be:
 * no addon, or refused. The caller makes sure it lies inside the file.
 */
function mapBlock(r: FileRange): Buffer | null {
  const n = nativeAddon();
  const m = n?.mapRange && r.length > 0 ? n.mapRange(r.fd, r.offset, r.length, r.file) : null;
  if (!(m instanceof Uint8Array)) return null;
  mappedBlocks.add(m);
  return m;
}

/** Unmaps a block mapSourceBlock gave (true), or does nothing for any other buffer (false). */
export function unmapSourceBlock(b: Buffer): boolean {
  if (!mappedBlocks.has(b)) return false;
  mappedBlocks.delete(b);
  nativeAddon()!.unmapRange(b);
  return true;
}
