// The file-tree walker of files-kind items. It yields, in a deterministic
// depth-first order (names sorted by bytes, each directory before its
// contents), one entry per file, directory, symlink, device, fifo and socket
// under the given sources, with the metadata format/volume stores and, for
// regular files, a way to read their data.
//
// Pipeline (bounded at every stage, so memory stays flat):
//   lstat walk -> batches of ~4000 entries get their xattrs from one
//   `getfattr` spawn (Node has no xattr API) -> a read-ahead window where
//   small files are read concurrently -> the consumer.
// Paths are bytes (Buffers) throughout: names need not be UTF-8.
import { spawn, type ChildProcess } from 'node:child_process';
import { lstat, open, readdir, readlink, realpath, stat, type FileHandle } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { posix } from 'node:path';
import { constants as C, type BigIntStats } from 'node:fs';
import type { EntryMeta, EntryType, Xattr } from '../format/volume/catalog.js';
import type { DataPiece, EntryWarning, SourceEntry } from '../format/volume/writer.js';
import { FerryError, checkArg } from '../format/errors.js';
export { escapeOctal, formatSetfattr } from './setfattr.js';
import { isDir, scanDir, walkStat, type WalkStat } from './dirscan.js';
import { errnoText } from '../format/native.js';
import { pseudoFilesystems } from './pseudofs.js';
import { READ_FLAGS, READ_FLAGS_ATIME, SOURCE_CHANGED, SmallFileReader, changedSince, replyError, symlinkSince, writtenSince } from './reader.js';
import { printable } from '../format/printable.js';

export type { EntryWarning } from '../format/volume/writer.js';

export interface WalkProgress {
  /** Entries yielded so far. */
  files: number;
  /** File bytes read so far. */
  bytes: number;
}

export interface WalkOptions {
  /** Glob patterns (restic style); an excluded directory is not entered. */
  excludes?: string[];
  /** Do not descend into directories on another filesystem than their source root (the mount point itself is kept). */
  oneFileSystem?: boolean;
  /** Folders left out, with all they hold, by identity ("dev:ino", as lstat gives them with bigint): a seed's own disks, the vault. */
  skipDirs?: Set<string>;
  /** Collect extended attributes (and so POSIX ACLs) with getfattr; true by default. */
  xattrs?: boolean;
  /** Files read at the same time (default 8). */
  concurrency?: number;
  /** Bytes of small files read ahead of the consumer (default 64 MiB). */
  readAhead?: number;
  /** Threads that read small files with synchronous calls (default 2; 0 reads them through the libuv pool). */
  readerThreads?: number;
  /** The reader threads hash each small file in chunks of this size as they read it (DataPiece.hashed). */
  hashChunk?: number;
  onWarning?: (w: EntryWarning) => void;
  /** What was left out by design, not by failure (a /proc or /sys mount's contents): no warning. */
  onNote?: (w: EntryWarning) => void;
  onProgress?: (p: WalkProgress) => void;
}

/** An entry as the walker yields it; `content` reads a regular file's data (holes left out). */
export interface Entry extends SourceEntry {
  content?: () => AsyncIterable<DataPiece>;
}

/** A read that failed after the walker already reported it through onWarning. */
export class SourceReadError extends FerryError {
  readonly reported = true;
  constructor(path: Buffer, err: unknown) {
    super('SOURCE_READ', `cannot read ${printable(path)}: ${(err as Error)?.message ?? String(err)}`, { path: printable(path) });
  }
}

const SLASH = 0x2f;
const HOLE_GRAIN = 64 * 1024;
const READ_SIZE = 1024 * 1024;
const SMALL_FILE = 1024 * 1024;
const ZERO = Buffer.alloc(HOLE_GRAIN);

export { printable };

// ---------------------------------------------------------------- globs

/**
 * Compiles restic-style patterns into one predicate over absolute paths.
 * A pattern starting with "/" matches from the root; any other pattern may
 * match at any depth ("*.tmp" matches every .tmp file; "cache/x" matches
 * "/home/a/cache/x"). "*" and "?" stay inside one component, "**" spans any
 * number of them, "[a-z]", "[!abc]" are classes and "\" escapes. Matching is
 * on bytes; "?" takes one UTF-8 character.
 */
export function compileGlobs(patterns: string[]): (path: Buffer) => boolean {
  const compiled = patterns.filter((p) => p !== '').map(compileGlob);
  if (compiled.length === 0) return () => false;
  return (path) => {
    const comps = splitPath(path);
    return compiled.some((g) => g(comps));
  };
}

/**
 * For a walk: whether some pattern could match an entry right inside the
 * folder at `path` (and so the folder's entries must be filtered before
 * they are lstat'd). Conservative: an unanchored pattern or one with "**"
 * can match at any depth; an anchored one of k components only at depth k.
 */
export function compileChildExcluder(patterns: string[]): (folder: Buffer) => boolean {
  const depths = new Set<number>();
  let anywhere = false;
  for (const p of patterns) {
    if (p === '') continue;
    const latin = Buffer.from(p).toString('latin1');
    const parts = latin.split('/').filter((c) => c !== '');
    if (!latin.startsWith('/') || parts.includes('**')) anywhere = true;
    else depths.add(parts.length);
  }
  return (folder) => anywhere || depths.has(splitPath(folder).length + 1);
}

export function globMatch(pattern: string, path: Buffer | string): boolean {
  return compileGlob(pattern)(splitPath(Buffer.isBuffer(path) ? path : Buffer.from(path)));
}

/** Whether `path` or one of its ancestors matches: a selected directory selects its subtree. */
export function compileSelectors(patterns: string[]): (path: Buffer) => boolean {
  const compiled = patterns.filter((p) => p !== '').map(compileGlob);
  return (path) => {
    const comps = splitPath(path);
    for (let n = comps.length; n >= 0; n--) {
      const pre = comps.slice(0, n);
      if (compiled.some((g) => g(pre))) return true;
    }
    return false;
  };
}

function splitPath(path: Buffer): string[] {
  return path.toString('latin1').split('/').filter((c) => c !== '');
}

function compileGlob(pattern: string): (comps: string[]) => boolean {
  const bytes = Buffer.from(pattern).toString('latin1');
  const anchored = bytes.startsWith('/');
  const parts = bytes.split('/').filter((c) => c !== '');
  const res = parts.map((p) => (p === '**' ? null : componentRegExp(p)));
  const match = (pi: number, comps: string[], si: number): boolean => {
    if (pi === parts.length) return si === comps.length;
    const re = res[pi];
    if (re === null) {
      for (let k = si; k <= comps.length; k++) if (match(pi + 1, comps, k)) return true;
      return false;
    }
    return si < comps.length && re.test(comps[si]) && match(pi + 1, comps, si + 1);
  };
  return (comps) => {
    if (anchored) return match(0, comps, 0);
    for (let s = 0; s <= comps.length; s++) if (match(0, comps, s)) return true;
    return false;
  };
}

