// Early write-back: ask the kernel to start writing an object's pages as soon
// as ferry has written it, instead of at the group fsync (or the sync) at the
// end. Where ferry is busy computing (sealing a store, a seed, verifying an
// import) the disk then writes meanwhile, and the final fsync finds most of
// the data there already (docs/PERFORMANCE.md). A restore does the same for
// the large files it writes. Not for files streamed at the
// disk's own pace (vhd create, export): there the reads and the writes share
// the disk either way, and writing back early measured no faster.
//
// Node has no sync_file_range; native/ferry_native.c gives it (format/native.ts).
// Without it (not built, not Linux, FERRY_WRITEBACK=0 or FERRY_NATIVE=0) every
// call here does nothing: it is a hint, and durability still comes from the
// fsyncs the callers make.
import type { FileHandle } from 'node:fs/promises';
import { nativeAddon, Native } from './native.js';

function load(): Native | null {
  return process.env.FERRY_WRITEBACK === '0' ? null : nativeAddon();
}

/** Whether early write-back is in effect (the native helper is built and not switched off). */
export function writebackAvailable(): boolean {
  return load() !== null;
}

/**
 * Starts writing back `length` bytes of the file from `offset` (0: to the
 * end) without waiting for the disk. Resolves with null, or the errno of a
 * failure (never rejects: a hint that fails changes nothing). The file must
 * stay open until it resolves.
 */
export function startWriteback(fh: FileHandle | number, offset = 0, length = 0): Promise<number | null> {
  const n = load();
  if (!n) return Promise.resolve(null);
  const fd = typeof fh === 'number' ? fh : fh.fd;
  return new Promise((resolve) => n.startWriteback(fd, offset, length, resolve));
}

/** startWriteback on this thread, for code that writes with synchronous calls (the restore's writer thread): 0 or an errno. */
export function startWritebackSync(fd: number, offset = 0, length = 0): number {
  const n = load();
  return n ? n.startWritebackSync(fd, offset, length) : 0;
}
