// Restoring one recovery point: files and system state through the volume
// reader, volumes as raw bytes or a VHD. Reads only; a rerun finishes an
// interrupted restore.
import { spawn } from 'node:child_process';
import { constants as fsc, existsSync } from 'node:fs';
import { chmod, open as fsOpen, readdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Disk } from '../format/disk.js';
import { FerryError, UsageError, formatSize } from '../format/errors.js';
import { exportDisk, type Unreadable } from '../format/vhd/export.js';
import { VolumeReader } from '../format/volume/index.js';
import { openPointDisk, resolvePoint, type PointManifest } from '../vault/registry.js';
import type { VaultReader } from '../vault/vault.js';
import { restoreFiles, type IfExists } from './files.js';
import { MARKER_NAME } from './marker.js';
import { volumeSize } from '../source/volume.js';
import { fileEquals, sweepBeside, tempBeside, tempDirIn, writeAll } from '../format/fsio.js';
import { openChain } from '../format/vhd/chain.js';
import { diskPrefix, eachBlock, readStoredBlock, storedBlocks } from '../vault/diskstore.js';
import { vaultObjects } from '../vault/putter.js';
import { vaultAround } from '../vault/around.js';

export type RestoreFormat = 'dir' | 'raw' | 'vhd' | 'tar';

export interface RestoreOptions {
  machine: string;
  item: string;
  point?: string;
  paths?: string[];
  to?: string;
  ifExists?: IfExists;
  format?: RestoreFormat;
  onProgress?: (done: number, total: number, what: string) => void;
  onWarning?: (w: { path?: string; message: string }) => void;
  /** Notes on single entries, for --verbose (a copy written beside an existing file, one left under skip). */
  onNote?: (message: string) => void;
  /** Volumes: write zeros where stored data cannot be read, and warn, instead of stopping. */
  salvage?: boolean;
  /** Volumes: read and authenticate every block object before writing any (a device is written as the restore goes). */
  verifyFirst?: boolean;
}

export interface RestoreResult {
  point: PointManifest;
  to: string;
  format: RestoreFormat;
  restored: number;
  /** Files: of `skipped`, those found equal; of `restored`, those written beside a differing one (`copy`). */
  unchanged?: number;
  copiesFound?: number;
  copies?: number;
  skipped: number;
  /** Entries that could not be restored (each also counted in `warnings`). */
  failed: number;
  bytes: number;
  warnings: number;
}

