// Writing a whole buffer through a FileHandle. A single write may write less
// than asked (a disk that fills up part way, a device that ends): the rest
// is written by the next calls, so that the error that explains it (ENOSPC)
// is seen, instead of a short file taken for a whole one.
import type { FileHandle } from 'node:fs/promises';

/** Writes all of `buf` at `pos` (at the file's current position when pos is undefined). */
export async function writeAll(fh: FileHandle, buf: Buffer, pos?: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const at = pos === undefined ? null : pos + done;
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, at);
    if (bytesWritten === 0) {
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
    }
    done += bytesWritten;
  }
}
