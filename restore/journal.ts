// The folders a restore made, where no marker can say so; and the files it
// put into folders it did not make.
//
// A restore into a new `--to DIR` marks DIR as its own (marker.ts): a run
// stopped midway and run again knows that everything in DIR is its work.
// A restore into folders that already exist (the original places, or a
// `--to` that held other things) has no such mark, and its folders get
// their times, xattrs (default ACLs) and, not running as root, their mode
// only at the end. A run stopped before the end and run again under `copy`
// or `skip` would find those folders, take them for the user's own and
// leave them so: 0700, without their ACLs, with today's times.
//
// So such a run writes down every folder it makes, one path per record, in
// a journal kept in ferry's state folder under a name derived from the
// backup and the target. The next restore of the same backup into the same
// target reads it and gives the folders listed there their metadata like
// folders it made itself. The journal goes when a run of the whole backup
// ends with every entry in place.
//
// Records are written (write(2)): one before a folder is made ("? ?":
// about to make it), one once it exists (its device and inode numbers), or
// one when it could not be made ("! !": it was there). A kill loses none.
// They are synced to disk about a second after they are written at the
// latest (the first one at once, with the journal's name): a power cut may lose the
// last second's (those folders then keep the owner and mode they were made
// with), where a sync per folder would cost seconds per 10,000 folders. The device and inode numbers
// keep a folder its user put in place of the one the restore made from
// being taken for it; a folder only announced (a kill came between the two
// records) is taken only as mkdir left it: the restoring user's, mode 0700. The state
// folder is the restoring user's own (mode 0700): only they can add to
// what a later run of theirs will change.
//
// Files, links and nodes go into folders that the restore did not make
// under a temporary name, then are renamed into place and given their
// metadata. A run stopped between the two leaves a file with the backup's
// bytes and the wrong times, xattrs or owner, which the next run under
// `copy` or `skip` would leave so. So each is written down ("~ ~") before it
// is handed on, and the next run, finding the backup's bytes there, gives it
// its metadata. (In folders a run made, everything is its work: the folder's
// record says so.)
//
// Each run writes a file of its own (`<key>.<pid>-<random>.folders`), and
// reads all of its key's: two runs at once never write into one file, and
// a run deletes only the files it read, of runs no longer alive.
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fdatasyncSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, realpathSync, renameSync, unlinkSync, writeFileSync, writeSync, constants as C, type Stats } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { mkdirpSync, pidAlive } from '../format/fsio.js';

/** Where ferry keeps what must outlive a run on this machine (throws when there is no home to put it in). */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.FERRY_STATE_DIR) return resolve(env.FERRY_STATE_DIR);
  if (process.getuid?.() === 0) return '/var/lib/ferry';
  return join(env.XDG_STATE_HOME ? resolve(env.XDG_STATE_HOME) : join(homedir(), '.local', 'state'), 'ferry');
}

const SEP = 0; // records end with a NUL byte: paths may hold any other byte

