// The unfinished-restore marker, for restores into a new `--to DIR`.
//
// A restore into a folder that did not exist makes DIR, and at once
// DIR/.ferry-restore-unfinished (a small JSON file: which volume, when).
// While the marker is there, everything under DIR is the restore's own work,
// so files in the directories it creates are written straight to their
// final names (no temporary name, no rename: one syscall less per file, and
// on ext4 a rename is not cheap). If that restore is killed, DIR may hold a
// half-written file under its real name, or directories still at mode 0700;
// the next restore into DIR finds the marker and treats everything it finds
// there as that unfinished work, not as the user's: what differs from the
// backup is replaced and metadata set again, whatever --if-exists says.
//
// The marker goes when a run completes without a failed entry and the tree
// holds nothing of an unfinished run: the run made DIR itself, or it
// restored the whole of the same volume over the unfinished tree. (A
// narrower or another point's run over it leaves the marker: what it did
// not cover may still be half-written.)
//
// A folder that existed before the restore gets no marker (unless it is
// empty and the restoring user's: then nothing in it can be lost, and it is
// taken as new): there, every file is written under a temporary name and
// renamed into place when complete, and the --if-exists policy decides
// about anything already there. So does a folder holding the marker of a
// restore of another volume: its marker stays, for that restore to finish.
//
// Only a regular file owned by the restoring user counts as a marker, so
// nobody else can make ferry treat a shared folder's files as its own. On a
// file system that keeps no owners (FAT, exFAT, NTFS through ntfs-3g,
// mounted with uid=1000 as desktops do) every file shows the mount's owner:
// there a marker of that owner counts, as any file ferry makes there would
// show the same (nobody else's files can be told apart on it anyway).
import { constants as C, closeSync, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { mkdirpSync } from '../format/fsio.js';

export const MARKER_NAME = '.ferry-restore-unfinished';

export interface MarkerState {
  /** The restore owns DIR: its fresh directories may be written in place. */
  active: boolean;
  /** DIR is an unfinished earlier restore's: what is in it is that restore's work. */
  inherited: boolean;
  /** The volume the unfinished restore was restoring (null: unknown). */
  volume: string | null;
  /** DIR holds the marker of an unfinished restore of another volume (left alone). */
  other: boolean;
}

const INACTIVE: MarkerState = { active: false, inherited: false, volume: null, other: false };

function writeMarker(path: Buffer, volume: string): boolean {
  try {
    const fd = openSync(path, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
    try {
      writeSync(fd, JSON.stringify({ format: 'ferry-restore-unfinished', volume, started: new Date().toISOString() }) + '\n');
    } finally {
      closeSync(fd);
    }
    return true;
  } catch {
    return false;
  }
}

/**
 * The owner a file this process makes in `dir` gets: not ours where the file
 * system keeps no owners (FAT, exFAT, ntfs-3g mounted with uid=). Null when
 * nothing can be made there.
 */
function ownerGiven(dir: Buffer): number | null {
  const probe = Buffer.concat([dir, Buffer.from(`/.ferry-owner-probe-${process.pid}-${randomBytes(4).toString('hex')}`)]);
  try {
    const fd = openSync(probe, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
    try {
      return fstatSync(fd).uid;
    } finally {
      closeSync(fd);
      unlinkSync(probe);
    }
  } catch {
    return null;
  }
}

/** Whether `uid` owns what the restoring user makes in `dir`: the user, or where owners are not kept the mount's owner. */
function isOurs(uid: number, dir: Buffer): boolean {
  const me = process.geteuid?.() ?? uid;
  return uid === me || ownerGiven(dir) === uid;
}

function readMarker(path: Buffer): { ok: boolean; volume: string | null } {
  let fd: number;
  try {
    fd = openSync(path, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
  } catch {
    return { ok: false, volume: null };
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > 4096 || !isOurs(st.uid, Buffer.from(dirname(path.toString('latin1')), 'latin1'))) return { ok: false, volume: null };
    const buf = Buffer.alloc(Number(st.size));
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, got);
      if (n === 0) break;
      got += n;
    }
    try {
      const doc = JSON.parse(buf.toString('utf8', 0, got));
      return { ok: true, volume: typeof doc?.volume === 'string' ? doc.volume : null };
    } catch {
      return { ok: true, volume: null }; // cut short by a kill: still a marker
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Prepares `to` for a restore of `volume`: makes it (with a marker) when it
 * does not exist, or finds the marker of an unfinished restore in it.
 */
export function prepareTarget(to: Buffer, volume: string): MarkerState {
  const markerPath = Buffer.from(join(to.toString('latin1'), MARKER_NAME), 'latin1');
  const fresh = (): MarkerState => (writeMarker(markerPath, volume) ? { active: true, inherited: false, volume, other: false } : INACTIVE);
  if (!lstatSync(to, { throwIfNoEntry: false })) {
    mkdirpSync(Buffer.from(dirname(to.toString('latin1')), 'latin1'));
    try {
      mkdirSync(to); // not recursive: a folder someone else made meanwhile is not taken for new
      return fresh();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  const st = statSync(to); // a symlink to a folder names that folder
  if (!st.isDirectory()) throw Object.assign(new Error(`${to.toString()} is not a folder`), { code: 'ENOTDIR' });
  const m = readMarker(markerPath);
  if (m.ok) {
    if (m.volume === null || m.volume === volume) return { active: true, inherited: true, volume: m.volume, other: false };
    return { ...INACTIVE, other: true };
  }
  // empty and the restoring user's (a run killed between making it and marking it): taken as new
  if (readdirSync(to).length === 0 && isOurs(st.uid, to)) return fresh();
  return INACTIVE;
}

/** Removes the marker of `to` (the restore completed and left nothing unfinished). */
export function removeMarker(to: Buffer): void {
  try {
    unlinkSync(Buffer.from(join(to.toString('latin1'), MARKER_NAME), 'latin1'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