export async function restore(vault: VaultReader, o: RestoreOptions): Promise<RestoreResult> {
  const point = await resolvePoint(vault, o.machine, o.item, o.point ?? 'latest');
  // without --format, a --to named *.vhd (volume) or *.tar (files, system state) says which
  const byName = o.to?.toLowerCase().endsWith('.vhd') ? 'vhd' : o.to?.toLowerCase().endsWith('.tar') ? 'tar' : null;
  const format = o.format ?? (point.kind === 'volume' ? (byName === 'vhd' ? 'vhd' : 'raw') : byName === 'tar' ? 'tar' : 'dir');
  if (point.kind === 'volume' && (format === 'dir' || format === 'tar')) throw new UsageError(`a volume restores as --format raw or vhd, not ${format}`);
  if (point.kind === 'volume' && byName === 'tar' && !o.format) {
    throw new UsageError(`--to ${o.to} names a tar archive, but a volume restores as a raw image or a VHD: name it .img or .vhd (or give --format raw to write an image by that name)`);
  }
  if (point.kind === 'volume' && o.paths?.length) throw new UsageError('--path picks files and folders; a volume restores whole: leave --path out');
  if (point.kind !== 'volume' && (format === 'raw' || format === 'vhd')) throw new UsageError(`a ${point.kind} item restores as --format dir or tar, not ${format}`);
  if (point.kind !== 'volume' && (o.salvage || o.verifyFirst)) {
    throw new UsageError(`--${o.salvage ? 'salvage' : 'verify-first'} is for volumes: a ${point.kind} restore always goes on past damaged data, and names each file it hit; leave it out`);
  }
  if (point.kind === 'system-state' && !o.to) {
    // its tree is what the machine needs rebuilt (/etc, package lists, layouts), to look at or to copy from: not for over the running system unasked
    throw new UsageError('restoring system state needs --to: a folder to put it in, or FILE.tar for another machine (`--to /` puts it back in place over this system)');
  }
  const around = o.to === undefined ? null : await vaultAround(o.to);
  if (around !== null) throw new UsageError(`--to ${o.to} is inside the vault ${around}: a vault holds only sealed objects; name a place outside it`);
  const disk = await openPointDisk(vault, point).catch((err) => {
    throw unreadablePoint(err, point, 'a disk head');
  });
  try {
    if (point.kind === 'volume') {
      if (!o.to) throw new UsageError('restoring a volume needs --to (a block device, an image file, or a .vhd)');
      const length = Math.min(disk.size, point.volumeBytes ?? disk.size);
      // an image or VHD already equal to the volume is left as it is, whatever the policy (as an equal file is)
      const same = (p: string) => (format === 'raw' ? sameImage(disk, length, p) : sameVhd(disk, p));
      const unchanged = (at: string) => {
        sweepBeside(at); // a killed run's partial copy beside it goes all the same
        return { point, to: at, format, restored: 0, skipped: 1, unchanged: 1, failed: 0, bytes: 0, warnings: 0 };
      };
      sweepBeside(o.to); // a killed run's partial image there goes, even when this run writes a copy beside it
      if (await same(o.to)) return unchanged(o.to);
      const target = await fileTarget(o.to, format, o.ifExists ?? 'copy', point.seq, same);
      if (target === null) return { point, to: o.to, format, restored: 0, skipped: 1, failed: 0, bytes: 0, warnings: 0 };
      if (typeof target !== 'string') return unchanged(target.equal);
      const to = target;
      const device = await isDevice(to);
      if (device && o.ifExists === 'skip') throw new UsageError(`${to} is a block device, which always exists: --if-exists skip would leave it as it is; leave --if-exists out to write the volume onto it`);
      if (device || o.verifyFirst) await checkBlocksThere(vault, point, !!o.verifyFirst && !o.salvage);
      // --salvage: what cannot be read becomes zeros, each range named; else the first one stops the restore
      let lost = 0;
      const onUnreadable = o.salvage
        ? (r: Unreadable) => {
            lost++;
            o.onWarning?.({ message: `bytes ${r.offset}-${r.offset + r.length - 1} of the volume could not be read (${r.error.message}): written as zeros` });
          }
        : undefined;
      let bytes: number;
      try {
        bytes = await restoreVolume(disk, length, to, format as 'raw' | 'vhd', o.onProgress, onUnreadable);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOSPC' || code === 'EDQUOT') {
          throw new FerryError('RESTORE_DISK_FULL', `no room left on the disk of ${to} for the volume (${formatSize(disk.size)}, less where it is sparse): free space there or restore to another disk; no partial image is left at ${to}`, { to });
        }
        if (!o.salvage && err instanceof FerryError && err.data.object) {
          // an image or VHD is renamed into place only when whole; a device is written as it goes
          const what = device ? `${to} holds the volume only up to there` : 'nothing was restored';
          throw new FerryError(err.code, `${err.message}; ${what} (--salvage restores the rest, with zeros where this data was)`, err.data, err.exitCode);
        }
        throw err;
      }
      const open = device ? 0 : await warnIfOthersRead(to, 'the volume, every byte of it', o.onWarning);
      return { point, to, format, restored: 1, skipped: 0, failed: 0, bytes, warnings: lost + open };
    }
    // the volume's superblock and catalog (what lists its files) come first: without them no file can be found
    const reader = await VolumeReader.open(disk).catch((err) => {
      throw unreadablePoint(err, point, 'the volume\'s superblock and list of files');
    });
    try {
      let warnings = 0;
      const onWarning = (w: { path?: Buffer | string; message: string; code?: string }) => {
        // a tar's staging folder goes once archived: what its marker would say does not apply
        if (format === 'tar' && w.code === 'RESTORE_UNFINISHED') return;
        warnings++;
        o.onWarning?.({ path: w.path?.toString(), message: w.message });
      };
      if (format === 'tar') {
        if (!o.to) throw new UsageError('--format tar needs --to FILE.tar');
        sweepBeside(o.to); // a killed run's partial archive there goes, even when this run writes a copy beside it
        const to = await fileTarget(o.to, format, o.ifExists ?? 'copy', point.seq);
        if (typeof to !== 'string') return { point, to: o.to, format, restored: 0, skipped: 1, failed: 0, bytes: 0, warnings: 0 };
        // the tree is put together beside the archive; one left by a run that was killed goes first
        // (a killed run's copy of /etc, shadow included: not kept long)
        const staging = tempDirIn(dirname(to), '.ferry-restore-', 60 * 1000, 'name a --to in a folder this user may write');
        try {
          let r;
          try {
            r = await restoreFiles(reader, { to: staging, paths: o.paths, ifExists: 'overwrite', onWarning, onProgress: (p) => o.onProgress?.(p.bytes, point.size, 'files') });
          } catch (err) {
            if (err instanceof FerryError && err.code === 'RESTORE_DISK_FULL') {
              throw new FerryError(
                'RESTORE_DISK_FULL',
                `no room left in ${dirname(to)}: a tar restore puts the files together there before it archives them, so it needs room for both; free space there or name a --to on a disk with more room, then run it again`,
                { to },
              );
            }
            throw err;
          }
          // nothing put together (every entry failed, each named): no archive, not even an empty one
          if (r.restored === 0 && r.failed > 0) return { point, to, format, restored: 0, skipped: r.skipped, failed: r.failed, bytes: 0, warnings };
          // ferry's marker of an unfinished restore is the staging folder's, not the backup's
          await rm(join(staging, MARKER_NAME), { force: true });
          await tarDir(staging, to);
          warnings += await warnIfOthersRead(to, "the machine's system state (/etc/shadow among it)", o.onWarning);
          return { point, to, format, restored: r.restored, skipped: r.skipped, failed: r.failed, bytes: r.bytes, warnings };
        } finally {
          await rm(staging, { recursive: true, force: true });
        }
      }
      const r = await restoreFiles(reader, {
        to: o.to,
        paths: o.paths,
        ifExists: o.ifExists ?? 'copy',
        point: String(point.seq),
        onWarning,
        onNote: (n) => o.onNote?.(n.message),
        onProgress: (p) => o.onProgress?.(p.bytes, point.size, 'files'),
      });
      return { point, to: o.to ?? '(original places)', format, restored: r.restored, skipped: r.skipped, unchanged: r.unchanged, copies: r.copies, copiesFound: r.copiesFound, failed: r.failed, bytes: r.bytes, warnings };
    } finally {
      await reader.close();
    }
  } finally {
    await disk.close();
  }
}

