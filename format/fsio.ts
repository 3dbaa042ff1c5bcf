// File-system helpers every layer shares: writing a whole buffer (a single
// write may write less than asked; the rest is written by the next calls, so
// that the error that explains it, ENOSPC, is seen instead of a short file
// taken for a whole one), mkdir -p, comparing a file with what it should
// hold, and the temporaries that files and folders are made under before
// they are renamed into place: named after this host and process, removed
// when the process exits, and swept by later runs once it is gone.
import { createHash } from 'node:crypto';
import { constants as FS, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { EXIT, FerryError } from './errors.js';

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

/**
 * Whether link() of a file this process owns failed for the file system's
 * sake: none at all (FAT, exFAT: EPERM, ENOTSUP) or no more for that file
 * (EMLINK).
 */
export function linkRefused(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'EMLINK';
}

/** Whether `err` says the file system is full (or the user's quota is). */
export function isNoRoom(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/**
 * A failed write of `path` said as such: an OS error names no path for a
 * write through a descriptor, and names ferry's temporary rather than `path`
 * for its open. A full disk, a file too large for the file system (FAT32
 * stops at 4 GiB - 1 byte), a read-only one, no permission; `after` says what
 * state things are in and what to do (`other`, when not a full disk). Other
 * errors come back as they are.
 */
export function writeError(err: unknown, path: string, after: string, other = after): unknown {
  const errno = (err as NodeJS.ErrnoException)?.code;
  if (isNoRoom(err)) return new FerryError('DISK_FULL', `no room left on the disk of ${path}: ${after}`, { path, errno });
  if (errno === 'EFBIG') {
    return new FerryError('FILE_TOO_LARGE', `${path}: the file system there cannot hold a file this large (FAT32 stops at 4 GiB - 1 byte; write it to exFAT, NTFS, ext4 or xfs): ${other}`, { path, errno });
  }
  if (errno === 'EROFS') return new FerryError('READ_ONLY', `${path}: the file system there is read-only: ${other}`, { path, errno });
  if (errno === 'EACCES' || errno === 'EPERM') return new FerryError('NO_ACCESS', `cannot write ${path}: permission denied (run as a user who may write there): ${other}`, { path, errno });
  return err;
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

/** Latest change of `path`, or of anything directly in it when it is a folder. */
function lastChange(path: string): number {
  const st = lstatSync(path);
  let t = st.mtimeMs;
  if (st.isDirectory()) {
    for (const name of readdirSync(path)) {
      try {
        t = Math.max(t, lstatSync(join(path, name)).mtimeMs);
      } catch {
        /* gone meanwhile */
      }
    }
  }
  return t;
}

/** This host, in names of temporaries that a folder shared by several hosts may hold: 8 hex digits. */
export const HOST_TAG = createHash('sha256').update(hostname()).digest('hex').slice(0, 8);

/**
 * Removes what a process that is gone left in `dir` (a temporary file, a
 * catalog folder, a staging tree): the entries whose names `pattern`
 * matches with that process's pid as its first group, once nothing in them
 * has changed for `staleMs` (a folder shared by PID namespaces can show a
 * live process as gone). Best effort: never fails. Returns what it removed.
 */
export function sweepLeftovers(dir: string, pattern: RegExp, staleMs: number, now = Date.now()): string[] {
  const removed: string[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  const uid = process.geteuid?.();
  for (const name of names) {
    const m = pattern.exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    const path = join(dir, name);
    try {
      // Only what this user made: a name and a time anyone can forge in a
      // shared folder (/tmp), an owner they cannot. What ferry makes there
      // is its user's, and a folder mode 0700: nobody else can reach in.
      if (uid !== undefined && lstatSync(path).uid !== uid) continue;
      if (now - lastChange(path) < staleMs) continue;
      rmSync(path, { recursive: true, force: true });
      removed.push(path);
    } catch {
      /* not ours to remove, or gone: leave it */
    }
  }
  return removed;
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// Temporaries of this process still in use: removed when it exits, also by
// process.exit() on Ctrl-C (bin/ferry.ts), so that an interrupted restore
// leaves no partial image or staging tree behind. A kill -9 skips this:
// sweepLeftovers() removes those on a later run.
const atExit = new Set<string>();
process.on('exit', () => {
  for (const p of atExit) {
    try {
      rmSync(p, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
});

/** Removes `path` (a file or a folder) when this process exits, if it is still there then. */
function removeAtExit(path: string): void {
  atExit.add(path);
}

/** The names tempDirIn gives under `prefix` in a folder, with the process's pid as group 1. */
export function tempDirPattern(prefix: string): RegExp {
  return new RegExp(`^${escapeRegExp(prefix)}${HOST_TAG}-(\\d+)-[A-Za-z0-9]{6}$`);
}

/**
 * A new folder of this process's own in `parent` (mode 0700:
 * `<prefix><host>-<pid>-XXXXXX`), removed when the process exits if it is
 * still there; those of this user's processes that are gone, untouched for
 * `staleMs`, are removed first.
 */
export function tempDirIn(parent: string, prefix: string, staleMs: number, wayOut = 'point TMPDIR at a folder this user may write'): string {
  sweepLeftovers(parent, tempDirPattern(prefix), staleMs);
  let dir: string;
  try {
    dir = mkdtempSync(join(parent, `${prefix}${HOST_TAG}-${process.pid}-`));
  } catch (err) {
    // (a /tmp that is read-only, full, or not this user's to write in, as in some containers)
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    const full = code === 'ENOSPC' || code === 'EDQUOT';
    throw new FerryError(
      full ? 'TMP_FULL' : 'TMP_UNWRITABLE',
      `cannot make a temporary folder in ${parent} (${code}): ferry keeps working files there; ${full ? 'free some space there, or ' : ''}${wayOut}, then run the same command again`,
      { dir: parent },
    );
  }
  removeAtExit(dir);
  return dir;
}

/**
 * Removes the temporaries of this host's dead processes beside `path`: a
 * killed run's partial copy, left beside the target, may be what fills its
 * disk. Each goes once it has not changed for 30 s (the wait covers PID
 * namespaces that share this host name). A run that finds its target
 * already in place calls this too (it makes no temporary of its own).
 */
export function sweepBeside(path: string): void {
  sweepLeftovers(dirname(path), new RegExp(`^${escapeRegExp(basename(path))}\\.ferry-tmp-${HOST_TAG}-(\\d+)$`), 30 * 1000);
}

/**
 * The temporary name a file is written under before it is renamed onto
 * `path`: `path.ferry-tmp-<host>-<pid>`. Those of this host's processes that are gone (a
 * restore or an export killed part way, up to a whole image each) are
 * removed first, once they have not changed for 30 s; this one goes
 * when this process exits before it is renamed.
 */
export function tempBeside(path: string): string {
  const folder = statSync(dirname(path), { throwIfNoEntry: false });
  if (!folder?.isDirectory()) {
    throw new FerryError('NO_SUCH_FOLDER', `${dirname(path)} ${folder ? 'is not a folder' : 'does not exist'}: make it first, or name ${path === '' ? 'a file' : basename(path)} in a folder that exists`, { path });
  }
  // renamed onto `path` once written: a device, a folder or a fifo there would be replaced, not written
  const st = statSync(path, { throwIfNoEntry: false });
  if (st && !st.isFile()) {
    throw new FerryError('NOT_A_FILE', `${path} is ${st.isBlockDevice() ? 'a block device' : st.isDirectory() ? 'a folder' : 'not a regular file'}: name a file to write`, { path });
  }
  sweepBeside(path);
  const tmp = `${path}.ferry-tmp-${HOST_TAG}-${process.pid}`;
  removeAtExit(tmp); // (once renamed into place, there is nothing at this name to remove)
  return tmp;
}

/**
 * mkdir -p: makes `dir` and the folders missing above it; returns the first
 * one it made (undefined when `dir` was there). Node's own recursive mkdir
 * spins for ever where a folder cannot be made under one that exists
 * (/proc/x: ENOENT again and again); this fails with that error instead.
 */
export async function mkdirp(dir: string, mode?: number): Promise<string | undefined> {
  return mkdirpSync(dir, mode) as string | undefined;
}

/** mkdirp for a path given as bytes or text (what mkdirp does, synchronously). */
export function mkdirpSync(dir: string | Buffer, mode?: number): string | Buffer | undefined {
  const missing: Buffer[] = [];
  const slash = 0x2f;
  const up = (b: Buffer): Buffer => {
    let end = b.length;
    while (end > 1 && b[end - 1] === slash) end--;
    const i = b.subarray(0, end).lastIndexOf(slash);
    return i <= 0 ? Buffer.from('/') : b.subarray(0, i);
  };
  const abs = Buffer.isBuffer(dir) ? (dir[0] === slash ? dir : Buffer.concat([Buffer.from(`${process.cwd()}/`), dir])) : Buffer.from(resolve(dir));
  for (let d = abs; ; d = up(d)) {
    try {
      statSync(d);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      missing.push(d);
      if (d.length <= 1) break;
    }
  }
  let first: Buffer | undefined;
  for (const d of missing.reverse()) {
    try {
      mkdirSync(d, mode);
      first ??= d;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  return first === undefined ? undefined : Buffer.isBuffer(dir) ? first : first.toString();
}

/**
 * Whether the regular file at `path` holds exactly `length` bytes, each as
 * `read(pos, len)` gives them: compared a chunk at a time, stopping at the
 * first difference (a read that fails counts as one).
 */
export async function fileEquals(path: string, length: number, read: (pos: number, len: number) => Promise<Buffer>, chunk = 4 * 1024 * 1024): Promise<boolean> {
  const st = await stat(path).catch(() => null);
  if (!st?.isFile() || st.size !== length) return false;
  const fh = await open(path, 'r');
  try {
    const mine = Buffer.allocUnsafe(chunk);
    for (let pos = 0; pos < length; pos += chunk) {
      const len = Math.min(chunk, length - pos);
      const want = await read(pos, len).catch(() => null);
      if (!want) return false;
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(mine, got, len - got, pos + got);
        if (bytesRead === 0) return false;
        got += bytesRead;
      }
      if (!want.equals(mine.subarray(0, len))) return false;
    }
    return true;
  } finally {
    await fh.close();
  }
}

/**
 * Takes `path` as a lock file for one writer of a local file (`vhd merge`
 * writing a parent): made whole and then linked into place, so it exists
 * only with its holder's host, pid and task in it. A lock whose process on
 * this host is gone is broken; a live or foreign holder is LOCKED (exit 11),
 * named. Returns the release (also run when the process exits).
 */
export function lockFile(path: string, task: string): () => void {
  const mine = JSON.stringify({ host: HOST_TAG, hostname: hostname(), pid: process.pid, task, started: new Date().toISOString() });
  const tmp = `${path}.${HOST_TAG}-${process.pid}`;
  try {
    writeFileSync(tmp, mine, { mode: 0o644 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
      throw new FerryError('NO_ACCESS', `cannot take the lock ${path} for ${task}: ${dirname(path)} cannot be written (${code === 'EROFS' ? 'a read-only file system' : 'permission denied'}); run ferry as a user who may write there`, { path });
    }
    throw writeError(err, path, `free some space in ${dirname(path)} and run it again`);
  }
  try {
    for (let tries = 0; ; tries++) {
      try {
        linkSync(tmp, path); // fails if a lock is there: never replaced
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (linkRefused(err)) {
          // a file system without hard links (FAT, exFAT: USB drives): an
          // exclusive create instead (a reader may see it a moment empty: it tries again)
          try {
            writeFileSync(path, mine, { flag: 'wx', mode: 0o644 });
            break;
          } catch (again) {
            if ((again as NodeJS.ErrnoException).code !== 'EEXIST') throw again;
          }
        } else if (code !== 'EEXIST') throw err;
        if (tries >= 3) throw new FerryError('LOCKED', `${path}: other ferry processes keep taking this lock; try again`, { path }, EXIT.locked);
      }
      let holder: { host?: string; hostname?: string; pid?: number; task?: string; started?: string } = {};
      let ino = 0;
      try {
        ino = lstatSync(path).ino;
        holder = JSON.parse(readFileSync(path, 'utf8'));
      } catch {
        continue; // released meanwhile, or being written: try again
      }
      if (holder.host !== HOST_TAG || typeof holder.pid !== 'number' || pidAlive(holder.pid)) {
        const who = holder.host === HOST_TAG ? `process ${holder.pid}` : `process ${holder.pid} on ${holder.hostname ?? 'another host'}`;
        throw new FerryError(
          'LOCKED',
          `${path}: ${who} holds this lock (${holder.task ?? 'a ferry command'}, since ${holder.started ?? '?'}); wait for it to finish${holder.host === HOST_TAG ? '' : ', or remove the lock file if that process is gone'}`,
          { path, holder },
          EXIT.locked,
        );
      }
      // Its process is gone: break it. Moved aside first, and only if it is
      // still the lock just read (another breaker may have taken over).
      const aside = `${path}.broken-${HOST_TAG}-${process.pid}`;
      try {
        renameSync(path, aside);
      } catch {
        continue;
      }
      if (lstatSync(aside).ino !== ino) {
        try {
          linkSync(aside, path); // a new holder's lock after all: put it back
        } catch {
          /* a third process holds it now */
        }
      }
      unlinkSync(aside);
    }
  } finally {
    rmSync(tmp, { force: true });
  }
  let held = true;
  const release = () => {
    if (!held) return;
    held = false;
    atExit.delete(path);
    try {
      // only our own lock (never one that replaced it after a break)
      if (readFileSync(path, 'utf8') === mine) unlinkSync(path);
    } catch {
      /* gone already */
    }
  };
  atExit.add(path);
  return release;
}

/** glibc's major() and minor() of a dev_t (as stat gives it, a number). */
export function devNumbers(rdev: number): [number, number] {
  const major = ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  return [major, minor];
}

/** Size in bytes of block device `path` (stat says 0): from sysfs, else by reading it to the end. */
export async function blockDeviceSize(path: string, rdev: number): Promise<number> {
  const [major, minor] = devNumbers(rdev);
  try {
    // sysfs knows the size of every block device, in 512-byte sectors
    const n = Number((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
    if (Number.isSafeInteger(n) && n > 0) return n * 512;
  } catch {
    /* no sysfs */
  }
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    let size = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, size);
      if (bytesRead === 0) return size;
      size += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

/** What a file of `mode` (st_mode) is, for messages: "a file", "a folder", "a symlink", "a fifo", "a socket", "a character device", "a block device". */
export function kindOf(mode: number): string {
  switch (mode & FS.S_IFMT) {
    case FS.S_IFREG: return 'a file';
    case FS.S_IFDIR: return 'a folder';
    case FS.S_IFLNK: return 'a symlink';
    case FS.S_IFIFO: return 'a fifo';
    case FS.S_IFSOCK: return 'a socket';
    case FS.S_IFCHR: return 'a character device';
    case FS.S_IFBLK: return 'a block device';
    default: return 'a file of an unknown kind';
  }
}
