// The restore journal: which directories a restore into `--to DIR` created.
//
// Files in a directory the restore created are written straight to their
// final names (no temporary name, no rename: one syscall less per file, and
// on ext4 a rename is not cheap). If that restore is interrupted, such a
// directory may hold a half-written file under its real name, which a
// second run must not mistake for a file of the user's (and keep, writing a
// copy beside it). So each such directory is appended to the journal,
// DIR/.ferry-restore-journal, before anything is written in it; the next run
// reads the journal, treats what it finds in those directories as its own
// unfinished work (rewritten where it differs from the backup, whatever the
// --if-exists policy), and the journal is removed when a run completes.
//
// Format: the directories' paths, each followed by a NUL byte. A path
// without its NUL (a run killed inside the write) is ignored.
//
// Crash model: a killed process loses nothing it wrote, so the journal is
// not fsynced. After a power cut it may miss directories whose files did
// reach the disk; the next run then applies the policy to those files, so
// with copy (the default) a half-written file is kept and the backup's copy
// written beside it: untidy, but no data of the user's is lost.
import { closeSync, constants as C, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';

export const JOURNAL_NAME = '.ferry-restore-journal';

export class RestoreJournal {
  /** Directories (latin1 keys of their paths) that an earlier, interrupted run created. */
  readonly leftover = new Set<string>();
  #fd: number | null = null;
  #broken = false;

  constructor(readonly path: Buffer) {
    let data: Buffer;
    try {
      data = readFileSync(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return; // no journal, or no target yet
      throw err;
    }
    let start = 0;
    for (let i = data.indexOf(0); i >= 0; i = data.indexOf(0, start)) {
      if (i > start) this.leftover.add(data.toString('latin1', start, i));
      start = i + 1;
    }
  }

  /**
   * Records that this run created directory `key`; false when that could
   * not be written down (the caller then keeps to temporary names there).
   */
  add(key: string): boolean {
    if (this.#broken) return false;
    try {
      this.#fd ??= openSync(this.path, C.O_WRONLY | C.O_APPEND | C.O_CREAT | C.O_NOFOLLOW, 0o600);
      const b = Buffer.from(`${key}\0`, 'latin1');
      if (writeSync(this.#fd, b) !== b.length) throw new Error('short write');
      return true;
    } catch {
      this.#broken = true;
      return false;
    }
  }

  /** The run completed: nothing it created is unfinished. */
  finish(): void {
    this.close();
    try {
      unlinkSync(this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  /** Closes without removing (the run did not complete). */
  close(): void {
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
  }
}
