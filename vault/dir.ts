// A vault in a local directory: one file per object, at the object's name.
// Writes go to a temporary file in the same directory, are fsynced, then
// renamed over the name and the directory fsynced: after a crash a name holds
// its old bytes or its new bytes, and leftover temporaries (dot-files) are
// invisible to list() and cost only space. Inside a batch (beginBatch ..
// commitBatch) a new name is linked into place at once and fsynced with the
// rest of the batch at commitBatch: one wait for many objects, as git's
// batch fsync mode does; the caller writes nothing that refers to them before.
import { randomBytes } from 'node:crypto';
import { constants as fsc, promises as fs, Dirent } from 'node:fs';
import { dirname, join, resolve, sep } from 'node:path';
import { FerryError } from '../format/errors.js';
import { Backend, checkObjectName, checkPrefix, IoFaults, ObjectStat, objectExists, objectMissing } from './backend.js';
import { HOST_TAG, linkRefused, mkdirp, sweepLeftovers, writeAll } from '../format/fsio.js';
import { startWriteback } from '../format/writeback.js';

export interface DirBackendOptions {
  /** fsync files and directories (default true). Off only for throwaway test data. */
  sync?: boolean;
}

const TMP_MARK = '.ferry-tmp-';
/**
 * Temporaries are named `.ferry-tmp-<host>-<pid>-<random>`: one left by a
 * writer of this host that is gone (kill -9 mid-put) is removed the next
 * time a writer of this host writes into its folder. Only one writer holds
 * a vault at a time (the lock), so no live put of this host is touched;
 * those of other hosts sharing the vault are left alone.
 */
const OWN_TMP = new RegExp(`^\\.ferry-tmp-${HOST_TAG}-(\\d+)-[0-9a-f]{16}$`);

export class DirBackend implements Backend {
  readonly location: string;
  readonly #root: string;
  readonly #sync: boolean;
  #faults: IoFaults | null = null;
  /** New objects written since beginBatch(), made durable by commitBatch(). */
  #batch: { files: Set<string>; dirs: Set<string> } | null = null;
  /** Directories known to exist (mkdir -p once per directory, not once per object). */
  readonly #madeDirs = new Set<string>();

  constructor(root: string, opts: DirBackendOptions = {}) {
    this.#root = resolve(root);
    this.location = this.#root;
    this.#sync = opts.sync ?? true;
  }

  describe(): string {
    return `directory ${this.#root}`;
  }

  injectFaults(faults: IoFaults | null): void {
    this.#faults = faults;
  }