/**
 * An object the whole point needs (its disk's head, the volume's superblock
 * and catalog) that cannot be read: said with what it stops and what to do.
 */
function unreadablePoint(err: unknown, point: PointManifest, what: string): unknown {
  if (!(err instanceof FerryError) || !err.data.object) return err;
  return new FerryError(
    err.code,
    `${err.message}; point ${point.seq} of ${point.machine}/${point.item} cannot be read without it (${what}), so nothing was restored; put the object back from a copy of the vault if there is one (ferry check --read-data lists every missing or damaged object)`,
    err.data,
    err.exitCode,
  );
}

/**
 * Whether `path` is a regular file holding exactly the volume's `length`
 * bytes. Reads both a block at a time and stops at the first difference (a
 * different image costs one block); a block that cannot be read counts as a
 * difference, and the restore that follows says why.
 */
function sameImage(disk: Disk, length: number, path: string): Promise<boolean> {
  return fileEquals(path, length, (pos, len) => disk.read(pos, len), 2 * 1024 * 1024);
}

/** Whether `path` is a VHD whose content (through its chain) is the volume's, byte for byte. */
async function sameVhd(disk: Disk, path: string): Promise<boolean> {
  const st = await stat(path).catch(() => null);
  if (!st?.isFile()) return false;
  const other = await openChain(path).catch(() => null);
  if (!other) return false;
  try {
    if (other.size !== disk.size) return false;
    const chunk = 2 * 1024 * 1024;
    for (let pos = 0; pos < disk.size; pos += chunk) {
      const len = Math.min(chunk, disk.size - pos);
      const [a, b] = await Promise.all([disk.read(pos, len), other.read(pos, len)]);
      if (!a.equals(b)) return false;
    }
    return true;
  } catch {
    return false; // what cannot be read is not equal; the restore that follows says why
  } finally {
    await other.close();
  }
}

const isDevice = (p: string) => stat(p).then((st) => st.isBlockDevice(), () => false);

/**
 * A device is written as the restore goes: every block object the point
 * reads is looked for first, so that a missing one stops the restore before
 * the device is touched. A damaged one is found only when it is read: with
 * `readData` (--verify-first), every one is read and authenticated here
 * first, at the cost of reading the point twice.
 */
