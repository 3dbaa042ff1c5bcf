// The block reader of volume-kind items: a block device or an image file read
// front to back in large sequential chunks (4 MiB, a few reads in flight),
// yielding only data that is not zero, so zero runs stay unallocated in the
// VHD that receives it.
import { constants as C } from 'node:fs';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { FerryError, checkArg } from '../format/errors.js';
import { blockDeviceSize, devNumbers } from '../format/fsio.js';

export interface VolumeChunk {
  /** Byte offset in the volume. */
  offset: number;
  data: Buffer;
}

export interface ReadVolumeOptions {
  /** Bytes per read (default 4 MiB). */
  chunkSize?: number;
  /** Zero runs at least this long and aligned to it are left out (default 64 KiB). */
  grain?: number;
  /** Reads in flight (default 3). */
  depth?: number;
  /** Size to read; detected when not given. */
  size?: number;
  onProgress?: (p: { bytes: number; total: number }) => void;
}

/** Size in bytes of an image file or a block device. */
export async function volumeSize(source: string): Promise<number> {
  checkArg(typeof source === 'string' && source.length > 0, 'source', 'a device or image path', source);
  let st;
  try {
    st = await stat(source);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' || code === 'ENOTDIR'
        ? `${source} does not exist: give the block device (/dev/...) or the image file to back up`
        : code === 'EACCES' || code === 'EPERM'
          ? `${source} cannot be read (permission denied): run ferry as a user who may read it (root, for a device)`
          : `cannot read ${source} (${code ?? (err as Error).message})`;
    throw new FerryError('SOURCE_MISSING', why, { path: source });
  }
  if (st.isFile()) return st.size;
  if (!st.isBlockDevice()) throw new FerryError('SOURCE_NOT_VOLUME', `${source} is neither a block device nor an image file`, { path: source });
  return blockDeviceSize(source, st.rdev);
}

/**
 * Where block device `source` is mounted read-write, from
 * /proc/self/mountinfo (empty for an image file, or when it is not mounted
 * or mounted read-only). Blocks that change while a volume is copied make an
 * image no filesystem check can trust.
 */
export async function writableMounts(source: string): Promise<string[]> {
  let st;
  try {
    st = await stat(source);
  } catch {
    return [];
  }
  if (st.isFile()) {
    // an image file is in use through the loop devices over it
    const at: string[] = [];
    for (const dev of await loopsOver(source, st.dev, st.ino)) at.push(...(await writableMounts(dev)));
    return at;
  }
  if (!st.isBlockDevice()) return [];
  const [major, minor] = devNumbers(st.rdev);
  let info = '';
  try {
    info = await readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const at: string[] = [];
  for (const line of info.split('\n')) {
    // id parent major:minor root mount-point options ...
    const f = line.split(' ');
    if (f[2] !== `${major}:${minor}`) continue;
    if (!f[5]?.split(',').includes('rw')) continue;
    at.push(f[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return at;
}

/** The loop devices whose backing file is the file (`dev`, `ino`) at `file`. */
async function loopsOver(file: string, dev: number, ino: number): Promise<string[]> {
  const names = await readdir('/sys/block').catch((): string[] => []);
  const out: string[] = [];
  for (const n of names.filter((x) => /^loop\d+$/.test(x))) {
    const backing = (await readFile(`/sys/block/${n}/loop/backing_file`, 'utf8').catch(() => '')).trim();
    if (!backing) continue;
    const st = await stat(backing).catch(() => null);
    if (st && st.dev === dev && st.ino === ino) out.push(`/dev/${n}`);
  }
  return out;
}

/** Reads a device or image and yields its non-zero data in order (each piece a fresh buffer). */
export async function* readVolume(source: string, opts: ReadVolumeOptions = {}): AsyncGenerator<VolumeChunk> {
  const chunk = opts.chunkSize ?? 4 * 1024 * 1024;
  const grain = opts.grain ?? 64 * 1024;
  checkArg(Number.isSafeInteger(chunk) && chunk > 0 && chunk % grain === 0, 'chunkSize', `a multiple of ${grain}`, chunk);
  const size = opts.size ?? (await volumeSize(source));
  const zero = Buffer.alloc(grain);
  let fh;
  try {
    fh = await open(source, C.O_RDONLY | C.O_NOATIME);
  } catch {
    fh = await open(source, C.O_RDONLY);
  }
  try {
    const h = fh;
    const inflight: Promise<{ off: number; buf: Buffer; n: number }>[] = [];
    let next = 0;
    const issue = () => {
      const off = next;
      const len = Math.min(chunk, size - off);
      next += len;
      const buf = Buffer.allocUnsafe(len);
      inflight.push(
        (async () => {
          let got = 0;
          while (got < len) {
            const { bytesRead } = await h.read(buf, got, len - got, off + got);
            if (bytesRead === 0) break;
            got += bytesRead;
          }
          return { off, buf, n: got };
        })(),
      );
    };
    const depth = opts.depth ?? 3;
    while (inflight.length < depth && next < size) issue();
    let done = 0;
    while (inflight.length) {
      const { off, buf, n } = await inflight.shift()!;
      if (next < size) issue();
      if (n < buf.length) {
        await Promise.allSettled(inflight);
        throw new FerryError('SOURCE_SHORT', `${source} ended at ${off + n} bytes, expected ${size}`, { path: source, offset: off + n });
      }
      let run0 = -1;
      for (let i = 0; i < n; i += grain) {
        const g = buf.subarray(i, Math.min(n, i + grain));
        const isZero = g.equals(g.length === grain ? zero : zero.subarray(0, g.length));
        if (!isZero && run0 < 0) run0 = i;
        if (isZero && run0 >= 0) {
          yield { offset: off + run0, data: buf.subarray(run0, i) };
          run0 = -1;
        }
      }
      if (run0 >= 0) yield { offset: off + run0, data: buf.subarray(run0, n) };
      done += n;
      opts.onProgress?.({ bytes: done, total: size });
    }
  } finally {
    await fh.close();
  }
}
