// Writing a whole buffer through a FileHandle. A single write may write less
// than asked (a disk that fills up part way, a device that ends): the rest
// is written by the next calls, so that the error that explains it (ENOSPC)
// is seen, instead of a short file taken for a whole one. And the temporary
// names files are written under before they are renamed into place.
import { lstatSync, readdirSync, unlinkSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

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

/** Whether process `pid` exists on this host (EPERM: it does, under another user). */
export function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Left alone however dead its process looks, while younger than this (PID namespaces sharing a folder). */
const TEMP_STALE_MS = 5 * 60 * 1000;

/**
 * The temporary name a file is written under before it is renamed onto
 * `path`: `path.ferry-tmp-<pid>`. Those of processes that are gone (a
 * restore or an export killed part way, up to a whole image each) are
 * removed first, once they have not changed for five minutes.
 */
export function tempBeside(path: string): string {
  const dir = dirname(path);
  const prefix = `${basename(path)}.ferry-tmp-`;
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    /* the write itself will say what is wrong with the folder */
  }
  for (const name of names) {
    if (!name.startsWith(prefix) || !/^\d+$/.test(name.slice(prefix.length))) continue;
    if (pidAlive(Number(name.slice(prefix.length)))) continue;
    const old = join(dir, name);
    try {
      const st = lstatSync(old);
      if (st.isFile() && Date.now() - st.mtimeMs >= TEMP_STALE_MS) unlinkSync(old);
    } catch {
      /* gone meanwhile, or not ours to remove */
    }
  }
  return `${path}.ferry-tmp-${process.pid}`;
}