async function checkBlocksThere(vault: VaultReader, point: PointManifest, readData: boolean): Promise<void> {
  const objects = vaultObjects(vault);
  const whose = `point ${point.seq} of ${point.machine}/${point.item}`;
  for (const id of point.chain) {
    const there = new Set<string>();
    for await (const n of vault.list(`${diskPrefix(id)}blocks/`)) there.add(n); // one listing, not a lookup per block
    const blocks = await storedBlocks(objects, id);
    for (const b of blocks) {
      if (!there.has(b.name)) {
        throw new FerryError('OBJECT_MISSING', `object ${b.name} is missing from ${vault.location}, so ${whose} cannot be read whole; nothing was written (--salvage restores the rest, with zeros where it was; ferry check lists every missing object)`, { object: b.name });
      }
    }
    if (!readData) continue;
    let failed = false; // (the other readers then stop)
    await eachBlock(blocks, async (b) => {
      if (failed) return;
      try {
        await readStoredBlock(objects, b);
      } catch (err) {
        failed = true;
        const code = err instanceof FerryError ? err.code : 'OBJECT_DAMAGED';
        throw new FerryError(code, `object ${b.name} cannot be read (${(err as Error).message}), so ${whose} cannot be read whole; nothing was written (--salvage restores the rest, with zeros where it was; ferry check --read-data lists every damaged object)`, { object: b.name });
      }
    });
  }
}

/**
 * Where an image, a VHD or a tar archive is written for `--to to`: `to`
 * itself when nothing is there (or a block device, for a raw volume); when a
 * file is there, --if-exists decides as it does for files: `copy` writes
 * beside it (`to.ferry-restored-<point>`, or `.2`, `.3` ... after it when that
 * is taken by a file that is not `same`: never over it; `{ equal }` when it is
 * `same`), `overwrite` replaces it, `skip` leaves it (null).
 */