const UTF8_CHAR = '(?:[\\x00-\\x7f\\xc0-\\xff][\\x80-\\xbf]*|[\\x80-\\xbf])';

function componentRegExp(p: string): RegExp {
  let re = '';
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === '*') re += '.*';
    else if (c === '?') re += UTF8_CHAR;
    else if (c === '\\' && i + 1 < p.length) re += escapeRe(p[++i]);
    else if (c === '[') {
      const end = p.indexOf(']', i + 2);
      if (end < 0) {
        re += '\\[';
        continue;
      }
      let body = p.slice(i + 1, end);
      let neg = false;
      if (body[0] === '!' || body[0] === '^') {
        neg = true;
        body = body.slice(1);
      }
      re += '[' + (neg ? '^' : '') + body.replace(/[\\\]^]/g, (m) => '\\' + m) + ']';
      i = end;
    } else re += escapeRe(c);
  }
  return new RegExp('^' + re + '$', 's');
}

function escapeRe(c: string): string {
  return c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

// ---------------------------------------------------------------- xattrs through getfattr/setfattr

/** Parses `getfattr -d -e base64 --absolute-names` output: path (latin1 of its bytes) -> xattrs. */
export function parseGetfattr(out: Buffer): Map<string, Xattr[]> {
  const map = new Map<string, Xattr[]>();
  let cur: Xattr[] | null = null;
  let start = 0;
  while (start < out.length) {
    let end = out.indexOf(0x0a, start);
    if (end < 0) end = out.length;
    const line = out.subarray(start, end);
    start = end + 1;
    if (line.length === 0) {
      cur = null;
      continue;
    }
    if (line.subarray(0, 8).toString('latin1') === '# file: ') {
      cur = [];
      map.set(unescapeOctal(line.subarray(8)).toString('latin1'), cur);
      continue;
    }
    if (!cur || line[0] === 0x23) continue;
    const eq = line.indexOf(0x3d);
    const name = unescapeOctal(eq < 0 ? line : line.subarray(0, eq)).toString('latin1');
    const raw = eq < 0 ? '' : line.subarray(eq + 1).toString('latin1');
    let value: Buffer;
    if (raw.startsWith('0s')) value = Buffer.from(raw.slice(2), 'base64');
    else if (raw.startsWith('0x')) value = Buffer.from(raw.slice(2), 'hex');
    else if (raw.startsWith('"') && raw.endsWith('"') && raw.length >= 2) value = unescapeOctal(Buffer.from(raw.slice(1, -1), 'latin1'));
    else value = Buffer.from(raw, 'latin1');
    cur.push({ name, value });
  }
  for (const [k, v] of map) if (v.length === 0) map.delete(k);
  return map;
}

function unescapeOctal(b: Buffer): Buffer {
  if (!b.includes(0x5c)) return Buffer.from(b);
  const out: number[] = [];
  for (let i = 0; i < b.length; i++) {
    if (b[i] === 0x5c && i + 3 < b.length + 0 && /^[0-7]{3}$/.test(b.toString('latin1', i + 1, i + 4))) {
      out.push(parseInt(b.toString('latin1', i + 1, i + 4), 8));
      i += 3;
    } else out.push(b[i]);
  }
  return Buffer.from(out);
}

/** Runs a command with `input` on stdin; resolves with stdout, stderr and the exit code (never rejects on exit codes). */
export function run(cmd: string, args: string[], input?: Buffer): Promise<{ code: number | null; stdout: Buffer; stderr: Buffer; missing: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let missing = false;
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') missing = true;
    });
    child.stdin.on('error', () => {});
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err), missing }));
    child.stdin.end(input ?? Buffer.alloc(0));
  });
}

/** Extended attributes of many paths in one spawn (xargs splits the list to fit the command line). */
export async function getXattrs(paths: Buffer[]): Promise<{ map: Map<string, Xattr[]>; missingTool: boolean }> {
  if (paths.length === 0) return { map: new Map(), missingTool: false };
  const input = Buffer.concat(paths.flatMap((p) => [p, Buffer.from([0])]));
  const r = await run('xargs', ['-0', '-r', 'getfattr', '-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', '--'], input);
  const missingTool = r.missing || r.code === 127;
  return { map: parseGetfattr(r.stdout), missingTool };
}

// ---------------------------------------------------------------- the walk

function typeOf(st: WalkStat): EntryType {
  switch (st.mode & C.S_IFMT) {
    case C.S_IFREG: return 'file';
    case C.S_IFDIR: return 'dir';
    case C.S_IFLNK: return 'symlink';
    case C.S_IFCHR: return 'chardev';
    case C.S_IFBLK: return 'blockdev';
    case C.S_IFIFO: return 'fifo';
    default: return 'socket';
  }
}

function metaOf(path: Buffer, st: WalkStat, implicit = false): Entry {
  return {
    path,
    type: typeOf(st),
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
    atimeNs: st.atimeNs,
    mtimeNs: st.mtimeNs,
    ctimeNs: st.ctimeNs,
    size: st.size,
    ino: st.ino,
    dev: st.dev,
    nlink: st.nlink,
    rdev: st.rdev,
    target: null,
    xattrs: [],
    implicit,
  };
}

const allocated = new WeakMap<Entry, bigint>();
/** Hard links of regular files (not of symlinks, devices ...): they can stand in for their group's first file. */
const fileLinks = new WeakSet<Entry>();
/** Where an entry really is, when its source is recorded under another path (MappedSource). */
const realPaths = new WeakMap<Entry, Buffer>();
const realOf = (e: Entry): Buffer => realPaths.get(e) ?? e.path;

/** A source read at `path` but recorded under `as` (e.g. generated files under a virtual folder). */
export interface MappedSource {
  path: string | Buffer;
  as: string | Buffer;
}

interface Root {
  real: Buffer;
  as: Buffer;
  /** Given as `link/` or `link/.`: a symlink there stands for the folder it points to. */
  follow?: boolean;
}

/**
 * Whether a source path ends in "/" or "/." (or is "."): the kernel then
 * follows a symlink in its last place, so `link/` names the folder the link
 * points to; `link` names the link itself. (".." is resolved in the text,
 * as before.)
 */
