// The folders a restore made, where no marker can say so.
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
// A record is written (write(2), no fsync) once its folder exists: a kill
// loses none, a power cut may lose the last ones (those folders then keep
// the owner and mode they were made with). The state folder is the
// restoring user's own (mode 0700): only they can add to what a later run
// of theirs will change.
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync, constants as C } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

/** Where ferry keeps what must outlive a run on this machine. */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.FERRY_STATE_DIR) return resolve(env.FERRY_STATE_DIR);
  if (process.getuid?.() === 0) return '/var/lib/ferry';
  return join(env.XDG_STATE_HOME ? resolve(env.XDG_STATE_HOME) : join(homedir(), '.local', 'state'), 'ferry');
}

const SEP = 0; // records end with a NUL byte: paths may hold any other byte

export class FolderJournal {
  private fd: number | null = null;
  private broken = false;

  /** Records are paths within the target (`prefix`, as the caller spells it, left off). */
  private constructor(readonly path: string, private readonly earlier: Set<string>, private readonly prefix: number) {}

  private rel(dir: Buffer): Buffer {
    return dir.subarray(this.prefix);
  }

  /**
   * The journal of restores of `volumeId` into `target` (null: the original
   * places; paths given to made() and add() start with it), with what
   * earlier unfinished runs recorded. Null when the state folder cannot be
   * used (`why` says why).
   */
  static open(volumeId: string, target: Buffer | null, dir = stateDir()): { journal: FolderJournal | null; why?: string } {
    const where = target ? Buffer.from(resolve(target.toString('latin1')), 'latin1') : Buffer.from('/');
    const key = createHash('sha256').update(volumeId).update('\0').update(where).digest('hex').slice(0, 32);
    const folder = join(dir, 'restores');
    const path = join(folder, `${key}.folders`);
    const earlier = new Set<string>();
    try {
      mkdirSync(folder, { recursive: true, mode: 0o700 });
      const data = readFileSync(path);
      let start = 0;
      for (let i = data.indexOf(SEP); i >= 0; start = i + 1, i = data.indexOf(SEP, start)) {
        if (i > start) earlier.add(data.toString('latin1', start, i));
      }
      // (a record cut short by a crash has no NUL: left out)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') return { journal: null, why: `${path}: ${(err as Error).message}` };
    }
    return { journal: new FolderJournal(path, earlier, target ? target.length : 0) };
  }

  /** Whether an earlier unfinished run made folder `dir`. */
  made(dir: Buffer): boolean {
    return this.earlier.size > 0 && this.earlier.has(this.rel(dir).toString('latin1'));
  }

  /** Records that this run made folder `dir`; returns an error message when it cannot. */
  add(dir: Buffer): string | null {
    if (this.broken) return 'not writable';
    try {
      // O_NOFOLLOW: the state folder is the user's own, but never write through a symlink
      this.fd ??= openSync(this.path, C.O_WRONLY | C.O_CREAT | C.O_APPEND | C.O_NOFOLLOW, 0o600);
      const r = this.rel(dir);
      const rec = Buffer.allocUnsafe(r.length + 1);
      r.copy(rec);
      rec[r.length] = SEP;
      writeSync(this.fd, rec);
      return null;
    } catch (err) {
      this.broken = true;
      return `${this.path}: ${(err as Error).message}`;
    }
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  /** The whole backup is in place: nothing is left for a later run to finish. */
  finish(): void {
    this.close();
    try {
      unlinkSync(this.path);
    } catch {
      /* none was written */
    }
  }
}