async function fileTarget(
  to: string,
  format: RestoreFormat,
  ifExists: IfExists,
  seq: number,
  same?: (path: string) => Promise<boolean>,
): Promise<string | null | { equal: string }> {
  if (to === '-') throw new UsageError(`--to - (standard output) is not supported for --format ${format}: name a file`);
  const parent = await stat(dirname(to)).catch((err: NodeJS.ErrnoException) => err);
  if (parent instanceof Error && parent.code !== 'ENOENT' && parent.code !== 'ENOTDIR') {
    throw new FerryError('RESTORE_NO_FOLDER', `cannot use ${dirname(to)} for --to: ${parent.message}`, { to });
  }
  if (parent instanceof Error || !parent.isDirectory()) {
    const what = parent instanceof Error && parent.code === 'ENOENT' ? 'does not exist' : 'is not a folder';
    throw new FerryError('RESTORE_NO_FOLDER', `${dirname(to)} ${what}: create it, or name a --to in a folder that exists`, { to });
  }
  let st;
  try {
    st = await stat(to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return to;
    throw err;
  }
  if (st.isBlockDevice()) {
    if (format === 'raw') return to;
    throw new UsageError(`${to} is a block device: a volume goes onto a device as --format raw; a ${format} archive goes to a file`);
  }
  if (st.isDirectory()) {
    throw new UsageError(`${to} is a folder: name the file to write (${format === 'tar' ? 'FILE.tar' : format === 'vhd' ? 'FILE.vhd' : 'FILE.img, or a block device'})`);
  }
  if (!st.isFile()) throw new UsageError(`${to} is neither a file nor a block device: name a file to write`);
  if (ifExists === 'overwrite') return to;
  if (ifExists === 'skip') return null;
  for (let n = 1; ; n++) {
    const copy = `${to}.ferry-restored-${seq}${n > 1 ? `.${n}` : ''}`;
    if (!(await stat(copy).then(() => true, () => false))) return copy;
    if (await same?.(copy)) return { equal: copy };
  }
}

/**
 * An image, a VHD or an archive holds whole file systems (a volume's
 * secrets, /etc/shadow): it is made readable by its owner alone, whatever
 * the umask; chmod widens it when that is wanted.
 */
const PRIVATE = 0o600;

/**
 * Images and archives are made readable by their owner alone (PRIVATE); a
 * file system that keeps no modes (FAT, exFAT, NTFS through ntfs-3g) shows
 * them readable by all: said once, as what it holds is then open. Returns
 * the number of warnings given (0 or 1).
 */
async function warnIfOthersRead(path: string, holds: string, onWarning?: RestoreOptions['onWarning']): Promise<number> {
  const st = await stat(path).catch(() => null);
  if (!st || (st.mode & 0o077) === 0) return 0;
  onWarning?.({ path, message: `${path} is readable by other users (mode ${(st.mode & 0o777).toString(8)}): the file system there keeps no file modes (FAT, exFAT, NTFS), and it holds ${holds}; keep the drive safe, or restore it to a Linux file system` });
  return 1;
}

async function restoreVolume(
  disk: Disk,
  /** The volume's own length: the disk's, or less for an image that was not whole sectors. */
  length: number,
  to: string,
  format: 'raw' | 'vhd',
  onProgress?: RestoreOptions['onProgress'],
  onUnreadable?: (r: Unreadable) => void,
): Promise<number> {
  if (format === 'vhd') {
    await exportDisk(disk, to, 'dynamic', { onProgress: (d, t) => onProgress?.(d, t, 'volume'), onUnreadable, mode: PRIVATE });
    return disk.size;
  }
  if (!(await isDevice(to))) {
    // an image file, new or replaced
    await exportDisk(disk, to, 'raw', { onProgress: (d, t) => onProgress?.(d, t, 'volume'), onUnreadable, rawLength: length, mode: PRIVATE });
    return length;
  }
  // A device may hold old data: every byte is written, zeros included. It is
  // opened exclusively (O_EXCL on a block device: refused while it is
  // mounted or held by another program) and must be large enough.
  let fh;
  try {
    fh = await fsOpen(to, fsc.O_RDWR | fsc.O_EXCL);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EBUSY') {
      throw new FerryError('RESTORE_DEVICE_BUSY', `${to} is in use (mounted, or held by another program): unmount it and run the same command again`, { to });
    }
    throw err;
  }
  try {
    const size = await volumeSize(to);
    if (size < length) {
      throw new FerryError(
        'RESTORE_DEVICE_SMALL',
        `${to} holds ${formatSize(size)} (${size} bytes) but the volume is ${formatSize(length)} (${length} bytes): restore to a device at least that large, or to an image file`,
        { to, size, needed: length },
      );
    }
    const chunk = 2 * 1024 * 1024; // a stored block: what --salvage loses at most for one bad object
    for (let pos = 0; pos < length; pos += chunk) {
      const len = Math.min(chunk, length - pos);
      let b: Buffer;
      try {
        b = await disk.read(pos, len);
      } catch (err) {
        if (!onUnreadable) throw err;
        onUnreadable({ offset: pos, length: len, error: err as Error });
        b = Buffer.alloc(len);
      }
      await writeAll(fh, b, pos);
      onProgress?.(pos + b.length, length, 'volume');
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  return length;
}

/** Archives `dir` into `to`, under a temporary name until it is whole. */
let setprivThere: boolean | undefined;
/** Whether util-linux's setpriv is on the PATH (it is on every Debian; a trimmed container may lack it). */
function hasSetpriv(): boolean {
  setprivThere ??= (process.env.PATH ?? '/usr/bin:/bin').split(':').some((d) => d !== '' && existsSync(join(d, 'setpriv')));
  return setprivThere;
}

async function tarDir(dir: string, to: string): Promise<void> {
  const tmp = tempBeside(to);
  // made here, private: tar keeps the mode of a file it writes over (an archive of /etc holds shadow)
  await (await fsOpen(tmp, 'wx', PRIVATE)).close();
  // What is in the folder, not the folder itself: its `./` entry (the staging
  // folder's 0700 and today's time) would be given to the folder the archive
  // is unpacked into (`tar -C / -xpf`: / itself).
  const raw = await readdir(dir, { encoding: 'buffer' });
  const utf8 = raw.every((n) => Buffer.from(n.toString()).equals(n)); // (a command line holds only text)
  let names = utf8 ? raw.map((n) => `./${n.toString()}`).sort() : ['.'];
  if (names.length === 0) names = ['-T', '/dev/null']; // nothing restored: an empty archive
  if (!utf8) await chmod(dir, 0o755);
  try {
    await new Promise<void>((resolve, reject) => {
      // tar dies with ferry (setpriv --pdeathsig, util-linux): a kill -9 of ferry must not leave it writing an archive nobody will rename
      const tarArgs = ['tar', '--force-local', '--xattrs', '--acls', '--numeric-owner', '-cpf', tmp, '-C', dir, ...names];
      const [cmd, ...args] = hasSetpriv() ? ['setpriv', '--pdeathsig', 'KILL', '--', ...tarArgs] : tarArgs;
      const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      p.stderr.on('data', (d) => (err += d));
      p.on('error', reject);
      p.on('close', (code) => {
        if (code === 0) return resolve();
        // tar says "Wrote only N of M bytes" or "No space left on device" when the disk fills
        if (/No space left|Disk quota exceeded|Wrote only \d+ of \d+ bytes/.test(err)) {
          return reject(new FerryError('RESTORE_DISK_FULL', `no room left on the disk of ${to} for the archive: free space there or name a --to on a disk with more room, then run it again; nothing was written at ${to}`, { to }));
        }
        reject(new FerryError('RESTORE_TAR', `tar could not write ${to}: ${err.trim().split('\n')[0]}`));
      });
    });
    await rename(tmp, to);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
