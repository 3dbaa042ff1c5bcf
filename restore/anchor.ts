// Paths a restore can use without following a symlink on the way.
//
// A restore runs as root and may write into folders other users can write
// (a home folder in its original place). Between the moment it looks at a
// folder and the moment it writes in it, such a user can swap the folder
// for a symlink to /etc: every call by full path would then write there.
// So each folder a restore writes in is opened once, as itself (O_PATH |
// O_DIRECTORY | O_NOFOLLOW, relative to its own parent's descriptor), and
// every call names its entry through that descriptor:
// /proc/<pid>/fd/<folder>/<name>. The kernel looks up only <name> in the
// folder the descriptor holds, wherever it has been moved since and
// whatever now stands at its old path, as openat(2) would. Other processes
// of this user (setfattr, the time helper) can use the same names.
//
// A symlink on the way is refused (ENOTDIR, "in the way"), except, when
// restoring to the original places, one that root made in a folder only
// root can write (/home -> /data/home): nobody else can have put it there.
//
// Descriptors stay open until close(): a name handed to the writer thread
// or queued for a helper must keep naming the same folder. The caller closes
// them at points where nothing queued uses them any more (when `count`
// grows large, and at the end).
import { closeSync, constants as C, existsSync, fstatSync, lstatSync, openSync, readdirSync, readFileSync, rmdirSync, unlinkSync } from 'node:fs';
import { parentPath } from '../format/volume/catalog.js';

/** O_PATH (Linux, the same value on x86-64 and arm64; not in fs.constants). */
export const O_PATH = process.platform === 'linux' && (process.arch === 'x64' || process.arch === 'arm64') ? 0o10000000 : null;

const SLASH = 0x2f;

export class Anchored {
  readonly #root: Buffer;
  /** Open folders by path (latin1), and the path each descriptor stands for (for messages). */
  readonly #fds = new Map<string, number>();
  readonly #names = new Map<number, Buffer>();
  /** Descriptors no path maps to any more (folders moved or removed), closed with the rest. */
  readonly #dropped: number[] = [];
  readonly #prefix: string;
  readonly #trustRootLinks: boolean;
  /** The root's descriptor: opened once and kept until dispose(), so the target is looked up by path only once. */
  #rootFd: number | null = null;
  /** Off where there is no O_PATH or no /proc: names are plain paths (the old way). */
  readonly enabled: boolean;