function endsAsFolder(p: Buffer | string): boolean {
  return /(^|\/)\.?\/*$/.test((Buffer.isBuffer(p) ? p : Buffer.from(p)).toString('latin1'));
}

function join(dir: Buffer, name: Buffer): Buffer {
  return dir.length === 1 && dir[0] === SLASH ? Buffer.concat([dir, name]) : Buffer.concat([dir, Buffer.from('/'), name]);
}

/** Absolute, normalized path bytes ("." and ".." resolved textually, no trailing slash). */
export function normalizeSource(p: Buffer | string): Buffer {
  let s = (Buffer.isBuffer(p) ? p : Buffer.from(p)).toString('latin1');
  if (!s.startsWith('/')) s = Buffer.from(process.cwd()).toString('latin1') + '/' + s;
  s = posix.normalize(s);
  if (s.length > 1 && s.endsWith('/')) s = s.slice(0, -1);
  return Buffer.from(s, 'latin1');
}

/**
 * The first symlink on the way from `root` down to `p` (p itself counts when
 * it is to be followed, given as `p/`), or null: a nested source the walk of
 * `root` would not reach as the folder it names.
 */
async function symlinkOnTheWay(root: Buffer, p: Buffer, followLast: boolean): Promise<Buffer | null> {
  for (let at = root.length === 1 ? 1 : root.length + 1; at <= p.length; at++) {
    if (at < p.length && p[at] !== SLASH) continue;
    if (at === p.length && !followLast) break;
    const prefix = p.subarray(0, at);
    const st = await lstat(prefix).catch(() => null);
    if (!st) return null; // missing: the walk warns about it
    if (st.isSymbolicLink()) return prefix;
  }
  return null;
}

function isUnder(p: Buffer, root: Buffer): boolean {
  if (root.length === 1) return true;
  return p.length > root.length && p[root.length] === SLASH && p.subarray(0, root.length).equals(root);
}

function errText(err: unknown): string {
  return (err as Error)?.message ?? String(err);
}

/**
 * A folder the walk listed that could not be read when it came to it: gone
 * (ENOENT), turned into a symlink or something else (ELOOP, ENOTDIR: the
 * link is not followed), another folder between listing and stat (ESTALE),
 * or unreadable. Its entry is stored; what it holds is not.
 */
function folderLost(path: Buffer, errno: number): EntryWarning {
  const { ENOENT, ELOOP, ENOTDIR, ESTALE } = osConstants.errno;
  if (errno === ENOENT) return { code: 'SOURCE_VANISHED', message: `${printable(path)} was removed while it was read; what it held is left out`, path };
  if (errno === ELOOP || errno === ENOTDIR || errno === ESTALE) {
    return { code: SOURCE_CHANGED, message: `${printable(path)} was replaced since it was listed; what it holds now is left out (back it up again)`, path };
  }
  return { code: 'SOURCE_READ', message: `cannot list ${printable(path)}: ${errnoText(errno, 'scandir', printable(path))}`, path };
}

async function* lstatWalk(roots: Root[], opts: WalkOptions, warn: (w: EntryWarning) => void): AsyncGenerator<Entry> {
  const excluded = compileGlobs(opts.excludes ?? []);
  const mayExcludeIn = compileChildExcluder(opts.excludes ?? []);
  const concurrency = Math.max(1, opts.concurrency ?? 8) * 4;
  const links = new Map<string, { path: Buffer; left: number }>();
  const emittedAncestors = new Set<string>();

  /** An entry's hard links and allocated size noted (nothing to wait for). */
  const noted = (e: Entry, st: WalkStat): Entry => {
    if (e.type !== 'dir' && e.nlink > 1) {
      const key = `${st.dev}:${st.ino}`;
      const first = links.get(key);
      if (first) {
        if (e.type === 'file') fileLinks.add(e);
        e.type = 'hardlink';
        e.target = first.path;
        if (--first.left <= 0) links.delete(key);
      } else links.set(key, { path: e.path, left: e.nlink - 1 });
    }
    allocated.set(e, st.blocks);
    return e;
  };

  /** A symlink's target read, then noted; null (said so) when it cannot be read. */
  const symlinkNoted = async (e: Entry, st: WalkStat): Promise<Entry | null> => {
    try {
      e.target = await readlink(realOf(e), { encoding: 'buffer' });
    } catch (err) {
      warn({ code: 'SOURCE_READ', message: `cannot read the symlink ${printable(e.path)}: ${errText(err)}`, path: e.path });
      return null;
    }
    return noted(e, st);
  };

  const pseudoOf = pseudoFilesystems();

  /** A folder being walked: its entries one by one (a promise only where one must be lstat'd here), then null. */
  interface Frame {
    next(): [Buffer, WalkStat | Error] | null | Promise<[Buffer, WalkStat | Error] | null>;
    /** The folder's device: a child on another is a mount point. */
    dev: bigint;
  }
  const lstatOf = (p: Buffer): Promise<WalkStat | Error> => lstat(p, { bigint: true }).then(walkStat, (err: unknown) => err as Error);

  /**
   * The folder at `path` (found as `st`) opened for its entries, in name
   * order; null when it is not walked (not a folder, another file system, a
   * pseudo file system, or it cannot be listed: said so).
   */
  const openFolder = async (path: Buffer, stored: Buffer, st: WalkStat, rootDev: bigint, root: Root, parentDev: bigint | undefined): Promise<Frame | null> => {
    if (opts.oneFileSystem && st.dev !== rootDev) return null;
    // a mount point met on the way: is it /proc, /sys or their kind? (a source named is walked as asked)
    const pseudo = parentDev !== undefined && st.dev !== parentDev ? await pseudoOf(path, st.dev) : null;
    if (pseudo) {
      opts.onNote?.({ code: 'SOURCE_PSEUDO_FS', message: `${printable(stored)} is a ${pseudo} filesystem (the kernel's live state, not files): kept as an empty folder`, path: stored });
      return null;
    }
    const asOf = (p: Buffer) => (root.real === root.as ? p : asStored(root, p));
    // the folder listed and its entries lstat'd in one call of the addon (two where an exclude could match an entry: one to list, one to stat what is kept)
    const scanned = await scanDir(path, mayExcludeIn(asOf(path)) ? (name) => !excluded(asOf(join(path, name))) : undefined);
    if (scanned && 'errno' in scanned) {
      warn(folderLost(path, scanned.errno));
      return null;
    }
    if (scanned) {
      // (not checked against the folder's lstat: an automount point lstats as itself and opens as what is mounted there)
      let i = 0;
      return {
        dev: st.dev,
        next: () => {
          if (i >= scanned.count) return null;
          const p = join(path, scanned.name(i));
          const s = scanned.stat(i++);
          return s ? [p, s] : lstatOf(p).then((x): [Buffer, WalkStat | Error] => [p, x]);
        },
      };
    }
    let names: Buffer[];
    try {
      names = await readdir(path, { encoding: 'buffer' });
    } catch (err) {
      warn({ code: 'SOURCE_READ', message: `cannot list ${printable(path)}: ${errText(err)}`, path });
      return null;
    }
    names.sort(Buffer.compare);
    const children = names.map((n) => join(path, n)).filter((p) => !excluded(asOf(p)));
    // lstat a window of children at a time, then descend in order
    let i = 0;
    let stats: (WalkStat | Error)[] = [];
    return {
      dev: st.dev,
      next: async () => {
        if (i >= children.length) return null;
        if (i % concurrency === 0) stats = await Promise.all(children.slice(i, i + concurrency).map(lstatOf));
        const k = i++;
        return [children[k], stats[k % concurrency]];
      },
    };
  };

  /**
   * The tree under `path0` (found as `st0`) in pre-order, folders before
   * their entries, each folder's entries in name order: one generator and
   * a stack of open folders (a generator per folder and per entry, yielding
   * through every level above, made a seed's walk the largest source of
   * garbage on its main thread).
   */
  async function* visit(path0: Buffer, st0: WalkStat, rootDev: bigint, root: Root): AsyncGenerator<Entry> {
    const stack: Frame[] = [];
    let path: Buffer | null = path0;
    let s: WalkStat | Error = st0;
    let parentDev: bigint | undefined;
    for (;;) {
      if (path !== null) {
        if (s instanceof Error) warn({ code: 'SOURCE_VANISHED', message: `${printable(path)} cannot be read: ${errText(s)}`, path });
        else if (!(opts.skipDirs?.size && isDir(s) && opts.skipDirs.has(`${s.dev}:${s.ino}`))) {
          const stored = root.real === root.as ? path : asStored(root, path);
          const m = metaOf(stored, s);
          if (stored !== path) realPaths.set(m, path);
          const e = m.type === 'symlink' ? await symlinkNoted(m, s) : noted(m, s);
          if (e) {
            yield e;
            if (e.type === 'dir') {
              const f = await openFolder(path, stored, s, rootDev, root, parentDev);
              if (f) stack.push(f);
            }
          }
        }
      }
      // the next entry: of the innermost folder with one left
      path = null;
      while (path === null && stack.length > 0) {
        const top = stack[stack.length - 1];
        let n = top.next();
        if (n instanceof Promise) n = await n;
        if (n === null) stack.pop();
        else {
          [path, s] = n;
          parentDev = top.dev;
        }
      }
      if (path === null) return;
    }
  }

  for (const root of roots) {
    // ancestors first, so the stored tree is complete from "/"
    const chain: Buffer[] = [];
    for (let p = root.as; p.length > 1; ) {
      const i = p.lastIndexOf(SLASH);
      p = i <= 0 ? Buffer.from('/') : p.subarray(0, i);
      chain.unshift(p);
    }
    for (const a of chain) {
      const key = a.toString('latin1');
      if (emittedAncestors.has(key)) continue;
      emittedAncestors.add(key);
      let st: BigIntStats | null = null;
      try {
        st = await stat(a, { bigint: true });
      } catch {
        /* a virtual folder's parent: made up below */
      }
      if (st?.isDirectory()) {
        const e = metaOf(Buffer.from(a), walkStat(st), true);
        yield e;
      } else {
        const now = BigInt(Date.now()) * 1_000_000n;
        yield {
          path: Buffer.from(a), type: 'dir', mode: 0o755, uid: 0, gid: 0, atimeNs: now, mtimeNs: now, ctimeNs: now,
          size: 0, ino: 0n, dev: 0n, nlink: 1, rdev: 0n, target: null, xattrs: [], implicit: true,
        };
      }
    }
    if (excluded(root.as)) continue;
    let st: BigIntStats;
    let from = root;
    try {
      st = await lstat(root.real, { bigint: true });
      if (root.follow && st.isSymbolicLink()) {
        // `link/`: the folder's contents, stored under the name given (as
        // tar and rsync do); the kernel's own error when it is no folder
        await stat(Buffer.concat([root.real, Buffer.from('/')]), { bigint: true });
        from = { real: await realpath(root.real, { encoding: 'buffer' }), as: root.as };
        st = await lstat(from.real, { bigint: true });
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why =
        code === 'ENOENT' ? 'does not exist (check the path)'
        : code === 'ENOTDIR' ? 'does not exist (a part of its path is a file, not a folder)'
        : code === 'EACCES' || code === 'EPERM' ? 'cannot be read (permission denied: run ferry as a user who may read it)'
        : `cannot be read: ${errText(err)}`;
      warn({ code: 'SOURCE_VANISHED', message: `source ${printable(root.real)} ${why}; left out`, path: root.real });
      continue;
    }
    emittedAncestors.add(root.as.toString('latin1'));
    // a source named inside /proc is walked as asked, but its files say 0 bytes and read as more: say so once
    if ((await pseudoOf(from.real, st.dev)) === 'proc') {
      warn({
        code: 'SOURCE_PSEUDO_FS',
        message: st.isDirectory()
          ? `${printable(root.as)} is on a proc filesystem: its files say they hold 0 bytes and are stored empty; copy what you need out of it into files and back those up`
          : `${printable(root.as)} is a file of a proc filesystem: it says it holds 0 bytes and is stored empty; copy it into a file and back that up`,
        path: root.as,
      });
    }
    yield* visit(from.real, walkStat(st), st.dev, from);
  }
}

/** Runs `src` ahead of its consumer by up to `n` items. */
export async function* ahead<T>(src: AsyncIterable<T>, n: number): AsyncGenerator<T> {
  const it = src[Symbol.asyncIterator]();
  const buf: T[] = [];
  let head = 0;
  let done = false;
  let stop = false;
  let failure = null as { err: unknown } | null;
  let wakeConsumer = null as (() => void) | null;
  let wakePump = null as (() => void) | null;
  const pump = (async () => {
    try {
      for (;;) {
        while (buf.length - head >= n && !stop) await new Promise<void>((r) => (wakePump = r));
        if (stop) break;
        const r = await it.next();
        if (r.done) break;
        buf.push(r.value);
        wakeConsumer?.();
      }
    } catch (err) {
      failure = { err };
    } finally {
      done = true;
      wakeConsumer?.();
    }
  })();
  try {
    for (;;) {
      if (head < buf.length) {
        const v = buf[head];
        // The consumer has it now: the buffer must not keep it (an entry
        // gets its content later, and that content may hold file data).
        buf[head++] = undefined as T;
        if (head > 1024 && head * 2 > buf.length) {
          buf.splice(0, head);
          head = 0;
        }
        wakePump?.();
        yield v;
        continue;
      }
      if (failure) throw (failure as { err: unknown }).err;
      if (done) return;
      await new Promise<void>((r) => (wakeConsumer = r));
      wakeConsumer = null;
    }
  } finally {
    stop = true;
    wakePump?.();
    await pump;
    await it.return?.(undefined as never)?.catch(() => {});
  }
}

const XATTR_BATCH = 4000;

async function* withXattrs(src: AsyncIterable<Entry>, warn: (w: EntryWarning) => void, enabled: boolean): AsyncGenerator<Entry[]> {
  let batch: Entry[] = [];
  let usable = enabled;
  const flush = async (): Promise<Entry[]> => {
    const b = batch;
    batch = [];
    if (!usable) return b;
    const { map, missingTool } = await getXattrs(b.map(realOf));
    if (missingTool) {
      usable = false;
      warn({ code: 'XATTRS_UNAVAILABLE', message: 'getfattr (package attr) is not installed: extended attributes and ACLs are not backed up' });
      return b;
    }
    for (const e of b) {
      const x = map.get(realOf(e).toString('latin1'));
      if (x) e.xattrs = x;
    }
    return b;
  };
  for await (const e of src) {
    batch.push(e);
    // One xargs + getfattr spawn per batch: a spawn costs this thread about
    // 7 ms (fork and exec run here), so batches are large.
    if (batch.length >= XATTR_BATCH) yield await flush();
  }
  if (batch.length) yield await flush();
}

/** Yields each item of each batch, letting go of it in the batch as it goes (the batch may outlive the item). */
async function* flatten<T>(src: AsyncIterable<T[]>): AsyncGenerator<T> {
  for await (const b of src) {
    for (let i = 0; i < b.length; i++) {
      const v = b[i];
      b[i] = undefined as T;
      yield v;
    }
  }
}

/** A small counting semaphore. */
class Limit {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}
  async take(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }
  give(): void {
    const w = this.waiting.shift();
    if (w) w();
    else this.free++;
  }
}

/** A source file that is no longer what the walk listed: left out, with a warning that says why. */
class SourceChanged extends FerryError {
  constructor(why: string) {
    super(SOURCE_CHANGED, why);
  }
}

/**
 * Opens a walked file to read its data, and checks that it is still that
 * file: a regular file with the inode the walk saw (see changedSince).
 * O_NOFOLLOW: a symlink put in its place is not followed; O_NONBLOCK: a fifo
 * is not waited on.
 */
async function openForRead(e: Entry, state: ReadState): Promise<{ fh: FileHandle; size: number }> {
  const path = realOf(e);
  let fh: FileHandle;
  try {
    try {
      fh = await open(path, READ_FLAGS);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
      fh = await open(path, READ_FLAGS_ATIME);
    }
  } catch (err) {
    const link = symlinkSince(err);
    throw link ? new SourceChanged(link.message) : err;
  }
  try {
    const st = await fh.stat({ bigint: true });
    const why = changedSince(st, e.dev, e.ino);
    if (why) throw new SourceChanged(why);
    if (writtenSince(st, e.mtimeNs, e.size)) changedAfterListing(e, state);
    return { fh, size: Number(st.size) };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/**
 * Read buffers (1 MiB), used again once the consumer is done with them.
 * Without this every byte read is a fresh buffer that only the garbage
 * collector frees, and it frees large buffers late: a walk would leave
 * hundreds of MiB behind it. A consumer hands a piece back by calling its
 * `release()` (the volume writer does, once the piece is copied or written);
 * one that does not just leaves that buffer to the garbage collector.
 */
class ReadBuffers {
  private readonly free: Buffer[] = [];
  constructor(private readonly max: number) {}
  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafe(READ_SIZE);
  }
  give(b: Buffer): void {
    // (one not kept is left to the collector, not freed: a consumer may still
    // read a released piece's length, and a reader thread's buffer is given
    // here by pieces that are views of it)
    if (this.free.length < this.max) this.free.push(b);
  }
}

/** A read buffer shared by the pieces cut from it; back to the pool when the last one is released. */
class Lease {
  private refs = 1;
  constructor(readonly buf: Buffer, private readonly pool: Pick<ReadBuffers, 'give'>) {}
  hold(): void {
    this.refs++;
  }
  drop(): void {
    if (--this.refs === 0) this.pool.give(this.buf);
  }
}

/** A piece of a leased buffer; releasing it more than once is harmless. */
function leasedPiece(offset: number, data: Buffer, lease: Lease): DataPiece {
  lease.hold();
  let held = true;
  return {
    offset,
    data,
    release: () => {
      if (held) {
        held = false;
        lease.drop();
      }
    },
  };
}

/**
 * Small files packed one after another into read buffers (slabs): a 4 KiB
 * file takes 4 KiB, not a buffer of its own. Files come back in the order
 * they were packed, so slabs free up in order too.
 */
class Slabs {
  private cur: Lease | null = null;
  private used = 0;
  constructor(private readonly pool: ReadBuffers) {}
  /** `size` bytes (at most READ_SIZE) and the lease that holds them (one reference, the caller's). */
  alloc(size: number): { data: Buffer; lease: Lease } {
    if (!this.cur || this.used + size > READ_SIZE) {
      this.cur?.drop();
      this.cur = new Lease(this.pool.take(), this.pool);
      this.used = 0;
    }
    const data = this.cur.buf.subarray(this.used, this.used + size);
    this.used += (size + 7) & ~7;
    this.cur.hold();
    return { data, lease: this.cur };
  }
  close(): void {
    this.cur?.drop();
    this.cur = null;
  }
}

/** Releases what a consumer will not get. */
function releaseAll(pieces: (DataPiece | null)[], from = 0): void {
  for (let i = from; i < pieces.length; i++) {
    pieces[i]?.release?.();
    pieces[i] = null;
  }
}

/** Splits a read buffer at 64 KiB-aligned all-zero grains: they are holes and are not stored. */
function dropZeroGrains(offset: number, data: Buffer, out: DataPiece[], lease: Lease): void {
  let runStart = -1;
  for (let i = 0; i < data.length; ) {
    const grainEnd = Math.min(data.length, Math.floor((offset + i) / HOLE_GRAIN) * HOLE_GRAIN + HOLE_GRAIN - offset);
    const g = data.subarray(i, grainEnd);
    const zero = g.equals(g.length === HOLE_GRAIN ? ZERO : ZERO.subarray(0, g.length));
    if (!zero && runStart < 0) runStart = i;
    if (zero && runStart >= 0) {
      out.push(leasedPiece(offset + runStart, data.subarray(runStart, i), lease));
      runStart = -1;
    }
    i = grainEnd;
  }
  if (runStart >= 0) out.push(leasedPiece(offset + runStart, data.subarray(runStart), lease));
}

interface ReadState {
  bytes: number;
  buffers: ReadBuffers;
  slabs: Slabs;
  /** Reader threads for small files (without them, small files are read here into slabs). */
  reader: SmallFileReader | null;
  /** Chunk size the reader threads hash small files in, if any. */
  hashChunk?: number;
  warn: (w: EntryWarning) => void;
}

/** Where `path` (under `root.real`) is stored: under `root.as` (a `link/` source stores the folder as `link`). */
function asStored(root: { real: Buffer; as: Buffer }, path: Buffer): Buffer {
  // a link to / : every path under it keeps its leading slash
  if (path.length === root.real.length) return root.as;
  return Buffer.concat([root.as, root.real.length === 1 ? path : path.subarray(root.real.length)]);
}

/**
 * A file read shorter than it was listed is stored as read, at the size it
 * had then: never at its old size with a tail of zeros that nothing says is
 * not the file's. The warning says the copy is of a file in the middle of a
 * change (as tar's "file changed as we read it" does).
 */
function shrank(e: Entry, listed: number, state: ReadState): void {
  state.warn({
    code: SOURCE_CHANGED,
    message: `${printable(e.path)} shrank while it was read (${listed} bytes when listed, ${e.size} when read): stored as read`,
    path: e.path,
  });
}

/**
 * The same file (same inode) written between the walk and the read: its
 * modification time moved, or it grew. What is stored is what was read (up
 * to the listed size), with the metadata of the listing, and the warning
 * says the copy may mix the two (as tar's "file changed as we read it").
 * Other changes of the inode (links, mode, xattrs) do not touch the data.
 */
function changedAfterListing(e: Entry, state: ReadState): void {
  state.warn({
    code: SOURCE_CHANGED,
    message: `${printable(e.path)} changed after it was listed: stored as read, with its metadata from the listing; back it up again for a consistent copy`,
    path: e.path,
  });
}

/** Buffers read by a reader thread: not pooled, the garbage collector frees them. */
const NO_POOL = new ReadBuffers(0);

/** Reads a small file whole: on a reader thread when there is one, else into a slab of state.slabs. */
async function readSmall(e: Entry, sparse: boolean, limit: Limit, state: ReadState): Promise<DataPiece[]> {
  if (state.reader?.open) {
    // reader threads read one file after another, so no limit here
    const r = await state.reader.read(realOf(e), e.size, e.dev, e.ino, e.mtimeNs, state.hashChunk);
    if (r.data) {
      if (r.changed) changedAfterListing(e, state);
      const lease = new Lease(r.data, r.release ? { give: r.release } : NO_POOL);
      try {
        const pieces = smallPieces(e, sparse, state, r.data, r.data.length, lease, (r.size ?? 0) < e.size);
        if (r.hashes && pieces.length) pieces[0].hashed = { chunk: state.hashChunk!, size: r.data.length, hashes: r.hashes };
        return pieces;
      } finally {
        lease.drop();
      }
    }
    // a failed read of the file has its errno code; without one, the thread failed: read it here
    if (r.code || state.reader.open) throw replyError(r);
  }
  const { data: buf, lease } = state.slabs.alloc(e.size);
  try {
    await limit.take();
    try {
      const { fh, size } = await openForRead(e, state);
      try {
        let got = 0;
        while (got < buf.length) {
          const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        return smallPieces(e, sparse, state, buf, got, lease, size < e.size);
      } finally {
        await fh.close();
      }
    } finally {
      limit.give();
    }
  } finally {
    lease.drop();
  }
}

/**
 * The pieces of a small file read whole into `buf` (`got` bytes). `smaller`:
 * the file was smaller when opened than when listed. A read that ends early
 * while the file is not smaller is a pseudo-file (sysfs, procfs: they say
 * 4096 bytes and hold a few): stored as read, without a warning.
 */
function smallPieces(e: Entry, sparse: boolean, state: ReadState, buf: Buffer, got: number, lease: Lease, smaller: boolean): DataPiece[] {
  state.bytes += got;
  if (got < e.size) {
    const listed = e.size;
    e.size = got;
    if (smaller) shrank(e, listed, state);
  }
  const data = buf.subarray(0, got);
  const out: DataPiece[] = [];
  if (!sparse) {
    if (got) out.push(leasedPiece(0, data, lease));
  } else dropZeroGrains(0, data, out, lease);
  return out;
}

/** A byte range of a file that holds data (from SEEK_DATA/SEEK_HOLE). */
interface Range {
  start: number;
  end: number;
}

// Each request is "DEV INO PATH\0": the file is mapped only if it is still the
// regular file the walk listed. O_NONBLOCK, as opening a fifo put in its
// place would wait for a writer forever; O_NOFOLLOW, as a symlink put there
// is not that file either. A reply is "D start end ...", "C why" (changed:
// leave it out) or "E error" (read it whole, which says what is wrong).
const DATA_MAP_PERL = String.raw`
use Fcntl; $| = 1; $/ = "\0";
my $base = O_RDONLY | O_NOFOLLOW | O_NONBLOCK;
my $noatime = eval { O_NOATIME() } || 0;
while (defined(my $req = <STDIN>)) {
  chomp $req;
  my ($dev, $ino, $p) = split / /, $req, 3;
  my $fh;
  unless (sysopen($fh, $p, $base | $noatime) || sysopen($fh, $p, $base)) {
    print(($!{ELOOP} ? "C it is now a symlink, not the regular file that was listed; left out" : "E $!"), "\0");
    next;
  }
  my @s = stat($fh);
  my $why = !@s ? "" : -f _ ? (($s[0] eq $dev && $s[1] eq $ino) ? "" : "it was replaced by another file since it was listed")
    : "it is now " . (-d _ ? "a folder" : -p _ ? "a fifo" : -S _ ? "a socket" : "a device") . ", not the regular file that was listed";
  if ($why ne "") { close $fh; print "C $why; left out\0"; next; }
  my ($pos, $ok, @r) = (0, 1);
  while (1) {
    my $d = sysseek($fh, $pos, 3);
    if (!defined $d) { $ok = 0 unless $!{ENXIO}; last; }
    my $h = sysseek($fh, $d, 4);
    if (!defined $h) { $ok = 0; last; }
    push @r, $d + 0, $h + 0;
    $pos = $h;
  }
  close $fh;
  print(($ok ? "D @r" : "E $!"), "\0");
}`;

/**
 * Asks the kernel where a sparse file's data is (lseek SEEK_DATA/SEEK_HOLE),
 * which Node cannot do: one perl process (perl-base is on every Debian and
 * Ubuntu) answers for the whole walk. Without perl, or on a filesystem that
 * does not support it, the file is read whole and zero grains are dropped.
 */
class DataMapper {
  private child: ChildProcess | null = null;
  private waiting: ((r: string | null) => void)[] = [];
  private out: Buffer = Buffer.alloc(0);
  private failed = false;

  private start(): ChildProcess | null {
    if (this.child || this.failed) return this.child;
    try {
      const child = spawn('perl', ['-e', DATA_MAP_PERL], { stdio: ['pipe', 'pipe', 'ignore'] });
      child.on('error', () => this.fail());
      child.on('close', () => this.fail());
      child.stdin.on('error', () => {});
      child.stdout.on('data', (d: Buffer) => {
        this.out = this.out.length ? Buffer.concat([this.out, d]) : d;
        for (let i = this.out.indexOf(0); i >= 0; i = this.out.indexOf(0)) {
          const msg = this.out.toString('latin1', 0, i);
          this.out = this.out.subarray(i + 1);
          this.waiting.shift()?.(msg);
        }
      });
      this.child = child;
    } catch {
      this.failed = true;
    }
    return this.child;
  }

  private fail(): void {
    this.failed = true;
    this.child = null;
    for (const w of this.waiting.splice(0)) w(null);
  }

  /**
   * Data ranges of the walked file `e` (up to `size`), or null when they
   * cannot be known (read it all); throws SourceChanged when it is no longer
   * the file the walk listed.
   */
  async map(e: Entry, size: number): Promise<Range[] | null> {
    const child = this.start();
    if (!child) return null;
    const reply = await new Promise<string | null>((resolve) => {
      this.waiting.push(resolve);
      child.stdin!.write(Buffer.concat([Buffer.from(`${e.dev} ${e.ino} `), realOf(e), Buffer.from([0])]));
    });
    if (reply?.startsWith('C ')) throw new SourceChanged(reply.slice(2));
    if (!reply || !reply.startsWith('D')) return null;
    const nums = reply.slice(1).trim().split(' ').filter(Boolean).map(Number);
    const out: Range[] = [];
    for (let i = 0; i + 1 < nums.length; i += 2) {
      const start = Math.min(nums[i], size);
      const end = Math.min(nums[i + 1], size);
      if (end > start) out.push({ start, end });
    }
    return out;
  }

  close(): void {
    this.failed = true;
    this.child?.stdin?.end();
    this.child = null;
  }
}

/** A read of readLarge: it settles with its error rather than rejecting. */
interface LargeRead {
  off: number;
  len: number;
  lease: Lease;
  n: number;
  err?: unknown;
}

async function* readLarge(e: Entry, sparse: boolean, limit: Limit, state: ReadState, onRead: () => void, mapper: DataMapper): AsyncGenerator<DataPiece> {
  await limit.take();
  let fh: FileHandle | null = null;
  // A few reads are in flight at once. One that fails must not leave the
  // others behind: they would fail too (a file gone bad fails them all) with
  // nobody awaiting them, and an unhandled rejection ends the process. So
  // reads never reject, and every one still in flight is waited for before
  // the file is closed and the error goes up (or the consumer stops early).
  const inflight: Promise<LargeRead>[] = [];
  try {
    const size = e.size;
    const ranges = (sparse ? await mapper.map(e, size) : null) ?? [{ start: 0, end: size }];
    fh = (await openForRead(e, state)).fh;
    const h = fh;
    const depth = 4;
    let readEnd = 0;
    let ri = 0;
    let next = ranges.length ? ranges[0].start : 0;
    const more = () => ri < ranges.length;
    const issue = () => {
      const range = ranges[ri];
      const off = next;
      const len = Math.min(READ_SIZE, range.end - off);
      next += len;
      if (next >= range.end && ++ri < ranges.length) next = ranges[ri].start;
      const lease = new Lease(state.buffers.take(), state.buffers);
      inflight.push(h.read(lease.buf, 0, len, off).then((x) => ({ off, len, lease, n: x.bytesRead }), (err: unknown) => ({ off, len, lease, n: 0, err })));
    };
    while (inflight.length < depth && more()) issue();
    while (inflight.length) {
      const r = await inflight.shift()!;
      const { off, len, lease, n } = r;
      if ('err' in r) {
        lease.drop();
        throw r.err;
      }
      if (more()) issue();
      state.bytes += n;
      if (n > 0) readEnd = Math.max(readEnd, off + n);
      const data = lease.buf.subarray(0, n);
      const out: DataPiece[] = [];
      if (sparse) dropZeroGrains(off, data, out, lease);
      else if (n) out.push(leasedPiece(off, data, lease));
      lease.drop();
      try {
        for (let i = 0; i < out.length; i++) {
          const p = out[i];
          out[i] = null as never;
          yield p;
        }
      } finally {
        releaseAll(out);
      }
      onRead();
      if (n < len) {
        // cut short: at what it holds now, or at the end of what was read
        // (a read in a range that was cut off reads nothing)
        const now = Math.max(readEnd, Number((await h.stat({ bigint: true })).size));
        if (now < size) {
          e.size = now;
          shrank(e, size, state);
        }
        return;
      }
    }
    // A sparse file cut short inside a hole reads nothing short: its size
    // now says so (data read before it was cut is kept, and counts).
    const now = Math.max(Number((await h.stat({ bigint: true })).size), readEnd);
    if (now < size) {
      e.size = now;
      shrank(e, size, state);
    }
  } finally {
    for (const r of await Promise.all(inflight.splice(0))) r.lease.drop();
    await fh?.close();
    limit.give();
  }
}

/**
 * Walks `sources` and yields every entry, parents before children. Sources
 * are absolute or relative paths (resolved against the working directory);
 * sources inside another source are walked once. The ancestors of each source
 * come first, flagged `implicit`. An entry that vanishes or cannot be read is
 * reported through onWarning and left out.
 */
export async function* walk(sources: (string | Buffer | MappedSource)[], opts: WalkOptions = {}): AsyncGenerator<Entry> {
  checkArg(Array.isArray(sources) && sources.length > 0, 'sources', 'a non-empty list of paths', sources);
  for (const s of sources) {
    checkArg(typeof s === 'string' || Buffer.isBuffer(s) || (typeof s === 'object' && s !== null && 'as' in s), 'sources', 'paths (strings, Buffers or {path, as})', s);
  }
  const warn = (w: EntryWarning) => {
    if (opts.onWarning) opts.onWarning(w);
  };
  const all: Root[] = sources
    .map((s) => (typeof s === 'object' && !Buffer.isBuffer(s) ? { real: normalizeSource(s.path), as: normalizeSource(s.as), follow: endsAsFolder(s.path) } : { real: normalizeSource(s), as: normalizeSource(s), follow: endsAsFolder(s) }))
    .map((r) => (r.real.equals(r.as) ? { real: r.real, as: r.real, follow: r.follow } : r))
    .sort((a, b) => Buffer.compare(a.as, b.as));
  const roots: Root[] = [];
  for (const r of all) {
    const same = roots.find((x) => x.as.equals(r.as));
    if (same) same.follow ||= r.follow; // `link` and `link/`: the folder, which holds more
    else {
      const outer = roots.find((x) => isUnder(r.as, x.as));
      if (!outer) roots.push(r);
      else {
        // The outer walk takes it as it finds it there. A plain folder or
        // file: the same entries, walked once. Reached through a symlink (or
        // a symlink given as `link/`): the outer walk stores the symlink, and
        // what it points to is not backed up.
        const via = r.real.equals(r.as) ? await symlinkOnTheWay(outer.as, r.as, !!r.follow) : null;
        if (via) {
          const target = await realpath(r.real.toString('latin1')).then((x) => ` (${x})`, () => '');
          const what = via.equals(r.as) ? `${printable(r.as)}/ is a symlink inside ${printable(outer.as)} and is stored as one` : `${printable(r.as)} is reached through the symlink ${printable(via)} inside ${printable(outer.as)}, which is stored as a symlink`;
          warn({ code: 'SOURCE_NESTED', message: `${what}: what it points to is not backed up; give its real path${target} as a source to back it up`, path: r.as });
        }
      }
    }
  }

  const limit = new Limit(Math.max(1, opts.concurrency ?? 8));
  const mapper = new DataMapper();
  const budget = opts.readAhead ?? 64 * 1024 * 1024;
  const threads = Math.max(0, opts.readerThreads ?? 2);
  const reader = threads > 0 ? new SmallFileReader(threads) : null;
  // Enough buffers for the read-ahead window, the large file being read and what the consumer holds.
  const buffers = new ReadBuffers(Math.ceil(budget / READ_SIZE) + 8);
  const state: ReadState = { bytes: 0, buffers, slabs: new Slabs(buffers), reader, hashChunk: opts.hashChunk, warn };
  let yielded = 0;
  const progress = () => opts.onProgress?.({ files: yielded, bytes: state.bytes });

  const upstream = flatten(ahead(withXattrs(ahead(lstatWalk(roots, opts, warn), 4000), warn, opts.xattrs !== false), 2));
  const it = upstream[Symbol.asyncIterator]();
  // Small files read ahead, in walk order. `inWindow` counts the bytes of
  // every read-ahead file from the moment its read starts until the consumer
  // has taken its data (or moved past the entry without asking for it): what
  // the walker really holds, whatever the consumer does.
  const queue: { e: Entry; ready: Promise<DataPiece[] | null> | null; cost: number }[] = [];
  let inWindow = 0;
  let exhausted = false;
  const release = (h: Held) => {
    if (h.pieces) releaseAll(h.pieces);
    h.pieces = null;
    inWindow -= h.cost;
    h.cost = 0;
  };
  const lazy = (e: Entry) => lazySmall(e, limit, state, warn);
  try {
    for (;;) {
      // Always at least one entry at hand, even over budget (then read when asked for).
      while (!exhausted && queue.length < 512 && (inWindow < budget || queue.length === 0)) {
        const r = await it.next();
        if (r.done) {
          exhausted = true;
          break;
        }
        const e = r.value;
        if (e.type === 'file' && e.size > 0 && e.size <= SMALL_FILE && inWindow < budget) {
          const ready = readSmall(e, looksSparse(e), limit, state).catch((err: unknown) => {
            warn({ code: 'SOURCE_READ', message: `cannot read ${printable(e.path)}: ${errText(err)}`, path: e.path });
            return null;
          });
          inWindow += e.size;
          queue.push({ e, ready, cost: e.size });
        } else queue.push({ e, ready: null, cost: 0 });
      }
      const q = queue.shift();
      if (!q) return;
      const e = q.e;
      let held: Held | null = null;
      if (q.ready) {
        const pieces = await q.ready;
        if (!pieces) {
          inWindow -= q.cost;
          continue;
        }
        held = { pieces, cost: q.cost };
        e.content = heldContent(held, release, lazy, e);
      } else if (e.type === 'file' && e.size > 0) {
        e.content = e.size <= SMALL_FILE ? () => lazy(e) : largeContent(e, limit, state, progress, mapper, warn);
      } else if (e.type === 'file') {
        e.content = async function* () {};
      } else if (fileLinks.has(e)) {
        // read only if the group's first file could not be stored: then this link holds the data
        e.linkContent = e.size === 0 ? async function* () {} : e.size <= SMALL_FILE ? () => lazy(e) : largeContent(e, limit, state, progress, mapper, warn);
      }
      yielded++;
      yield e;
      // The consumer moved on without starting to read the data: let it go
      // (a later content() reads the file again).
      if (held?.pieces) release(held);
      progress();
    }
  } finally {
    await it.return?.(undefined as never);
    for (const r of await Promise.allSettled(queue.map((q) => q.ready))) if (r.status === 'fulfilled' && r.value) releaseAll(r.value);
    state.slabs.close();
    mapper.close();
    await reader?.close();
  }
}

/** Data read ahead for an entry, until the consumer takes it. */
interface Held {
  pieces: DataPiece[] | null;
  cost: number;
}

/**
 * The content of a read-ahead file: hands each piece over and forgets it
 * (nothing here keeps the data once yielded), and gives the budget back once
 * the last piece is out. Called again, or after the walker let the data go,
 * it reads the file again.
 */
function heldContent(h: Held, release: (h: Held) => void, lazy: (e: Entry) => AsyncIterable<DataPiece>, e: Entry): () => AsyncIterable<DataPiece> {
  return async function* () {
    const ps = h.pieces;
    h.pieces = null;
    if (!ps) {
      release(h);
      yield* lazy(e);
      return;
    }
    try {
      for (let i = 0; i < ps.length; i++) {
        const p = ps[i];
        ps[i] = null as never;
        if (i === ps.length - 1) release(h);
        yield p;
      }
    } finally {
      releaseAll(ps);
      release(h);
    }
  };
}

/** A small file read when its content is asked for (not read ahead). */
async function* lazySmall(e: Entry, limit: Limit, state: ReadState, warn: (w: EntryWarning) => void): AsyncGenerator<DataPiece> {
  let pieces: DataPiece[];
  try {
    pieces = await readSmall(e, looksSparse(e), limit, state);
  } catch (err) {
    warn({ code: 'SOURCE_READ', message: `cannot read ${printable(e.path)}: ${errText(err)}`, path: e.path });
    throw new SourceReadError(e.path, err);
  }
  try {
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i];
      pieces[i] = null as never;
      yield p;
    }
  } finally {
    releaseAll(pieces);
  }
}

function largeContent(e: Entry, limit: Limit, state: ReadState, progress: () => void, mapper: DataMapper, warn: (w: EntryWarning) => void): () => AsyncIterable<DataPiece> {
  const sparse = looksSparse(e);
  return async function* () {
    try {
      yield* readLarge(e, sparse, limit, state, progress, mapper);
    } catch (err) {
      warn({ code: 'SOURCE_READ', message: `cannot read ${printable(e.path)}: ${errText(err)}`, path: e.path });
      throw new SourceReadError(e.path, err);
    }
  };
}

/** Whether a walker entry's file looked sparse (fewer blocks allocated than its size). */
export function looksSparse(e: Entry): boolean {
  return (allocated.get(e) ?? 0n) * 512n < BigInt(e.size);
}