  #path(name: string): string {
    checkObjectName(name);
    const p = join(this.#root, ...name.split('/'));
    // checkObjectName already rules out escapes; this is the belt to those braces.
    if (!p.startsWith(this.#root + sep)) throw new FerryError('BAD_OBJECT_NAME', `object name ${name} escapes the vault`, { object: name });
    return p;
  }

  async put(name: string, data: Buffer): Promise<void> {
    await this.#write(name, data, false);
  }

  async putNew(name: string, data: Buffer): Promise<void> {
    await this.#write(name, data, true);
  }

  async #write(name: string, data: Buffer, exclusive: boolean): Promise<void> {
    const path = this.#path(name);
    const dir = dirname(path);
    const tmp = join(dir, `${TMP_MARK}${HOST_TAG}-${process.pid}-${randomBytes(8).toString('hex')}`);
    let created = false;
    try {
      await this.#mkdirs(dir);
      const create = () => fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644);
      const fh = await create().catch(async (err) => {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        this.#madeDirs.delete(dir); // removed behind our back: make it again
        await this.#mkdirs(dir);
        return create();
      });
      created = true;
      try {
        if (this.#faults?.midWrite && data.length > 0) {
          const half = data.length >> 1;
          await writeAll(fh, data.subarray(0, half));
          this.#faults.midWrite(name, half, data.length);
          await writeAll(fh, data.subarray(half));
        } else {
          await writeAll(fh, data);
        }
        if (this.#sync && this.#batch && !exclusive) {
          // Group commit: a new name gets the object now and its fsync at
          // commitBatch() (one wait for all of them, like git's batch mode),
          // its data on the way to the disk already (startWriteback).
          // link() refuses an existing name; replacing one stays durable on
          // its own below, so what was there is never lost to a power cut.
          await startWriteback(fh);
          try {
            await fs.link(tmp, path).catch(noHardLinks(this.location));
            this.#batch.files.add(path);
            this.#batch.dirs.add(dir);
            await fs.unlink(tmp);
            created = false;
            return;
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          }
        }
        if (this.#sync) await fh.sync();
      } finally {
        await fh.close();
      }
      if (exclusive) {
        // link() fails if the name exists, atomically: an exclusive create
        // that still never shows a partial file.
        try {
          await fs.link(tmp, path).catch(noHardLinks(this.location));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw objectExists(this.location, name);
          throw err;
        }
        await fs.unlink(tmp);
        created = false;
      } else {
        await fs.rename(tmp, path);
        created = false;
      }
      if (this.#sync) await fsyncDir(dir);
    } catch (err) {
      if (created) await fs.unlink(tmp).catch(() => {});
      throw this.#translate(err, 'write', name);
    }
  }

  /** mkdir -p, then fsync the parent of each directory it made so the new entries survive a crash. */
  async #mkdirs(dir: string): Promise<void> {
    if (this.#madeDirs.has(dir)) return;
    const first = await mkdirp(dir);
    if (first === undefined) sweepLeftovers(dir, OWN_TMP, 0);
    if (first && this.#sync) {
      for (let d = dir; ; d = dirname(d)) {
        await fsyncDir(dirname(d));
        if (d === first || d.length <= this.#root.length) break;
      }
    }
    this.#madeDirs.add(dir);
  }

  beginBatch(): void {
    this.#batch ??= { files: new Set(), dirs: new Set() };
  }

  keepInBatch(name: string): void {
    if (!this.#batch) return;
    const path = this.#path(name);
    this.#batch.files.add(path);
    this.#batch.dirs.add(dirname(path));
  }

  /** fsyncs every object the batch created, then their directories; ends the batch. */
  async commitBatch(): Promise<void> {
    const batch = this.#batch;
    this.#batch = null;
    if (!batch || !this.#sync) return;
    const files = [...batch.files];
    // Several at once: the kernel writes them back together and the
    // filesystem's journal commits them in few transactions.
    let next = 0;
    const worker = async () => {
      while (next < files.length) {
        const f = files[next++];
        try {
          await fsyncPath(f);
        } catch (err) {
          // deleted since (a later delete is durable on its own): nothing to keep
          if (isMissing(err)) continue;
          throw this.#translate(err, 'sync', f.slice(this.#root.length + 1).split(sep).join('/'));
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(8, files.length) }, worker));
    for (const d of batch.dirs) await fsyncDir(d).catch((err) => {
      if (!isMissing(err)) throw this.#translate(err, 'sync', d);
    });
  }

  async get(name: string): Promise<Buffer> {
    const path = this.#path(name);
    try {
      return await fs.readFile(path);
    } catch (err) {
      throw this.#translate(err, 'read', name);
    }
  }

  async exists(name: string): Promise<boolean> {
    const path = this.#path(name);
    try {
      return (await fs.stat(path)).isFile();
    } catch (err) {
      if (isMissing(err)) return false;
      throw this.#translate(err, 'stat', name);
    }
  }

  async stat(name: string): Promise<ObjectStat> {
    const path = this.#path(name);
    try {
      const st = await fs.stat(path);
      if (!st.isFile()) throw objectMissing(this.location, name);
      return { size: st.size };
    } catch (err) {
      throw this.#translate(err, 'stat', name);
    }
  }

  async delete(name: string): Promise<void> {
    const path = this.#path(name);
    try {
      await fs.unlink(path);
      if (this.#sync) await fsyncDir(dirname(path));
    } catch (err) {
      if (isMissing(err)) return;
      throw this.#translate(err, 'delete', name);
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    checkPrefix(prefix);
    // Walk only the directory the prefix pins down, then filter by the rest.
    const cut = prefix.lastIndexOf('/');
    const base = cut < 0 ? '' : prefix.slice(0, cut);
    yield* this.#walk(base, prefix);
  }

  async *#walk(rel: string, prefix: string): AsyncIterable<string> {
    let entries: Dirent[];
    try {
      entries = await fs.readdir(rel ? join(this.#root, ...rel.split('/')) : this.#root, { withFileTypes: true });
    } catch (err) {
      if (isMissing(err)) return;
      throw this.#translate(err, 'list', rel || '/');
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (e.name.startsWith('.')) continue; // temporaries and anything not ours
      const name = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        // Descend only where names can still match the prefix.
        if (prefix.startsWith(name + '/') || name.startsWith(prefix) || (name + '/').startsWith(prefix)) yield* this.#walk(name, prefix);
      } else if (e.isFile() && name.startsWith(prefix)) {
        yield name;
      }
    }
  }

  #translate(err: unknown, op: string, name: string): unknown {
    if (err instanceof FerryError) return err;
    const e = err as NodeJS.ErrnoException;
    if ((op === 'read' || op === 'stat') && isMissing(e)) return objectMissing(this.location, name);
    if (typeof e?.code !== 'string') return err;
    // Node's message already starts with the code ("ENOSPC: no space left on device, write").
    const what = e.message.startsWith(`${e.code}:`) ? e.message : `${e.code}: ${e.message}`;
    const hint =
      e.code === 'ENOSPC' || e.code === 'EDQUOT'
        ? '; the disk is full: free space there (or move the vault) and run the same command again, what is stored is kept'
        : e.code === 'EACCES' || e.code === 'EPERM'
          ? `; permission denied: run as a user who may ${op === 'read' || op === 'stat' || op === 'list' ? 'read' : 'write'} there`
          : e.code === 'EROFS'
            ? `; the file system is read-only: ${op === 'read' || op === 'stat' || op === 'list' ? 'mount it readable' : 'mount it read-write (or copy the vault to a writable one)'} and run the same command again`
            : '';
    return new FerryError('BACKEND_IO', `cannot ${op} object ${name} in ${this.location}: ${what}${hint}`, {
      object: name,
      location: this.location,
      errno: e.code,
    });
  }
}

/**
 * link() of the temporary this process just made fails with EPERM (or
 * ENOTSUP, EMLINK) only where the file system has no hard links: FAT and
 * exFAT. Said so, not as "permission denied".
 */
function noHardLinks(location: string): (err: NodeJS.ErrnoException) => never {
  return (err) => {
    if (linkRefused(err)) {
      throw new FerryError(
        'VAULT_NO_HARDLINKS',
        `${location} is on a file system without hard links (FAT, exFAT): a vault writes every object atomically through them; put the vault on ext4, xfs, btrfs or NTFS (seed disks and restore targets may be exFAT)`,
        { location, errno: err.code },
      );
    }
    throw err;
  };
}

/** fsync of a folder; file systems that cannot (EINVAL, ENOTSUP: some FUSE ones) are taken at their word, as git and SQLite do. */
async function fsyncDir(dir: string): Promise<void> {
  try {
    await fsyncPath(dir, fsc.O_DIRECTORY);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw err;
  }
}

async function fsyncPath(path: string, flags = 0): Promise<void> {
  const fh = await fs.open(path, fsc.O_RDONLY | flags);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function isMissing(err: unknown): boolean {
  const c = (err as NodeJS.ErrnoException)?.code;
  return c === 'ENOENT' || c === 'ENOTDIR' || c === 'EISDIR';
}

/** Whether `dir` exists and is empty (or does not exist): where `ferry init` may create a vault. */
export async function dirState(dir: string): Promise<'missing' | 'empty' | 'nonEmpty' | 'notADirectory'> {
  const denied = (err: unknown) => {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM') return err;
    return new FerryError('VAULT_NO_ACCESS', `${dir}: permission denied; run ferry as a user who may read the vault's folder (and write in it, to change the vault)`, { location: dir, errno: code });
  };
  try {
    const st = await fs.stat(dir);
    if (!st.isDirectory()) return 'notADirectory';
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'missing';
    if (code === 'ENOTDIR') return 'notADirectory'; // a file above it
    throw denied(err);
  }
  // a freshly made ext4 file system holds only lost+found, a drive formatted
  // by Windows only System Volume Information: empty for a vault
  const names = (await fs.readdir(dir).catch((err) => Promise.reject(denied(err)))).filter((n) => n !== 'lost+found' && n !== 'System Volume Information');
  return names.length === 0 ? 'empty' : 'nonEmpty';
}