  /**
   * `root`: the restore's target (`--to`, followed if it is a symlink: the
   * user's choice) or `/` for original places.
   */
  constructor(root: Buffer) {
    this.#root = root;
    this.#prefix = `/proc/${process.pid}/fd/`;
    this.#trustRootLinks = root.length === 1 && root[0] === SLASH;
    this.enabled = O_PATH !== null && existsSync(this.#prefix);
  }

  /** Descriptors open now. */
  get count(): number {
    return this.#fds.size + this.#dropped.length;
  }

  /** The name to use for `p` (the target itself, or an entry inside it) in any call. */
  at(p: Buffer): Buffer {
    // the target itself and the folders above it (made when missing) are the user's choice: by path
    if (!this.enabled || !this.#inside(p)) return p;
    const slash = p.lastIndexOf(SLASH);
    const last = this.#last;
    // (entries come folder by folder: the last folder's name prefix serves most calls, with no string made)
    if (last && last.dir.length === (slash || 1) && p.compare(last.dir, 0, last.dir.length, 0, last.dir.length) === 0) return concat2(last.prefix, p, slash + 1);
    const dir = parentPath(p)!;
    const prefix = Buffer.from(`${this.#prefix}${this.#dirFd(dir)}/`);
    this.#last = { dir, prefix };
    return concat2(prefix, p, slash + 1);
  }
  /** The folder `at` named last, and its /proc/<pid>/fd/<n>/ prefix: forgotten whenever descriptors change. */
  #last: { dir: Buffer; prefix: Buffer } | null = null;

  /**
   * Whether `p` (inside the root) is a symlink to follow as a folder: one
   * root made in a folder only root can write, when restoring to the
   * original places (see the top of this file).
   */
  trustedLink(p: Buffer): boolean {
    if (!this.enabled || !this.#inside(p)) return false;
    return this.#trusted(this.at(p), p);
  }

  /**
   * Whether only root can add, remove or rename entries in the folder that
   * holds `p` (root's, no group or other write): then nobody can put
   * another file at `p`'s name meanwhile. Always true when disabled.
   */
  rootOnlyParent(p: Buffer): boolean {
    if (!this.enabled || !this.#inside(p)) return true;
    const st = fstatSync(this.#dirFd(parentPath(p)!));
    return st.uid === 0 && (st.mode & 0o022) === 0;
  }

  /** `dir` (and what is under it) was moved or removed: the next use opens what stands there then. */
  forget(dir: Buffer): void {
    this.#last = null;
    const key = dir.toString('latin1');
    for (const [k, fd] of this.#fds) {
      if (k === key || (k.startsWith(key) && k.charCodeAt(key.length) === SLASH)) {
        this.#fds.delete(k);
        this.#dropped.push(fd);
      }
    }
  }

  /**
   * Closes every folder's descriptor but the root's: only when no name
   * handed out is still waiting to be used.
   */
  close(): void {
    this.#last = null;
    for (const fd of [...this.#fds.values(), ...this.#dropped]) {
      if (fd === this.#rootFd) continue;
      try {
        closeSync(fd);
      } catch {
        /* closed already */
      }
    }
    this.#fds.clear();
    this.#names.clear();
    this.#dropped.length = 0;
    if (this.#rootFd !== null) {
      this.#fds.set(this.#root.toString('latin1'), this.#rootFd);
      this.#names.set(this.#rootFd, this.#root);
    }
  }

  /** Closes every descriptor, the root's too: at the end of the restore. */
  dispose(): void {
    this.#rootFd = null; // close() skips it no more
    this.close();
  }

  /** `p` as a path for messages: a /proc/<pid>/fd/<n> name put back as the folder it stands for. */
  displayPath(p: Buffer): Buffer {
    if (!this.enabled || !p.subarray(0, this.#prefix.length).equals(Buffer.from(this.#prefix))) return p;
    const rest = p.subarray(this.#prefix.length);
    const slash = rest.indexOf(SLASH);
    const fd = Number((slash < 0 ? rest : rest.subarray(0, slash)).toString('latin1'));
    const name = this.#names.get(fd);
    if (!name) return p;
    if (slash < 0) return name;
    const tail = rest.subarray(slash + 1);
    return name.length === 1 && name[0] === SLASH ? Buffer.concat([name, tail]) : Buffer.concat([name, Buffer.from('/'), tail]);
  }

  /** `text` with every /proc/<pid>/fd/<n> put back as the folder it stands for. */
  display(text: string): string {
    if (!this.enabled || !text.includes(this.#prefix)) return text;
    return text.split(this.#prefix).map((part, i) => {
      if (i === 0) return part;
      const m = /^(\d+)/.exec(part);
      const name = m ? this.#names.get(Number(m[1])) : undefined;
      return name ? name.toString('utf8') + part.slice(m![1].length) : this.#prefix + part;
    }).join('');
  }

  /** Whether `p` lies strictly inside the root. */
  #inside(p: Buffer): boolean {
    const r = this.#root;
    if (r.length === 1 && r[0] === SLASH) return p.length > 1 && p[0] === SLASH;
    return p.length > r.length + 1 && p[r.length] === SLASH && p.subarray(0, r.length).equals(r);
  }

  #dirFd(dir: Buffer): number {
    const key = dir.toString('latin1');
    const have = this.#fds.get(key);
    if (have !== undefined) return have;
    let fd: number;
    if (dir.equals(this.#root)) {
      fd = openSync(dir, O_PATH! | C.O_DIRECTORY);
      this.#rootFd = fd;
    } else {
      const name = this.at(dir);
      try {
        fd = openSync(name, O_PATH! | C.O_DIRECTORY | C.O_NOFOLLOW);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if ((code !== 'ENOTDIR' && code !== 'ELOOP') || !this.#trusted(name, dir)) {
          if (code === 'ENOTDIR' || code === 'ELOOP') throw Object.assign(new Error(`${dir.toString('utf8')} is in the way (not a directory)`), { code: 'ENOTDIR' });
          throw err;
        }
        fd = openSync(name, O_PATH! | C.O_DIRECTORY);
      }
    }
    this.#fds.set(key, fd);
    this.#names.set(fd, dir);
    return fd;
  }

  /** A symlink only root can have put there (restores to the original places only). */
  #trusted(name: Buffer, dir: Buffer): boolean {
    if (!this.#trustRootLinks) return false;
    const st = lstatSync(name, { throwIfNoEntry: false });
    if (!st?.isSymbolicLink() || st.uid !== 0) return false;
    const parent = parentPath(dir)!;
    const pst = fstatSync(this.#dirFd(parent));
    return pst.uid === 0 && (pst.mode & 0o022) === 0;
  }
}

/** `a` then `b` from byte `from`, in one allocation. */
function concat2(a: Buffer, b: Buffer, from: number): Buffer {
  const out = Buffer.allocUnsafe(a.length + b.length - from);
  a.copy(out, 0);
  b.copy(out, a.length, from);
  return out;
}

/**
 * rm -rf of `p` that never follows a symlink, also not one another user puts
 * in place of a folder inside while it runs (rm by full paths would then
 * delete in what the symlink points to): each folder is opened as itself
 * (O_NOFOLLOW) and its entries are removed through its descriptor. `p` is a
 * name from Anchored.at() or a plain path; a missing `p` is no error.
 */
export function removeTree(p: Buffer): void {
  const st = lstatSync(p, { throwIfNoEntry: false });
  if (!st) return;
  if (!st.isDirectory()) {
    unlinkQuiet(p);
    return;
  }
  let fd: number;
  try {
    fd = openSync(p, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    // replaced by a symlink or a file since the lstat: that goes, not what it points to
    if (code === 'ENOTDIR' || code === 'ELOOP') return unlinkQuiet(p);
    throw err;
  }
  try {
    const base = Buffer.from(`/proc/${process.pid}/fd/${fd}/`);
    for (const name of readdirSync(base, { encoding: 'buffer' })) removeTree(Buffer.concat([base, name]));
  } finally {
    closeSync(fd);
  }
  try {
    rmdirSync(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

function unlinkQuiet(p: Buffer): void {
  try {
    unlinkSync(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

let softLimit: number | null = null;
/** The soft limit of open files of this process (Infinity when /proc cannot say). */
export function openFilesLimit(): number {
  if (softLimit === null) {
    softLimit = Infinity;
    try {
      const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
      if (m) softLimit = Number(m[1]);
    } catch {
      /* no /proc */
    }
  }
  return softLimit;
}