/** "<dev> <ino> <path within the target>", or "? ?" (about to be made) or "! !" (not made) for dev and ino */
function record(id: string, rel: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${id} `, 'latin1'), rel, Buffer.from([SEP])]);
}
const ABOUT = '? ?';
const NOT_MADE = '! !';
/** A file (or link, or node) about to be put in place in a folder the restore did not make. */
const ENTRY = '~ ~';

/** Records are made durable at most this long after they are written. */
const SYNC_MS = 1000;

function syncDir(dir: string): void {
  const fd = openSync(dir, C.O_RDONLY | C.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export class FolderJournal {
  private fd: number | null = null;
  private synced = 0;
  private dirty = false;
  private timer: NodeJS.Timeout | undefined;
  private broken = false;
  /** Folders announced and not yet said made or not made; whether a record says this run made or placed something. */
  private announced = 0;
  private madeSome = false;
  /** Earlier runs' records (path -> "dev ino"), and which of them this run came upon. */
  private readonly seen = new Set<string>();

  private constructor(
    private readonly own: string,
    private readonly earlier: Map<string, string>,
    /** Files of earlier runs read at open, and whether their runs have ended. */
    private readonly read: { path: string; ended: boolean }[],
    /** Records are paths within the target: its length as the caller spells it is left off. */
    private readonly prefix: number,
  ) {}

  /**
   * The journal of restores of `volumeId` into `target` (null: the original
   * places; the paths given to made() and add() start with it, spelled the
   * same way), with what earlier unfinished runs recorded. Null when there
   * is no state folder to use (`why` says why).
   */
  static open(volumeId: string, target: Buffer | null, dir?: string): { journal: FolderJournal | null; why?: string } {
    try {
      // keyed by the folder itself: however --to is spelled, through whatever symlink
      const where = target ? realpathSync(target, { encoding: 'buffer' }) : Buffer.from('/');
      const key = createHash('sha256').update(volumeId).update('\0').update(where).digest('hex').slice(0, 32);
      const folder = join(dir ?? stateDir(), 'restores');
      mkdirpSync(folder, 0o700);
      const earlier = new Map<string, string>();
      const read: { path: string; ended: boolean }[] = [];
      for (const name of readdirSync(folder)) {
        const m = /^([0-9a-f]{32})\.(\d+)-[0-9a-f]+\.folders$/.exec(name);
        if (!m || m[1] !== key) continue;
        const path = join(folder, name);
        let data: Buffer;
        try {
          data = readFileSync(path);
        } catch {
          continue; // (gone meanwhile: its run finished)
        }
        read.push({ path, ended: !pidAlive(Number(m[2])) });
        let start = 0;
        // a record cut short (no NUL yet) is left out
        for (let i = data.indexOf(SEP); i >= 0; start = i + 1, i = data.indexOf(SEP, start)) {
          const sp1 = data.indexOf(0x20, start);
          const sp2 = sp1 < 0 ? -1 : data.indexOf(0x20, sp1 + 1);
          if (sp2 < 0 || sp2 >= i) continue;
          const rel = data.toString('latin1', sp2 + 1, i);
          const id = data.toString('latin1', start, sp2);
          if (id === NOT_MADE) earlier.delete(rel);
          else if (!(id === ABOUT && earlier.has(rel))) earlier.set(rel, id); // (an announcement never hides a record)
        }
      }
      const own = join(folder, `${key}.${process.pid}-${randomBytes(4).toString('hex')}.folders`);
      return { journal: new FolderJournal(own, earlier, read, target ? target.length : 0) };
    } catch (err) {
      return { journal: null, why: (err as Error).message };
    }
  }

  private rel(dir: Buffer): Buffer {
    return dir.subarray(this.prefix);
  }

  /** Whether an earlier unfinished run made folder `dir`, found as `st`. */
  made(dir: Buffer, st: Stats): boolean {
    if (this.earlier.size === 0) return false;
    const rel = this.rel(dir).toString('latin1');
    const id = this.earlier.get(rel);
    const mine = id === `${st.dev} ${st.ino}` || (id === ABOUT && st.isDirectory() && st.uid === process.geteuid?.() && (st.mode & 0o7777) === 0o700);
    if (!mine) return false;
    this.seen.add(rel);
    return true;
  }

  /**
   * Whether an earlier unfinished run was putting non-folder `path` in place
   * (it may have stopped between the rename and the metadata). Asked only of
   * an entry found equal to the backup: what holds the backup's bytes at a
   * name the run was about to fill is that run's work.
   */
  placedEntry(path: Buffer, st: Stats): boolean {
    if (this.earlier.size === 0 || st.isDirectory()) return false;
    const rel = this.rel(path).toString('latin1');
    if (this.earlier.get(rel) !== ENTRY) return false;
    this.seen.add(rel);
    return true;
  }

  /** Records that this run is about to put a file, link or node at `path`, in a folder it did not make. */
  aboutEntry(path: Buffer): boolean {
    this.madeSome = true;
    return this.write(ENTRY, path);
  }

  /** Records that this run is about to make folder `dir` (add() or notMade() follows). */
  about(dir: Buffer): boolean {
    this.announced++;
    return this.write(ABOUT, dir);
  }

  /** Records that this run could not make folder `dir` (something was there). */
  notMade(dir: Buffer): boolean {
    this.announced--;
    return this.write(NOT_MADE, dir);
  }

  /** Records that this run made folder `dir` (now `st`); false when it could not. */
  add(dir: Buffer, st: Stats): boolean {
    this.announced--;
    this.madeSome = true;
    return this.write(`${st.dev} ${st.ino}`, dir);
  }

  private write(id: string, dir: Buffer): boolean {
    if (this.broken) return false;
    try {
      // O_NOFOLLOW | O_EXCL: a file of this run's own, never through a symlink
      if (this.fd === null) {
        this.fd = openSync(this.own, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_APPEND | C.O_NOFOLLOW, 0o600);
        syncDir(dirname(this.own));
      }
      const rec = record(id, this.rel(dir));
      if (writeSync(this.fd, rec) !== rec.length) throw new Error('short write');
      // On disk within about a second (a power cut loses at most the last
      // second's records), without a sync per folder made: at once when the
      // last sync is that old, else by a timer (a long file may come next).
      this.dirty = true;
      if (Date.now() - this.synced >= SYNC_MS) this.sync();
      else this.timer ??= setTimeout(() => this.sync(), SYNC_MS).unref();
      return true;
    } catch {
      this.broken = true;
      return false;
    }
  }

  /** Makes the records written so far durable (best effort: they are written either way). */
  private sync(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.fd === null || !this.dirty) return;
    try {
      fdatasyncSync(this.fd);
    } catch {
      /* the records are written; only their durability is unsure */
    }
    this.dirty = false;
    this.synced = Date.now();
  }

  close(): void {
    this.sync();
    if (this.fd === null) return;
    closeSync(this.fd);
    this.fd = null;
    // every folder it tried was refused (a read-only target), and it placed nothing: its file says nothing
    if (!this.madeSome && this.announced === 0) {
      try {
        unlinkSync(this.own);
      } catch {
        /* gone already */
      }
    }
  }

  /**
   * The run ended with every entry it took in place. `whole`: it took the
   * whole backup, and nothing is left for a later run. Else what earlier
   * runs recorded outside what it took is kept, in a file of its own.
   */
  finish(whole: boolean): void {
    this.close();
    const keep = whole ? [] : [...this.earlier].filter(([rel]) => !this.seen.has(rel));
    try {
      if (keep.length) {
        const tmp = `${this.own}.tmp`;
        writeFileSync(tmp, Buffer.concat(keep.map(([rel, id]) => record(id, Buffer.from(rel, 'latin1')))), { mode: 0o600, flag: 'wx' });
        renameSync(tmp, this.own);
      } else unlinkSync(this.own);
    } catch {
      /* nothing of its own was written */
    }
    for (const f of this.read) {
      if (!f.ended) continue; // a run still going: its file stays
      try {
        unlinkSync(f.path);
      } catch {
        /* gone already */
      }
    }
  }
}
