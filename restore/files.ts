// Restores entries of a files-kind volume to a directory tree.
//
// Where things go: without `to`, every entry goes back to its original
// absolute path; with `to`, the original absolute path is placed under it
// (`--to /srv/r` puts /home/a/x at /srv/r/home/a/x), as restic does.
//
// Order: one pass in catalog order (each directory before its contents)
// creates directories, files, symlinks, devices, fifos and sockets; a
// second pass makes hard links (to the first restored member of each group);
// then extended attributes are set (setfattr, in batches), directory
// metadata is applied deepest first (after their contents stopped changing),
// and nanosecond times are set last.
//
// Regular files are written by a thread of their own (writer.ts) with
// synchronous calls, in batches (files up to 4 MiB whole, larger ones in
// parts of about 4 MiB), and their chunk sums are checked there, while this
// thread reads the catalog and the data; directories, links and nodes are
// made here, also with synchronous calls (a restore serves no FUSE mount, and
// nothing else waits on this thread but the reading it drives). Directories
// this run created start empty, so nothing in them is looked at before it
// is written.
//
// A restore that was interrupted is finished by running it again: files
// already in place and equal are left alone. A restore into a `to` that did
// not exist marks it as its own (marker.ts) and writes files in the
// directories it creates at their final names; the next run into that `to`
// knows from the marker that what it finds there is unfinished work. Every
// other file is written under a temporary name in its directory
// (".ferry-partial-<entry id>") and renamed into place when complete.
//
// Times: Node's utimes only takes microseconds. The writer thread sets a
// regular file's times through its descriptor, to the nanosecond with the
// addon's futimens. For everything else (and files, without the addon),
// after the µs-exact in-process call a small perl helper (perl-base is on
// every Debian/Ubuntu system) sets the exact nanoseconds with utimensat(2);
// it also creates device nodes, fifos and sockets with mknodat(2). Without
// perl, `touch -d @S.N` and `mknod`/`mkfifo` are used instead (slower;
// sockets are then skipped).
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  constants as C, lchownSync, linkSync, lstatSync, lutimesSync, mkdirSync, readdirSync, readlinkSync, renameSync, statSync,
  symlinkSync, type Stats,
} from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import type { EntryWarning } from '../format/volume/writer.js';
import type { VolumeEntry, Xattr } from '../format/volume/catalog.js';
import { parentPath, baseName } from '../format/volume/catalog.js';
import type { VolumeReader } from '../format/volume/reader.js';
import { MARKER_NAME, prepareTarget, removeMarker } from './marker.js';
import { FolderJournal } from './journal.js';
import { FerryError, checkArg, counted, formatSize } from '../format/errors.js';
import { compileSelectors, formatSetfattr, normalizeSource, run } from '../source/files.js';
import { Anchored, openFilesLimit, removeTree } from './anchor.js';
import { FileWriter, setMetaNoFollow, clearSync as clear, type WriteJob, type WriteResult } from './writer.js';
import { kindOf, linkRefused, mkdirpSync } from '../format/fsio.js';
import { nativeAddon } from '../format/native.js';
import { printable } from '../format/printable.js';
import { freeBuffer } from '../format/buffers.js';

/** Bytes of one file read between two progress reports within it. */
const PROGRESS_STEP = 16 * 1024 * 1024;

const MARKER_BUF = Buffer.from(MARKER_NAME);

export type IfExists = 'copy' | 'overwrite' | 'skip';

export interface RestoreProgress {
  /** Entries handled so far (restored, unchanged or skipped). */
  files: number;
  /** File bytes written so far. */
  bytes: number;
}

export interface RestoreOptions {
  /** Target root; without it entries go back to their original place. */
  to?: string | Buffer;
  /** What to restore: absolute paths or globs (compileSelectors); a directory selects its subtree. All when empty. */
  paths?: (string | Buffer)[];
  /** What to do when the target exists and differs: keep it and write a copy beside it (default), replace it, or leave it. */
  ifExists?: IfExists;
  /** What a --verbose run tells of single entries (a copy written beside one, one left under skip). */
  onNote?: (n: { path: Buffer; message: string }) => void;
  /** Label in the name of copies (`name.ferry-restored-<point>`); by default the volume's write time. */
  point?: string;
  /** Restore owners (default: when running as root). */
  owners?: boolean;
  onWarning?: (w: EntryWarning) => void;
  onProgress?: (p: RestoreProgress) => void;
  /** Where the journal of folders made is kept (journal.ts; default: stateDir()). */
  stateDir?: string;
}

export interface RestoreResult {
  /** Entries created or replaced. */
  restored: number;
  /** Existing entries left as they were: equal to the backup (any policy) or different under `skip`. */
  skipped: number;
  /** Of `skipped`, those found equal to the backup. */
  unchanged: number;
  /** Copies written beside a differing existing entry (`copy`). */
  copies: number;
  /** Of `skipped`, differing entries whose copy a run before wrote beside them, found equal to the backup (`copy`). */
  copiesFound: number;
  /** Bytes of the files put in place. */
  bytes: number;
  /** Entries that could not be restored (each also a warning). */
  failed: number;
  warnings: number;
}

const SLASH = 0x2f;
const NAME_MAX = 255;
/** Folder listings kept for telling a name from one in another letter case (heldByAnother). */
const LISTINGS_KEPT = 256;
/** RESTORE_META warnings shown one by one; the rest are counted in one line. */
const META_WARNINGS_SHOWN = 20;
/** Regular files go to the writer thread in parts of about this size (smaller files whole). */
const PART_BYTES = 4 * 1024 * 1024;
/**
 * Folders' descriptors kept open before they are closed at a point where
 * nothing queued needs them (anchor.ts): 2048, or a quarter of the soft
 * limit of open files when that is lower (the writer and helpers need some).
 */
function maxOpenFolders(): number {
  return Math.max(16, Math.min(2048, Math.floor(openFilesLimit() / 4)));
}

function join(dir: Buffer, name: Buffer): Buffer {
  const slash = dir.length > 0 && dir[dir.length - 1] === SLASH ? 0 : 1;
  const out = Buffer.allocUnsafe(dir.length + slash + name.length);
  dir.copy(out, 0);
  if (slash) out[dir.length] = SLASH;
  name.copy(out, dir.length + slash);
  return out;
}

/** Seconds and nanoseconds of atime, then of mtime, as numbers (as the addon's futimens takes them). */
function timeParts(atimeNs: bigint, mtimeNs: bigint): number[] {
  const [as, an] = nsToParts(atimeNs);
  const [ms, mn] = nsToParts(mtimeNs);
  return [Number(as), Number(an), Number(ms), Number(mn)];
}

function nsToParts(ns: bigint): [bigint, bigint] {
  let s = ns / 1_000_000_000n;
  let n = ns % 1_000_000_000n;
  if (n < 0n) {
    n += 1_000_000_000n;
    s -= 1n;
  }
  return [s, n];
}

function nsToSeconds(ns: bigint): number {
  const [s, n] = nsToParts(ns);
  return Number(s) + Number(n) / 1e9;
}

/** Whether Node's time calls (whole microseconds) can set these times exactly. */
function microExact(atimeNs: bigint, mtimeNs: bigint): boolean {
  return atimeNs >= 0n && mtimeNs >= 0n && atimeNs % 1000n === 0n && mtimeNs % 1000n === 0n;
}

/**
 * A time that is whole microseconds, as seconds for Node's time calls.
 * libuv truncates to the microsecond below, and a double near 2^31 s is only
 * good to about 0.24 µs: aiming at the middle of the microsecond lands in it.
 */
function usSeconds(ns: bigint): number {
  const [s, n] = nsToParts(ns);
  return Number(s) + (Number(n / 1000n) + 0.5) / 1e6;
}

/** Xattrs that give a file powers (capabilities) or that only root may set. */
function sensitiveXattr(x: Xattr): boolean {
  return x.name.startsWith('security.') || x.name.startsWith('trusted.');
}

function hasGlob(p: string): boolean {
  return /[*?[\\]/.test(p);
}

/** Linux dev_t -> major, minor (glibc encoding). */
export function splitDev(rdev: bigint): [bigint, bigint] {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return [major, minor];
}

// ---------------------------------------------------------------- syscall helper

const PERL_HELPER = String.raw`
$| = 1; $/ = "\0";
my ($utimensat, $mknodat, $fsetxattr, $fchownat, $opath, $nofollow, $nonblock, $setxattr) = @ARGV;
while (defined(my $op = <STDIN>)) {
  chomp $op; my $p = <STDIN>; chomp $p; my $a = <STDIN>; chomp $a;
  my $r = -1;
  if ($op eq 't') {
    my ($as, $an, $ms, $mn) = split / /, $a;
    $r = syscall($utimensat + 0, -100, $p, pack("q<q<q<q<", $as, $an, $ms, $mn), 0x100);
  } elsif ($op eq 'n') {
    my ($mode, $dev) = split / /, $a;
    $r = syscall($mknodat + 0, -100, $p, $mode + 0, $dev + 0);
  } elsif ($op eq 'o') {
    # the owner of the symlink at $p itself: opened as itself (O_PATH |
    # O_NOFOLLOW), checked to be a symlink, changed through the descriptor
    # (fchownat AT_EMPTY_PATH); by name, a hard link put there would change
    my ($uid, $gid) = split / /, $a;
    if (sysopen(my $fh, $p, ($opath + 0) | ($nofollow + 0))) {
      if ((((stat($fh))[2]) & 0170000) != 0120000) {
        print("replaced since it was made\0"); close($fh); next;
      }
      my $empty = ""; # (syscall may write to its string arguments: no constant)
      $r = syscall($fchownat + 0, fileno($fh), $empty, $uid + 0, $gid + 0, 0x1000);
      close($fh);
    }
  } elsif ($op eq 'X') {
    # xattrs of the folder, symlink or node at $p itself: opened as itself
    # (O_PATH | O_NOFOLLOW), its type checked (octal), set through
    # /proc/self/fd/<n>, which leads to the entry opened, not to its name;
    # names and values in hex
    my ($type, @kv) = split / /, $a;
    if (sysopen(my $fh, $p, ($opath + 0) | ($nofollow + 0))) {
      if ((((stat($fh))[2]) & 0170000) != oct($type)) {
        print("replaced since it was made\0"); close($fh); next;
      }
      my $at = "/proc/self/fd/" . fileno($fh);
      $r = 0;
      while (@kv) {
        my $n = pack("H*", shift @kv); my $v = pack("H*", shift @kv);
        if (syscall($setxattr + 0, $at, $n, $v, length($v), 0) != 0) { $r = -1; last; }
      }
      close($fh);
    }
  } elsif ($op eq 'x') {
    # xattrs through fsetxattr on the file ferry holds open as $p
    # (/proc/<pid>/fd/<n>: that very inode, whatever is at its name now);
    # names and values in hex
    my @kv = split / /, $a;
    if (sysopen(my $fh, $p, $nonblock + 0)) {
      if (! -f $fh) {
        print("not a regular file\0"); close($fh); next;
      }
      $r = 0;
      while (@kv) {
        my $n = pack("H*", shift @kv); my $v = pack("H*", shift @kv);
        if (syscall($fsetxattr + 0, fileno($fh), $n, $v, length($v), 0) != 0) { $r = -1; last; }
      }
      close($fh);
    }
  }
  print(($r == 0 ? "ok" : "$!"), "\0");
}
`;

/** utimensat, mknodat, fsetxattr, fchownat; the open flags O_PATH, O_NOFOLLOW, O_NONBLOCK (they differ between the two); setxattr. */
const SYSCALLS: Record<string, number[]> = { x64: [280, 259, 190, 260, 0o10000000, 0o400000, 0o4000, 188], arm64: [88, 33, 7, 54, 0o10000000, 0o100000, 0o4000, 5] };

/** The S_IFMT bits of each kind of entry. */
const TYPE_BITS: Record<string, number> = {
  dir: C.S_IFDIR, file: C.S_IFREG, hardlink: C.S_IFREG, symlink: C.S_IFLNK, fifo: C.S_IFIFO, socket: C.S_IFSOCK, chardev: C.S_IFCHR, blockdev: C.S_IFBLK,
};

/** One long-lived perl process that runs utimensat/mknodat for us; null when it cannot run here. */
class SyscallHelper {
  private readonly child: ChildProcess;
  private readonly waiting: { resolve: (r: string) => void }[] = [];
  private out: Buffer = Buffer.alloc(0);
  private dead = false;
  private queued: Buffer[] = [];
  private queuedBytes = 0;
  private scheduled = false;

  private constructor(child: ChildProcess) {
    this.child = child;
    child.stdout!.on('data', (d: Buffer) => {
      this.out = this.out.length ? Buffer.concat([this.out, d]) : d;
      for (let i = this.out.indexOf(0); i >= 0; i = this.out.indexOf(0)) {
        const msg = this.out.toString('utf8', 0, i);
        this.out = this.out.subarray(i + 1);
        this.waiting.shift()?.resolve(msg);
      }
    });
    child.on('close', () => {
      this.dead = true;
      for (const w of this.waiting.splice(0)) w.resolve('helper exited');
    });
    child.stdin!.on('error', () => {});
  }

  static async start(): Promise<SyscallHelper | null> {
    const nums = SYSCALLS[process.arch];
    if (!nums || process.platform !== 'linux') return null;
    let child: ChildProcess;
    try {
      child = spawn('perl', ['-e', PERL_HELPER, ...nums.map(String)], { stdio: ['pipe', 'pipe', 'ignore'] });
    } catch {
      return null;
    }
    const ok = await new Promise<boolean>((resolve) => {
      child.once('error', () => resolve(false));
      child.once('spawn', () => resolve(true));
    });
    if (!ok) return null;
    const h = new SyscallHelper(child);
    // probe: a time change on a path that cannot exist must fail with ENOENT, not crash
    const probe = await h.call('t', Buffer.from('/nonexistent/ferry-probe'), '0 0 0 0');
    if (!/No such file/i.test(probe)) {
      await h.close();
      return null;
    }
    return h;
  }

  /** Runs one operation; resolves "ok" or the error text. */
  call(op: 't' | 'n' | 'x' | 'X' | 'o', path: Buffer, args: string): Promise<string> {
    if (this.dead) return Promise.resolve('helper exited');
    return new Promise((resolve) => {
      this.waiting.push({ resolve });
      // requests are gathered and written once per turn of the event loop (or every 64 KiB)
      this.queued.push(Buffer.from(op + '\0'), path, Buffer.from('\0' + args + '\0'));
      this.queuedBytes += path.length + args.length + 4;
      if (this.queuedBytes >= 65536) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    if (this.queued.length === 0) return;
    const b = Buffer.concat(this.queued);
    this.queued = [];
    this.queuedBytes = 0;
    this.child.stdin!.write(b);
  }

  get pending(): number {
    return this.waiting.length;
  }

  async close(): Promise<void> {
    if (this.dead) return;
    const closed = new Promise<void>((r) => this.child.once('close', () => r()));
    this.child.stdin!.end();
    await closed;
  }
}

/** Sets exact nanosecond times, through the helper or, without one, `touch` in batches. */
class TimeSetter {
  private pending: Promise<void>[] = [];
  private script: Buffer[] = [];
  private scripted: Buffer[] = [];

  constructor(private readonly helper: SyscallHelper | null, private readonly warn: (w: EntryWarning) => void) {}

  async set(path: Buffer, atimeNs: bigint, mtimeNs: bigint): Promise<void> {
    const exactUs = microExact(atimeNs, mtimeNs);
    if (exactUs || !this.helper) {
      // in process: exact to the microsecond (Node takes no finer times)
      const [a, m] = exactUs ? [usSeconds(atimeNs), usSeconds(mtimeNs)] : [nsToSeconds(atimeNs), nsToSeconds(mtimeNs)];
      try {
        lutimesSync(path, a, m);
      } catch (err) {
        this.warn({ code: 'RESTORE_META', message: `cannot set the times of ${printable(path)}: ${(err as Error).message}`, path });
        return;
      }
      if (exactUs) return;
    }
    const [as, an] = nsToParts(atimeNs);
    const [ms, mn] = nsToParts(mtimeNs);
    if (this.helper) {
      this.pending.push(
        this.helper.call('t', path, `${as} ${an} ${ms} ${mn}`).then((r) => {
          if (r === 'ok') return;
          try {
            lutimesSync(path, nsToSeconds(atimeNs), nsToSeconds(mtimeNs)); // at least to the microsecond
          } catch {
            /* reported below */
          }
          this.warn({ code: 'RESTORE_META', message: `cannot set the nanosecond times of ${printable(path)}: ${r}`, path });
        }),
      );
      if (this.pending.length >= 4096) await this.drain();
      return;
    }
    const q = shellQuote(path);
    const frac = (n: bigint) => n.toString().padStart(9, '0');
    this.script.push(Buffer.from(`touch -h -c -a -d @${as}.${frac(an)} -- `), q, Buffer.from('\n'));
    this.script.push(Buffer.from(`touch -h -c -m -d @${ms}.${frac(mn)} -- `), q, Buffer.from('\n'));
    this.scripted.push(path);
    if (this.scripted.length >= 500) await this.drain();
  }

  async drain(): Promise<void> {
    const p = this.pending.splice(0);
    await Promise.all(p);
    if (this.script.length) {
      const script = Buffer.concat(this.script);
      this.script = [];
      this.scripted = [];
      const r = await run('sh', ['-s'], script);
      if (r.code !== 0 && r.stderr.length) {
        this.warn({ code: 'RESTORE_META', message: `setting exact times failed for some entries: ${r.stderr.toString().split('\n')[0]}` });
      }
    }
  }
}

function shellQuote(p: Buffer): Buffer {
  const parts: Buffer[] = [Buffer.from("'")];
  let start = 0;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0x27) {
      parts.push(p.subarray(start, i), Buffer.from("'\\''"));
      start = i + 1;
    }
  }
  parts.push(p.subarray(start), Buffer.from("'"));
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------- restore

interface DirMeta {
  dst: Buffer;
  e: VolumeEntry;
}

/** Restores the selected entries of `reader`; per-entry problems become warnings and the rest goes on. */
/** The --path values that select nothing in the volume (as text, for messages). */
function unmatchedPaths(reader: VolumeReader, paths: (string | Buffer)[]): string[] {
  const out: string[] = [];
  for (const p of paths) {
    const text = Buffer.isBuffer(p) ? p.toString('utf8') : p;
    const exact = Buffer.isBuffer(p) ? p[0] === SLASH : p.startsWith('/') && !hasGlob(p);
    if (exact) {
      if (reader.stat(Buffer.isBuffer(p) ? p : Buffer.from(p)) === null) out.push(text);
      continue;
    }
    // a glob: the first entry it selects settles it (a walk of the whole catalog only when none does)
    const sel = compileSelectors([text]);
    let found = false;
    for (const e of reader.entries()) {
      if (sel(e.path)) {
        found = true;
        break;
      }
    }
    if (!found) out.push(text);
  }
  return out;
}

export async function restoreFiles(reader: VolumeReader, opts: RestoreOptions = {}): Promise<RestoreResult> {
  checkArg(!!reader && typeof reader.entries === 'function', 'reader', 'a VolumeReader', reader);
  const ifExists: IfExists = opts.ifExists ?? 'copy';
  checkArg(['copy', 'overwrite', 'skip'].includes(ifExists), 'ifExists', 'copy, overwrite or skip', ifExists);
  let to = opts.to === undefined ? null : Buffer.isBuffer(opts.to) ? opts.to : Buffer.from(opts.to);
  if (to) checkArg(to.length > 0, 'to', 'a directory', opts.to);
  // one spelling of the target: `--to out/` and `--to out` are the same place, and a relative
  // one is taken from where ferry runs (the walk of the target goes by absolute paths)
  if (to) to = normalizeSource(to);
  const owners = opts.owners ?? process.getuid?.() === 0;
  const pointLabel = (opts.point ?? defaultPointLabel(reader)).replace(/[/\0]/g, '_');
  // A --path that names nothing in the backup (a typo, a path spelled
  // relative to where the backup ran): said before anything is made; when
  // none of them names anything, the restore stops.
  // a --path that names an entry exactly is that path, glob characters and all (`Photos [2019]`)
  const paths = (opts.paths ?? []).map((p) => (typeof p === 'string' && p.startsWith('/') && hasGlob(p) && reader.stat(Buffer.from(p)) !== null ? Buffer.from(p) : p));
  const unmatched = unmatchedPaths(reader, paths);
  if (unmatched.length > 0 && unmatched.length === paths.length) {
    throw new FerryError(
      'RESTORE_NO_SUCH_PATH',
      `nothing in this backup matches --path ${unmatched.map((p) => JSON.stringify(p)).join(', ')}: name paths as they were backed up (absolute, like /home/ann/docs) or as globs (*.conf, /etc/**/ssh*)`,
      { paths: unmatched },
    );
  }

  const result: RestoreResult = { restored: 0, skipped: 0, unchanged: 0, copies: 0, copiesFound: 0, bytes: 0, failed: 0, warnings: 0 };
  // The first error that every further file would meet too (the target's
  // disk full, or a read-only target): the run stops (the marker stays).
  let stopped: EntryWarning | null = null;
  // every call on an entry inside the target names it through its folder's descriptor (anchor.ts)
  const anchored = new Anchored(to ?? Buffer.from('/'));
  const A = (p: Buffer): Buffer => anchored.at(p);
  /** lstat of an entry in the target; undefined when it or a folder on its way is missing. */
  const lstatAt = (p: Buffer): Stats | undefined => {
    try {
      return lstatSync(A(p), { throwIfNoEntry: false });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  };
  let linksCopied = 0;
  // Metadata a file system does not keep (owners on FAT and exFAT) would
  // give a warning per file: the first ones are shown, the rest counted.
  let metaWarnings = 0;
  const warn = (w: EntryWarning) => {
    w = { ...w, message: anchored.display(w.message), ...(w.path ? { path: anchored.displayPath(w.path) } : {}) };
    if (w.code === 'RESTORE_FAILED') result.failed++;
    // (a read-only target too; in the original places, one read-only file system of several is a warning per entry)
    if (w.errno === 'ENOSPC' || w.errno === 'EDQUOT' || (w.errno === 'EROFS' && to)) {
      // one error at the end says it, not a warning per file still in flight
      stopped ??= w;
      return;
    }
    result.warnings++;
    if (w.code === 'RESTORE_META' && ++metaWarnings > META_WARNINGS_SHOWN) return;
    opts.onWarning?.(w);
  };
  for (const p of unmatched) warn({ code: 'RESTORE_NO_SUCH_PATH', message: `nothing in this backup matches --path ${JSON.stringify(p)}` });
  let handled = 0;
  let readBytes = 0; // data read from the volume so far (progress)
  let lastReported = 0;
  const progress = () => opts.onProgress?.({ files: handled, bytes: readBytes });
  /** Counts data read; a large file moves the progress while it is read, not only at its end. */
  const countRead = (n: number) => {
    readBytes += n;
    if (readBytes - lastReported >= PROGRESS_STEP) {
      lastReported = readBytes;
      progress();
    }
  };

  const dirDst = new Map<number, Buffer | null>(); // restored dirs' places; null = subtree skipped
  // The sets of folders below are keyed by path in latin1 (a string: a
  // Buffer is a key by identity); `parentKey` makes the key of an entry's
  // folder, and keeps the last one made: entries come folder by folder.
  let lastParent: Buffer | null = null;
  let lastParentKey = '';
  /** The key of the folder that holds `p` (as parentPath gives it), null for "/". */
  const parentKey = (p: Buffer): string | null => {
    if (p.length === 1 && p[0] === SLASH) return null;
    const len = Math.max(1, p.lastIndexOf(SLASH)); // (the parent of "/a" is "/")
    if (lastParent !== null && lastParent.length === len && p.compare(lastParent, 0, len, 0, len) === 0) return lastParentKey;
    lastParent = parentPath(p)!;
    lastParentKey = lastParent.toString('latin1');
    return lastParentKey;
  };
  const knownDirs = new Set<string>();
  // directories this run created: they were empty, so nothing in them needs a look before it is written
  const freshDirs = new Set<string>();
  // A new `to` is marked as this restore's own (marker.ts): files in the
  // directories it makes are then written at their final names. A `to` that
  // holds the marker of an unfinished restore is inherited: what is in it is
  // that restore's work, to be finished whatever the policy.
  const volumeId = reader.superblock.uuid.toString('hex');
  const marker = to ? targetOf(to, volumeId) : { active: false, inherited: false, volume: null, other: false };
  const inherited = marker.inherited;
  if (to && marker.active && !inherited) freshDirs.add(to.toString('latin1'));
  // `to` itself may be a symlink to a folder: the user's choice, followed
  if (to && statSync(to, { throwIfNoEntry: false })?.isDirectory()) knownDirs.add(to.toString('latin1'));
  // Folders made where no marker covers them are written down (journal.ts):
  // a run stopped midway and run again gives them their metadata too.
  // Where the state folder cannot be used (a user without a home), there is
  // no journal, and no warning either: only a stopped run would miss it.
  const journal = !marker.active ? FolderJournal.open(volumeId, to, opts.stateDir).journal : null;
  const record = (dir: Buffer) => {
    const st = journal ? lstatAt(dir) : undefined;
    if (st) journal!.add(dir, st); // (when it cannot write, it adds nothing more: what it has stays)
  };
  /** Whether an earlier run of this restore, stopped before the end, made folder `dir` (found as `st`). */
  const madeBefore = (dir: Buffer, st: Stats): boolean => inLeftover(dir) || (journal?.made(dir, st) ?? false);
  /** Folders an earlier unfinished run made: what is in them is its work too. */
  const earlierDirs = new Set<string>();
  const inEarlierDir = (p: Buffer): boolean => {
    const parent = parentPath(p);
    return parent !== null && earlierDirs.has(parent.toString('latin1'));
  };
  /**
   * Whether an existing non-folder found equal to the backup was put there
   * by an earlier run that may have stopped before its metadata.
   */
  const placedBefore = (dst: Buffer, st: Stats): boolean => inLeftover(dst) || inEarlierDir(dst) || (journal?.placedEntry(dst, st) ?? false);
  /** Whether `p` lies strictly inside `to`. */
  const insideTo = (p: Buffer): boolean => to !== null && p.length > to.length + 1 && p[to.length] === SLASH && p.subarray(0, to.length).equals(to);
  /**
   * Makes directory `dir`. Restoring owners, it gets its owner and mode at
   * once, so that a restore stopped midway leaves folders their users can
   * use. That owner may then add, remove or swap entries in it while it is
   * filled, which leads nowhere: every call goes through folder descriptors
   * (anchor.ts), files are created O_EXCL, metadata goes onto the entry
   * itself. Without descriptors (no /proc), or not restoring owners (its
   * mode might not let us write in it), it stays 0700 until its metadata is
   * set at the end.
   */
  const makeDir = (dir: Buffer, e: VolumeEntry | null) => {
    journal?.about(dir); // (a kill between mkdir and its record loses nothing)
    try {
      mkdirSync(A(dir), { mode: 0o700 });
    } catch (err) {
      journal?.notMade(dir);
      throw err;
    }
    freshDirs.add(dir.toString('latin1'));
    record(dir);
    if (e && owners && anchored.enabled) {
      try {
        setDirMeta(dir, e);
      } catch (err) {
        warn({ code: 'RESTORE_META', message: `cannot set the owner and mode of ${printable(dir)}: ${(err as Error).message}`, path: dir });
      }
    }
  };
  /** Owner (when restoring owners) and mode of a folder, set on the folder itself (see setMetaNoFollow). */
  const setDirMeta = (dir: Buffer, e: VolumeEntry) => setMetaNoFollow(A(dir), 'dir', e.mode, owners ? e : null);
  const dirMetas: DirMeta[] = [];
  const linkFirsts = new Map<number, Buffer>(); // link group -> restored path of its data
  const keptAnchors = new Set<number>(); // groups whose data is a file found in place and left there
  const hardlinks: VolumeEntry[] = [];
  let xattrBatch: { path: Buffer; xattrs: Xattr[] }[] = [];
  let nextPartKey = 1;
  const inPlace: { dst: Buffer; e: VolumeEntry; timesSet: boolean; xattrsSet: boolean }[] = []; // written by the writer thread, path metadata to set

  const flushXattrs = async () => {
    const batch = xattrBatch;
    xattrBatch = [];
    if (batch.length === 0) return;
    const r = await run('setfattr', ['-h', '--restore=-'], formatSetfattr(batch));
    if (r.missing) {
      warn({ code: 'RESTORE_META', message: 'setfattr (package attr) is not installed: extended attributes and ACLs were not restored' });
      return;
    }
    for (const line of r.stderr.toString('utf8').split('\n')) {
      if (line.trim()) warn({ code: 'RESTORE_META', message: `cannot set extended attributes: ${line.replace(/^setfattr: /, '')}` });
    }
  };
  const queueXattrs = async (path: Buffer, xattrs: Xattr[]) => {
    if (xattrs.length === 0) return;
    xattrBatch.push({ path: A(path), xattrs });
    // one setfattr spawn per batch, and a spawn forks this whole process: large batches
    if (xattrBatch.length >= 2048) await flushXattrs();
  };

  /**
   * Xattrs of an entry in place. security.* and trusted.* ones (file
   * capabilities) in a folder other users can write never go on by name:
   * another user could have put their own program there meanwhile and had
   * it get them. `onEntry` sets them on the entry itself, or says why not.
   */
  const guardedXattrs = async (dst: Buffer, e: VolumeEntry, onEntry: () => Promise<string>) => {
    if (!e.xattrs.some(sensitiveXattr) || anchored.rootOnlyParent(dst)) return queueXattrs(dst, e.xattrs);
    const r = helper ? await onEntry() : 'perl is needed to set them safely in a folder other users can write';
    if (r !== 'ok') warn({ code: 'RESTORE_META', message: `cannot set the extended attributes of ${printable(dst)}: ${r}`, path: dst });
  };
  /** Xattrs as the helper takes them: names and values in hex. */
  const hexXattrs = (xattrs: Xattr[]): string[] => xattrs.flatMap((x) => [Buffer.from(x.name, 'latin1').toString('hex'), x.value.toString('hex')]);
  /**
   * A regular file's, through descriptor `fd` (the one an equal file was
   * compared through). Files the writer makes get theirs from the writer
   * (WriteJob.fdXattrs).
   */
  const fileXattrs = (dst: Buffer, e: VolumeEntry, fd: number | undefined) =>
    guardedXattrs(dst, e, async () => (fd === undefined ? 'not set: the file is no longer open' : helper!.call('x', Buffer.from(`/proc/${process.pid}/fd/${fd}`), hexXattrs(e.xattrs).join(' '))));
  /** A folder's, symlink's or node's: the helper opens it O_PATH | O_NOFOLLOW, checks its type and sets them through /proc/self/fd. */
  const entryXattrs = (dst: Buffer, e: VolumeEntry) =>
    guardedXattrs(dst, e, () => helper!.call('X', A(dst), [TYPE_BITS[e.type].toString(8), ...hexXattrs(e.xattrs)].join(' ')));

  /** Default place of an entry: its original path, under `to` when given. */
  const placeOf = (path: Buffer): Buffer => {
    if (!to) return path;
    if (path.length === 1 && path[0] === SLASH) return to;
    return join(to, path.subarray(1));
  };

  /** Where an entry goes: under its parent's restored place (which may have been redirected), or undefined to skip it. */
  const dstOf = (e: VolumeEntry): Buffer | undefined => {
    if (e.parent !== null && dirDst.has(e.parent)) {
      const p = dirDst.get(e.parent)!;
      return p === null ? undefined : join(p, baseName(e.path));
    }
    return placeOf(e.path);
  };

  /** Makes sure the directory that will hold `dst` exists, creating missing ancestors with their stored metadata. */
  const ensureParent = async (origPath: Buffer, dst: Buffer): Promise<void> => {
    const key = parentKey(dst);
    if (key === null || knownDirs.has(key)) return;
    const pdst = parentPath(dst)!;
    const porig = parentPath(origPath);
    const st = lstatAt(pdst);
    if (st && heldByAnother(pdst)) {
      throw new Error(`${printable(pdst)} is another entry's, under a name in another letter case: the file system there does not tell case apart`);
    }
    if (st?.isDirectory() || (st?.isSymbolicLink() && anchored.trustedLink(pdst))) {
      // Its ancestors up to `to` must be directories too, not symlinks: one
      // would lead what is restored (with --path, whose parents are not
      // entries of their own) out of the target. One that is not throws.
      if (porig && insideTo(pdst)) await ensureParent(porig, pdst);
      knownDirs.add(key);
      if (madeBefore(pdst, st)) {
        // made by the unfinished run, which never set its metadata: set it now
        const stored = porig ? reader.stat(porig) : null;
        if (stored && stored.type === 'dir') dirMetas.push({ dst: pdst, e: stored });
      }
      return;
    }
    if (porig) await ensureParent(porig, pdst);
    const made = porig ? reader.stat(porig) : null;
    try {
      makeDir(pdst, made && made.type === 'dir' ? made : null);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // never write through a symlink or into a file that stands where a directory goes
      if (!lstatAt(pdst)?.isDirectory()) throw new Error(`${printable(pdst)} is in the way (not a directory)`);
    }
    knownDirs.add(key);
    const stored = porig ? reader.stat(porig) : null;
    if (stored && stored.type === 'dir') dirMetas.push({ dst: pdst, e: stored });
  };

  const applyOwner = (path: Buffer, e: VolumeEntry) => {
    if (!owners) return;
    try {
      lchownSync(A(path), e.uid, e.gid);
    } catch (err) {
      warn({ code: 'RESTORE_META', message: `cannot set the owner of ${printable(path)}: ${(err as Error).message}`, path });
    }
  };

  /** Owner, mode, xattrs and times of a symlink or node now in place at `dst` (regular files: fileMeta). */
  const applyMeta = async (dst: Buffer, e: VolumeEntry) => {
    if (e.type === 'symlink') {
      if (owners && helper) {
        const r = await helper.call('o', A(dst), `${e.uid} ${e.gid}`);
        if (r !== 'ok') warn({ code: 'RESTORE_META', message: `cannot set the owner of ${printable(dst)}: ${r}`, path: dst });
      } else applyOwner(dst, e);
    } else {
      try {
        setMetaNoFollow(A(dst), 'node', e.mode, owners ? e : null);
      } catch (err) {
        warn({ code: 'RESTORE_META', message: `cannot set the owner and mode of ${printable(dst)}: ${(err as Error).message}`, path: dst });
      }
    }
    await entryXattrs(dst, e);
    await times.set(A(dst), e.atimeNs, e.mtimeNs);
  };

  /**
   * Owner, mode, xattrs and times of an existing regular file found equal to
   * the backup, through the descriptor it was compared through: by name,
   * another user could put their own program there in between and have it
   * made root's and setuid.
   */
  const fileMeta = async (fh: FileHandle, dst: Buffer, e: VolumeEntry) => {
    if (owners) await metaStep(dst, 'owner', () => fh.chown(e.uid, e.gid));
    await metaStep(dst, 'mode', () => fh.chmod(e.mode)); // after chown, which clears setuid/setgid
    await fileXattrs(dst, e, fh.fd);
    await times.set(A(dst), e.atimeNs, e.mtimeNs);
  };

  const mknodAt = async (path: Buffer, e: VolumeEntry): Promise<void> => {
    const fmt = { chardev: C.S_IFCHR, blockdev: C.S_IFBLK, fifo: C.S_IFIFO, socket: C.S_IFSOCK }[e.type as 'fifo'];
    if (helper) {
      const r = await helper.call('n', A(path), `${fmt | 0o600} ${e.type === 'chardev' || e.type === 'blockdev' ? e.rdev : 0n}`);
      if (r !== 'ok') throw new Error(`mknod: ${r}`);
      return;
    }
    if (e.type === 'socket') throw new Error('sockets can only be recreated with perl available');
    const name = printable(A(path));
    if (!Buffer.from(name).equals(A(path))) throw new Error('without perl, nodes with non-UTF-8 paths cannot be made');
    const [maj, min] = splitDev(e.rdev);
    const args = e.type === 'fifo' ? ['-m', '600', name, 'p'] : ['-m', '600', name, e.type === 'chardev' ? 'c' : 'b', String(maj), String(min)];
    const r = await run('mknod', args);
    if (r.code !== 0) throw new Error(`mknod: ${r.stderr.toString().trim() || 'failed'}`);
  };

  /** Whether the existing entry at dst already is what the backup holds (content and kind; metadata is re-applied). */
  const sameAsBackup = async (e: VolumeEntry, dst: Buffer, st: Stats, onSame?: OnSame): Promise<boolean> => {
    switch (e.type) {
      case 'file':
        if (!st.isFile() || st.size !== e.size) return false;
        return sameContent(reader, e, A(dst), onSame);
      case 'symlink':
        if (!st.isSymbolicLink()) return false;
        try {
          return readlinkSync(A(dst), { encoding: 'buffer' }).equals(e.target ?? Buffer.alloc(0));
        } catch {
          return false;
        }
      case 'fifo':
        return st.isFIFO();
      case 'socket':
        return st.isSocket();
      case 'chardev':
        return st.isCharacterDevice() && BigInt(st.rdev) === e.rdev;
      case 'blockdev':
        return st.isBlockDevice() && BigInt(st.rdev) === e.rdev;
      default:
        return false;
    }
  };

  /**
   * Creates a non-directory at a temporary name, renames it onto dst and
   * sets its metadata; `placed` runs once it is in place. Regular files go
   * to the writer thread and are in place later (or fail with a warning);
   * the rest is done here and now.
   */
  const createAt = async (dst: Buffer, e: VolumeEntry, data: VolumeEntry, fresh: boolean, placed: () => void): Promise<void> => {
    const direct = fresh && marker.active;
    // (written at dst itself when direct: no temporary name to make)
    const tmp = direct ? dst : join(parentPath(dst)!, Buffer.from(`.ferry-partial-${e.id}`));
    // in a folder no run of this restore made: written down first, so that a
    // run stopped after the rename and before the metadata is finished by the next
    if (!fresh && !inEarlierDir(dst)) journal?.aboutEntry(dst);
    if (e.type === 'file' || e.type === 'hardlink') {
      await handOver(tmp, dst, e, data, direct, fresh, placed);
      return;
    }
    // symlinks and nodes appear whole; in a fresh directory of a marked `to`, at their name
    const at = direct ? dst : tmp;
    if (!fresh) clear(A(tmp));
    if (e.type === 'symlink') symlinkSync(e.target ?? Buffer.alloc(0), A(at));
    else await mknodAt(at, e);
    if (!direct) renameSync(A(tmp), A(dst));
    await applyMeta(dst, e);
    placed();
  };

  /**
   * Reads a file's data and gives it to the writer thread: whole when it is
   * small, else in parts of about PART_BYTES cut at chunk boundaries.
   */
  const handOver = async (tmp: Buffer, dst: Buffer, e: VolumeEntry, data: VolumeEntry, direct: boolean, fresh: boolean, placed: () => void): Promise<void> => {
    let stored = 0;
    for (const x of data.extents) stored += x.length;
    // times, in the writer through the descriptor: the addon's futimens; without it Node's futimes where exact
    // to the microsecond, else the helper sets them by name after the file is in place
    const exactUs = microExact(e.atimeNs, e.mtimeNs);
    // (with the addon, always its futimens: whole numbers, no seconds as a double)
    const timesNs = nsTimes ? timeParts(e.atimeNs, e.mtimeNs) : undefined;
    const exact = exactUs || timesNs !== undefined;
    const cs = reader.chunkSize;
    const key = nextPartKey++;
    let pieces: { offset: number; data: Buffer }[] = [];
    let partBase = 0;
    let partBytes = 0;
    let first = true;
    let failed = false;
    let reportedBad = false;
    const report = (r: WriteResult, last: boolean) => {
      if (r.badOffset !== undefined && !reportedBad) {
        reportedBad = true;
        warn({ code: 'VOLUME_BAD_CHUNK', message: `${printable(e.path)}: data at offset ${r.badOffset} does not match its checksum; restored as read`, path: e.path });
      }
      for (const w of r.warnings ?? []) warn({ code: 'RESTORE_META', message: `${printable(dst)}: ${w}`, path: dst });
      if (!r.ok) {
        if (!failed) warn({ code: 'RESTORE_FAILED', message: `cannot restore ${printable(e.path)}: ${nameRefused(r.errno, dst) ?? r.error}`, path: e.path, errno: r.errno });
        failed = true;
        return;
      }
      if (!last || failed) return;
      result.bytes += stored;
      if ((e.xattrs.length && !viaFd) || !exact) inPlace.push({ dst, e, timesSet: exact, xattrsSet: viaFd });
      placed();
    };
    // capabilities in a folder others can write: set by the writer, through the file's descriptor
    const viaFd = e.xattrs.some(sensitiveXattr) && !anchored.rootOnlyParent(dst);
    const dstAt = A(dst);
    const tmpAt = direct ? dstAt : A(tmp);
    const atime = exact ? usSeconds(e.atimeNs) : null;
    const mtime = exact ? usSeconds(e.mtimeNs) : null;
    // (each job a literal of its own: an object spread of a common base cost about 3 us and 2 KB a file)
    const job = (pieces: WriteJob['pieces'], part: WriteJob['part'], abort: boolean): WriteJob => ({
      tmp: tmpAt, dst: dstAt, fresh, direct, pieces, size: data.size, sparse: stored < data.size,
      uid: owners ? e.uid : null, gid: owners ? e.gid : null, mode: e.mode, atime, mtime, timesNs,
      // the writer thread checks the chunk sums, off this thread
      check: { chunkSize: cs, chunks: data.chunks },
      part, abort, fdXattrs: viaFd ? e.xattrs : undefined,
    });
    const send = async (end: number, last: boolean) => {
      // a file sent in one go needs no part
      const j = job(pieces, first && last ? undefined : { key, first, last, base: partBase, end }, false);
      first = false;
      pieces = [];
      partBytes = 0;
      partBase = end;
      await writer.write(j, (r) => report(r, last));
    };
    try {
      const x = reader.oneExtent(data);
      if (x) {
        // Most files: in one extent, read a part at a time (one, for all
        // but large files), lent by the stored disk where it can (views of
        // its blocks: no copy; the writer gives them back once written).
        const step = Math.max(cs, Math.floor(PART_BYTES / cs) * cs);
        for (let from = 0; from < x.length; from += step) {
          if (from > 0) await send(from, false);
          let at = from;
          for (const b of await reader.readSpan(x, from, Math.min(step, x.length - from))) {
            pieces.push({ offset: at, data: b });
            at += b.length;
          }
          countRead(at - from);
        }
      } else {
        for await (const p of reader.readData(data, { check: false })) {
          // each piece lies within one chunk, and they come in order
          const chunkStart = Math.floor(p.offset / cs) * cs;
          if (partBytes >= PART_BYTES && chunkStart > partBase) await send(chunkStart, false);
          // Disk.read hands out buffers of their own: they can move to the writer without a copy
          if (p.data.length) {
            pieces.push({ offset: p.offset, data: p.data });
            partBytes += p.data.length;
          }
          countRead(p.data.length);
        }
      }
    } catch (err) {
      for (const p of pieces) freeBuffer(p.data); // (read, or lent, and not handed over)
      // parts already written: the writer closes the file and removes it
      if (!first) await writer.write(job([], { key, first: false, last: true, base: partBase, end: partBase }, true), () => {});
      throw err;
    }
    await send(data.size, true);
  };

  /** Sets what needs a path (xattrs, nanosecond times) on files the writer has put in place. */
  const settle = async () => {
    while (inPlace.length) {
      for (const p of inPlace.splice(0)) {
        await metaStep(p.dst, 'extended attributes and times', async () => {
          if (!p.xattrsSet) await fileXattrs(p.dst, p.e, undefined);
          if (!p.timesSet) await times.set(A(p.dst), p.e.atimeNs, p.e.mtimeNs);
        });
      }
    }
  };

  /**
   * One metadata step of an entry already in place: a failure (it was
   * moved, removed or replaced by someone meanwhile) is a warning, and the
   * other entries go on.
   */
  const metaStep = async (dst: Buffer, what: string, f: () => Promise<void>): Promise<void> => {
    try {
      await f();
    } catch (err) {
      warn({ code: 'RESTORE_META', message: `cannot set the ${what} of ${printable(dst)}: ${(err as Error).message}`, path: dst, errno: (err as NodeJS.ErrnoException).code });
    }
  };

  /** Waits for the writer thread, then finishes the metadata of what it wrote. */
  const drainWriter = async () => {
    await writer.drain();
    await settle();
  };

  /**
   * Closes the folders' descriptors once there are many: first everything
   * queued that names entries through them is done (the writer, xattrs,
   * times), so no name outlives its descriptor.
   */
  const trim = async () => {
    if (anchored.count < maxOpenFolders()) return;
    await drainWriter();
    await flushXattrs();
    await times.drain();
    anchored.close();
  };

  /** The n-th name beside `dst` for a copy (`.ferry-restored-<point>`, then `.2`, `.3` ... after it); stays within NAME_MAX bytes. */
  const copyName = (dst: Buffer, n = 1): Buffer => {
    const suffix = Buffer.from(`.ferry-restored-${pointLabel}${n > 1 ? `.${n}` : ''}`);
    let name = baseName(dst);
    if (name.length + suffix.length > NAME_MAX) name = name.subarray(0, Math.max(1, NAME_MAX - suffix.length));
    return join(parentPath(dst)!, Buffer.concat([name, suffix]));
  };
  /**
   * Where the copy of `dst` goes under --if-exists copy: the first copy name
   * where nothing is, or one that holds this very entry already (`ours`: a
   * run before made it; then `made`). Whatever else is there (a file of the
   * user's that happens to bear the name) is never written over.
   */
  const copyPlace = async (dst: Buffer, ours: (c: Buffer, st: Stats) => boolean | Promise<boolean>): Promise<{ at: Buffer; made: boolean }> => {
    for (let n = 1; ; n++) {
      const at = copyName(dst, n);
      const cst = existing(at);
      if (!cst) return { at, made: false };
      if (await ours(at, cst)) return { at, made: true };
    }
  };

  const existing = (p: Buffer): Stats | null => lstatAt(p) ?? null;

  /**
   * Whether the entry found at `dst` is under another name: on a file system
   * that does not tell letter case apart (FAT, exFAT, NTFS) `readme` finds
   * README, another entry's file, which must be neither replaced nor taken
   * for this one. Each folder's names are read once, and again before
   * saying yes (names made since).
   */
  const listings = new Map<string, Set<string>>(); // the last LISTINGS_KEPT folders' (a miss only reads again)
  const heldByAnother = (dst: Buffer): boolean => {
    const dir = parentPath(dst);
    if (!dir) return false; // (/ itself)
    const key = dir.toString('latin1');
    const name = baseName(dst).toString('latin1');
    for (const fresh of [false, true]) {
      let names = fresh ? undefined : listings.get(key);
      if (!names) {
        try {
          names = new Set(readdirSync(A(dir), { encoding: 'buffer' }).map((n) => n.toString('latin1')));
        } catch {
          return false;
        }
        listings.delete(key);
        listings.set(key, names);
        if (listings.size > LISTINGS_KEPT) listings.delete(listings.keys().next().value!);
      }
      if (names.has(name)) return false;
    }
    return true;
  };
  /**
   * A create refused for the name itself, said so: FAT, exFAT and NTFS
   * refuse : ? * " < > | \\ and control characters (ENOENT, EINVAL), and
   * bytes that are not UTF-8 (EILSEQ). Null for any other failure.
   */
  const nameRefused = (errno: string | undefined, dst: Buffer): string | null => {
    const refused = errno === 'EINVAL' || errno === 'EILSEQ' || (errno === 'ENOENT' && existing(parentPath(dst)!)?.isDirectory());
    return refused ? `the file system there cannot hold its name (${errno}: FAT, exFAT and NTFS refuse : ? * " < > | \\, control characters and names that are not UTF-8); restore it to a Linux file system` : null;
  };
  /**
   * link(), or false where the file system refuses it (no hard links, as FAT
   * and exFAT; all the links a file may have; EXDEV: a file system mounted
   * inside the target): the name then gets a copy of the data instead.
   */
  const linked = (from: Buffer, at: Buffer): boolean => {
    try {
      linkSync(A(from), A(at));
      return true;
    } catch (err) {
      if (linkRefused(err) || (err as NodeJS.ErrnoException).code === 'EXDEV') return false;
      throw err;
    }
  };
  const caseClash = (e: VolumeEntry) =>
    warn({
      code: 'RESTORE_FAILED',
      message: `cannot restore ${printable(e.path)}: the file system there does not tell letter case apart, and another entry already holds the name in another case (restore it elsewhere with --path and --to)`,
      path: e.path,
    });

  /**
   * `overwrite` and a directory where a file goes: it is renamed aside
   * (`.ferry-replaced-N` beside it) and removed only once the file is in
   * place; if the file never gets there (full disk, a failed read), it is
   * put back (see putBackAsides).
   */
  const asides: { dst: Buffer; aside: Buffer }[] = [];
  const removeDirInTheWay = (dst: Buffer, id: number) => {
    anchored.forget(dst);
    if (inLeftover(dst)) {
      removeTree(A(dst));
      return;
    }
    const aside = asideOf(dst, id);
    renameSync(A(dst), A(aside));
    asides.push({ dst, aside });
  };
  /** Where the folder in the way of entry `id` at `dst` is kept until the file is in place. */
  const asideOf = (dst: Buffer, id: number) => join(parentPath(dst)!, Buffer.from(`.ferry-replaced-${id}`));
  /** A folder a stopped run moved aside for entry `id`: settled now. */
  const settleAside = (dst: Buffer, id: number) => {
    const aside = asideOf(dst, id);
    if (existing(aside)) settleFolder(dst, aside);
  };
  /** With the file in place the folder was replaced as asked, and goes; without, it goes back. */
  const settleFolder = (dst: Buffer, aside: Buffer) => {
    anchored.forget(aside);
    if (!existing(dst)) {
      renameSync(A(aside), A(dst));
      return;
    }
    // what the folder held is not in the backup: gone, and said so (an empty one goes unsaid)
    let held = 0;
    try {
      held = readdirSync(A(aside)).length;
    } catch {
      /* (gone meanwhile: nothing to say) */
    }
    removeTree(A(aside));
    if (held) warn({ code: 'RESTORE_REPLACED', message: `${printable(dst)} was a folder of ${held} ${held === 1 ? 'entry' : 'entries'} where the backup has a file: replaced by the file, and what it held removed (--if-exists overwrite)`, path: dst });
  };
  const putBackAsides = () => {
    for (const { dst, aside } of asides.splice(0)) {
      try {
        settleFolder(dst, aside);
      } catch (err) {
        warn({ code: 'RESTORE_META', message: `${printable(dst)}: the folder that stood there is kept as ${printable(aside)} (${(err as Error).message})`, path: dst });
      }
    }
  };

  /** Whether `dst` is an unfinished earlier restore's work (not the user's). */
  const inLeftover = (dst: Buffer): boolean => inherited && insideTo(dst);

  /** Whether `dst` lies in a directory this run created. */
  const inFresh = (dst: Buffer): boolean => {
    const key = parentKey(dst);
    return key !== null && freshDirs.has(key);
  };

  /** Decides where a non-directory goes given the policy: a path, or null to leave it. */
  const resolveConflict = async (e: VolumeEntry, dst: Buffer, dataEntry: VolumeEntry): Promise<{ dst: Buffer; copy: boolean } | 'unchanged' | 'skipped'> => {
    settleAside(dst, e.id);
    const st = existing(dst);
    if (!st) return { dst, copy: false };
    if (heldByAnother(dst)) {
      caseClash(e);
      return 'skipped';
    }
    // the temporary name of a run stopped while it wrote this entry: never left behind
    const partial = join(parentPath(dst)!, Buffer.from(`.ferry-partial-${e.id}`));
    if (existing(partial)) clear(A(partial));
    // A file the backup holds without hard links that has some here (one to
    // a file outside what is restored): its metadata is not ours to change,
    // so `overwrite` replaces it rather than set it.
    // And an equal file in a folder another user can write, when its metadata
    // would give it an owner, setuid or setgid bits or capabilities: that user
    // may have made it and still hold it open or mapped for writing, so it is
    // replaced by a fresh copy rather than given that power in place.
    const grants = owners && (st.uid !== e.uid || st.gid !== e.gid || (e.mode & 0o6000) !== 0 || e.xattrs.some(sensitiveXattr));
    const shared = st.isFile() && ((st.nlink > 1 && e.linkGroup === null) || (grants && !anchored.rootOnlyParent(dst)));
    // (an interrupted run may have stopped before the metadata)
    const metaNow = ifExists === 'overwrite' || placedBefore(dst, st);
    const compared = dataEntry === e ? e : { ...dataEntry, type: 'file' as const };
    const onSame: OnSame | undefined = metaNow && !shared && compared.type === 'file' ? (fh) => fileMeta(fh, dst, e) : undefined;
    if (await sameAsBackup(compared, dst, st, onSame)) {
      if (!(shared && metaNow)) {
        result.skipped++;
        result.unchanged++;
        if (metaNow && !onSame) await applyMeta(dst, e);
        return 'unchanged';
      }
    }
    // an interrupted run's unfinished work is replaced, whatever the policy
    if (ifExists === 'skip' && !inLeftover(dst)) {
      result.skipped++;
      opts.onNote?.({ path: dst, message: `${printable(anchored.displayPath(dst))} differs from the backup: left as it is (--if-exists skip)` });
      return 'skipped';
    }
    if (ifExists === 'copy' && !inLeftover(dst)) {
      const { at: c, made } = await copyPlace(dst, (at, cst) => !cst.isDirectory() && sameAsBackup(compared, at, cst));
      if (made) {
        // the entry here differs (not "equal"); the backup's is beside it already: its links go to that
        result.skipped++;
        result.copiesFound++;
        if (e.linkGroup !== null) {
          linkFirsts.set(e.linkGroup, c);
          keptAnchors.add(e.linkGroup);
        }
        opts.onNote?.({ path: dst, message: `${printable(anchored.displayPath(dst))} differs from the backup: its copy ${printable(baseName(c))}, written by a run before, is there already` });
        return 'skipped';
      }
      opts.onNote?.({ path: dst, message: `${printable(anchored.displayPath(dst))} differs from the backup: the backup's is written beside it as ${printable(baseName(c))}` });
      return { dst: c, copy: true };
    }
    if (st.isDirectory()) removeDirInTheWay(dst, e.id);
    return { dst, copy: false };
  };

  const restoreDir = async (e: VolumeEntry, dst: Buffer) => {
    if (to && dst === to) {
      // the target root itself stays as the user made it
      const made = mkdirpSync(to);
      dirDst.set(e.id, to);
      knownDirs.add(to.toString('latin1'));
      if (made !== undefined) freshDirs.add(to.toString('latin1'));
      return;
    }
    const st = inFresh(dst) ? null : existing(dst);
    if (st && heldByAnother(dst)) {
      // another entry's folder (Docs for docs): nothing of this one goes into it
      dirDst.set(e.id, null);
      caseClash(e);
      return;
    }
    if (st?.isDirectory()) {
      const key = dst.toString('latin1');
      dirDst.set(e.id, dst);
      knownDirs.add(key);
      // an interrupted run made it and never set its metadata: set now, as for a new one
      const earlier = madeBefore(dst, st);
      if (earlier) earlierDirs.add(key);
      if (earlier || (ifExists === 'overwrite' && !e.implicit)) dirMetas.push({ dst, e });
      result.skipped++;
      result.unchanged++;
      return;
    }
    if (st?.isSymbolicLink() && e.implicit) {
      // A folder the backup only passed through (to what was given), now a
      // symlink: root's own (/home -> /data/home) is followed; another
      // user's is neither followed nor replaced.
      if (anchored.trustedLink(dst)) {
        dirDst.set(e.id, dst);
        knownDirs.add(dst.toString('latin1'));
        result.skipped++;
        result.unchanged++;
        return;
      }
      if (ifExists === 'overwrite') {
        dirDst.set(e.id, null);
        result.skipped++;
        warn({ code: 'RESTORE_SKIPPED', message: `${printable(dst)} is a symlink where the backup only passes through a folder: neither followed nor replaced, and nothing under it restored (restore with --to into a new folder)`, path: e.path });
        return;
      }
    }
    let place = dst;
    if (st) {
      if (ifExists === 'skip') {
        dirDst.set(e.id, null);
        result.skipped++;
        // a whole subtree left out: say so
        warn({ code: 'RESTORE_SKIPPED', message: `${printable(dst)} is ${st.isSymbolicLink() ? 'a symlink' : 'not a folder'} where the backup has a folder: left as it is, and nothing under it restored (--if-exists skip)`, path: e.path });
        return;
      }
      if (ifExists === 'copy') {
        // a folder at a copy name is taken for a run before's copy and filled again; anything else there is left alone
        const c = await copyPlace(dst, (_at, cst) => cst.isDirectory());
        place = c.at;
        if (!c.made) makeDir(place, e);
        result.copies++;
      } else {
        anchored.forget(dst);
        removeTree(A(dst));
        makeDir(dst, e);
      }
    } else {
      makeDir(dst, e);
    }
    dirDst.set(e.id, place);
    knownDirs.add(place.toString('latin1'));
    dirMetas.push({ dst: place, e });
    result.restored++;
  };

  const restoreOne = async (e: VolumeEntry, dataEntry: VolumeEntry = e) => {
    const dst = dstOf(e);
    if (dst === undefined) {
      if (e.type === 'dir') dirDst.set(e.id, null);
      return;
    }
    // (the name compared first, in place: most entries go no further)
    if (to && dst.length > MARKER_BUF.length && dst.compare(MARKER_BUF, 0, MARKER_BUF.length, dst.length - MARKER_BUF.length) === 0 && baseName(dst).equals(MARKER_BUF) && parentPath(dst)?.equals(to)) {
      // it would pass for (or replace) the marker of an unfinished restore
      warn({ code: 'RESTORE_UNSUPPORTED', message: `${printable(e.path)} is not restored: ${MARKER_NAME} is the name of ferry's marker at the top of a target`, path: e.path });
      if (e.type === 'dir') dirDst.set(e.id, null);
      return;
    }
    try {
      await ensureParent(e.path, dst);
      if (e.type === 'dir') {
        await restoreDir(e, dst);
        return;
      }
      const fresh = inFresh(dst);
      const r = fresh ? { dst, copy: false } : await resolveConflict(e, dst, dataEntry);
      if (r === 'unchanged' || r === 'skipped') {
        // links of an unchanged file link to it; of a skipped (different) one, nothing links
        if (r === 'unchanged' && e.linkGroup !== null) {
          linkFirsts.set(e.linkGroup, dst);
          keptAnchors.add(e.linkGroup);
        }
        return;
      }
      if (e.type === 'socket' && !helper) {
        warn({ code: 'RESTORE_UNSUPPORTED', message: `${printable(e.path)} is a socket: not recreated (needs perl)`, path: e.path });
        return;
      }
      await createAt(r.dst, e, dataEntry, fresh, () => {
        if (e.linkGroup !== null) linkFirsts.set(e.linkGroup, r.dst);
        if (r.copy) result.copies++;
        result.restored++;
      });
    } catch (err) {
      warn({ code: 'RESTORE_FAILED', message: `cannot restore ${printable(e.path)}: ${(err as Error).message}`, path: e.path, errno: (err as NodeJS.ErrnoException).code });
      if (e.type === 'dir') dirDst.set(e.id, null);
    }
  };

  // ---- selection
  let sources: Iterable<VolumeEntry>[];
  let selected: (e: VolumeEntry) => boolean = () => true;
  if (paths.length === 0) sources = [reader.entries()];
  else if (paths.every((p) => (Buffer.isBuffer(p) ? p[0] === SLASH : p.startsWith('/') && !hasGlob(p)))) {
    // exact absolute paths: read just those subtrees
    const seen = new Set<number>();
    const roots = paths.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p)));
    sources = roots.map((r) => reader.entries({ under: r }));
    selected = (e) => (seen.has(e.id) ? false : (seen.add(e.id), true));
  } else {
    // (an exact path among globs: its glob characters escaped)
    const sel = compileSelectors(paths.map((p) => (Buffer.isBuffer(p) ? p.toString('utf8').replace(/[*?[\\]/g, '\\$&') : p)));
    sources = [reader.entries()];
    selected = (e) => sel(e.path);
  }

  // Threads and the helper process start last, once nothing above can refuse
  // the job: a throw between here and the try would leave them running.
  const helper = await SyscallHelper.start();
  const times = new TimeSetter(helper, warn);
  /** The writer thread sets files' nanosecond times itself (the addon's futimens). */
  const nsTimes = nativeAddon()?.futimens !== undefined;
  const writer = new FileWriter();
  try {
    // ---- pass 1: everything but hard links, one at a time in catalog order:
    // that is the order of the data in the volume, so the stored disk's
    // read-ahead sees one sequential reader and fetches and unseals every
    // block once (four files at once made it unseal each block about four
    // times over: a large file and the small ones after it pulled on
    // different blocks and evicted each other's)
    fill: for (const src of sources) {
      for (const e of src) {
        if (stopped) break fill;
        if (!selected(e)) continue;
        handled++;
        if (e.type === 'hardlink') {
          hardlinks.push(e);
          continue;
        }
        await restoreOne(e);
        progress();
        if (inPlace.length >= 256) await settle();
        await trim();
      }
    }
    await drainWriter();
    // ---- pass 2: hard links, to the first restored member of their group
    // (none once the run stopped, its target full or read-only: the folders' metadata below still goes on)
    const members = new Map<number, VolumeEntry[]>(); // (only for groups whose data was found in place)
    for (const e of keptAnchors.size ? hardlinks : []) if (e.linkGroup !== null && keptAnchors.has(e.linkGroup)) members.set(e.linkGroup, [...(members.get(e.linkGroup) ?? []), e]);
    for (const e of stopped ? [] : hardlinks) {
      const dst = dstOf(e);
      if (dst === undefined) continue;
      const group = e.linkGroup;
      if (group !== null && keptAnchors.delete(group)) {
        // A file found in place that has links besides the group's own (to a
        // file outside what is restored): the group's new links must not join
        // it. This link carries the data instead, and the others link to it.
        const at = linkFirsts.get(group)!;
        const ast = existing(at);
        const first = reader.get(group);
        let ours = 0;
        for (const m of [...(first ? [first] : []), ...(members.get(group) ?? [])]) {
          const md = dstOf(m);
          const ms = md ? existing(md) : null;
          if (ms && ast && ms.ino === ast.ino && ms.dev === ast.dev) ours++;
        }
        if (!ast || ast.nlink > Math.max(ours, 1)) linkFirsts.delete(group);
      }
      const firstDst = group !== null ? linkFirsts.get(group) : undefined;
      const first = group !== null ? reader.get(group) : null;
      if (firstDst === undefined || !first) {
        // the group's data was not restored here (not selected): this link carries it
        if (!first || first.type !== 'file') {
          warn({ code: 'RESTORE_FAILED', message: `cannot restore ${printable(e.path)}: the file it is a hard link of is not in the volume`, path: e.path });
          continue;
        }
        await restoreOne({ ...e, type: 'file', linkGroup: group, extents: first.extents, chunks: first.chunks, size: first.size }, first);
        await drainWriter(); // the group's other links link to this one: it must be in place first
        continue;
      }
      try {
        await ensureParent(e.path, dst);
        if (!inFresh(dst)) settleAside(dst, e.id);
        const st = inFresh(dst) ? null : existing(dst);
        if (st && heldByAnother(dst)) {
          caseClash(e);
          continue;
        }
        const fst = st ? existing(firstDst) : null;
        if (st && fst && st.ino === fst.ino && st.dev === fst.dev) {
          result.skipped++;
          result.unchanged++;
          continue;
        }
        let place = dst;
        if (st) {
          if (await sameAsBackup({ ...first, type: 'file' }, dst, st)) {
            if (ifExists !== 'overwrite' && !inLeftover(dst)) {
              result.skipped++;
              result.unchanged++;
              continue;
            }
          } else if (ifExists === 'skip' && !inLeftover(dst)) { // an interrupted run's work is replaced whatever the policy
            result.skipped++;
            continue;
          } else if (ifExists === 'copy' && !inLeftover(dst)) {
            // (a copy name that is already a link of this group's first file: done before)
            const c = await copyPlace(dst, (_at, cst) => fst !== null && cst.ino === fst.ino && cst.dev === fst.dev);
            if (c.made) {
              result.skipped++;
              result.copiesFound++;
              continue;
            }
            place = c.at;
            result.copies++;
          }
          if (place === dst && st.isDirectory()) removeDirInTheWay(dst, e.id);
        }
        let copied = false;
        if (inFresh(place)) {
          copied = !linked(firstDst, place); // a link appears whole, and nothing is in the way
        } else {
          const tmp = join(parentPath(place)!, Buffer.from(`.ferry-partial-${e.id}`));
          clear(A(tmp));
          if (linked(firstDst, tmp)) renameSync(A(tmp), A(place));
          else copied = true;
        }
        if (copied) {
          linksCopied++;
          if (place !== dst) result.copies--; // (restoreOne decides and counts where it goes)
          await restoreOne({ ...e, type: 'file', linkGroup: null, extents: first.extents, chunks: first.chunks, size: first.size }, first);
        } else {
          result.restored++;
        }
      } catch (err) {
        warn({ code: 'RESTORE_FAILED', message: `cannot restore the hard link ${printable(e.path)}: ${(err as Error).message}`, path: e.path });
      }
      progress();
      await trim();
    }
    if (linksCopied > 0) {
      warn({ code: 'RESTORE_LINKS_COPIED', message: `${counted(linksCopied, 'hard link')} restored as separate copies of the data: the file system there refused them (it has no hard links, as FAT and exFAT, or a file had all it may have)` });
    }
    await drainWriter();
    putBackAsides();
    await flushXattrs();
    // ---- directories: deepest first, once their contents are complete
    dirMetas.sort((a, b) => depth(b.dst) - depth(a.dst));
    for (const { dst, e } of dirMetas) {
      await metaStep(dst, 'owner and mode', async () => setDirMeta(dst, e));
      await metaStep(dst, 'extended attributes', () => entryXattrs(dst, e));
      await trim();
    }
    await flushXattrs();
    for (const { dst, e } of dirMetas) {
      await metaStep(dst, 'times', () => times.set(A(dst), e.atimeNs, e.mtimeNs));
      await trim();
    }
    await times.drain();
    if (metaWarnings > META_WARNINGS_SHOWN) {
      opts.onWarning?.({
        code: 'RESTORE_META',
        message: `${counted(metaWarnings - META_WARNINGS_SHOWN, 'more warning')} like those above about owners, modes, times or extended attributes not shown: the file system there may not keep them`,
      });
    }
    if (stopped) throw stoppedBy(stopped, to, result);
    // Nothing is unfinished when every entry made it and the run covered
    // the whole tree: its own new one, or all of the same volume over an
    // unfinished one.
    if (result.failed === 0) journal?.finish(paths.length === 0);
    if (to && marker.active && result.failed === 0 && (!inherited || paths.length === 0)) {
      removeMarker(to);
    } else if (to && (marker.active || marker.other)) {
      const where = printable(join(to, Buffer.from(MARKER_NAME)));
      warn({
        code: 'RESTORE_UNFINISHED',
        message: marker.other
          ? `${where} stays: a restore of another backup into this folder did not finish; run it again to finish it (until then its files there may be cut short)`
          : `${where} stays: ${result.failed ? 'some entries were not restored' : 'this run restored only part of the backup'}; the next restore of this backup into this folder finishes the job whatever --if-exists says`,
        path: to,
      });
    }
  } finally {
    journal?.close();
    await writer.close();
    putBackAsides(); // a run that failed before the end: what was moved aside for it goes back
    await helper?.close();
    anchored.dispose();
  }
  progress();
  return result;
}

/** The error that stops a restore whose target's disk is full, or read-only. */
function stoppedBy(w: EntryWarning, to: Buffer | null, result: RestoreResult): FerryError {
  const where = to ? printable(to) : 'the original places';
  if (w.errno === 'EROFS') {
    return new FerryError(
      'RESTORE_TARGET',
      `cannot restore to ${where}: its file system is read-only${result.restored ? ` (${result.restored} ${result.restored === 1 ? 'entry' : 'entries'}, ${formatSize(result.bytes)} were restored before it)` : ''}; mount it read-write, or name another --to`,
      { to: to ? printable(to) : null, restored: result.restored, bytes: result.bytes },
    );
  }
  return new FerryError(
    'RESTORE_DISK_FULL',
    `the disk is full: ${w.path ? `${printable(w.path)} and what follows it` : 'the rest'} could not be restored to ${where} (${result.restored} ${result.restored === 1 ? 'entry' : 'entries'}, ${formatSize(result.bytes)} were); free space there and run the same restore again: it finishes the job`,
    { to: to ? printable(to) : null, restored: result.restored, bytes: result.bytes },
  );
}

/** The marker state of target `to`, or a clear error when `to` cannot be a target folder. */
function targetOf(to: Buffer, volumeId: string): ReturnType<typeof prepareTarget> {
  try {
    return prepareTarget(to, volumeId);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    let st: Stats | undefined;
    let link: Buffer | null = null;
    try {
      st = lstatSync(to, { throwIfNoEntry: false });
      link = st?.isSymbolicLink() ? readlinkSync(to, { encoding: 'buffer' }) : null;
    } catch {
      /* (a file on the way: ENOTDIR below says it) */
    }
    const kind = st && !st.isDirectory() && !link ? kindOf(st.mode) : null;
    const why = code === 'ENOENT' && link ? `it is a symlink to ${printable(link)}, which is not there`
      : kind ? `it is ${kind}, not a folder`
      : code === 'ENOTDIR' ? 'a file stands where a folder of the path goes' : code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code === 'EROFS' ? 'read-only filesystem' : (err as Error).message;
    throw new FerryError('RESTORE_TARGET', `cannot restore to ${printable(to)}: ${why}; give --to a folder that exists or can be made`, { to: printable(to) });
  }
}

function depth(p: Buffer): number {
  let n = 0;
  for (const c of p) if (c === SLASH) n++;
  return n;
}

function defaultPointLabel(reader: VolumeReader): string {
  const ns = reader.superblock.writtenNs;
  const d = new Date(Number(ns / 1_000_000n));
  return Number.isNaN(d.getTime()) ? 'restore' : d.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

/** Run on a file found equal to the backup, with the descriptor it was read through and its inode number. */
type OnSame = (fh: FileHandle) => Promise<void>;

/**
 * Whether the file at `path` holds exactly the entry's data (checked chunk
 * by chunk against the stored SHA-256); `onSame` runs, when it does, before
 * the file is closed.
 */
async function sameContent(reader: VolumeReader, e: VolumeEntry, path: Buffer, onSame?: OnSame): Promise<boolean> {
  const cs = reader.chunkSize;
  let fh: FileHandle;
  try {
    // O_NOATIME: looking at a file to decide it is unchanged must not change it.
    // O_NONBLOCK: a fifo put there since it was looked at must not hang the restore.
    const flags = C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK;
    fh = await open(path, flags | C.O_NOATIME).catch(() => open(path, flags));
  } catch {
    return false;
  }
  try {
    const st = await fh.stat({ bigint: true });
    // what the caller looked at by name may have been replaced since: this file is the one judged
    if (!st.isFile() || st.size !== BigInt(e.size)) {
      await fh.close();
      return false;
    }
  } catch {
    await fh.close();
    return false;
  }
  try {
    const buf = Buffer.allocUnsafe(cs);
    for (let c = 0; c * cs < e.size; c++) {
      const len = Math.min(cs, e.size - c * cs);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(buf, got, len - got, c * cs + got);
        if (bytesRead === 0) return false;
        got += bytesRead;
      }
      const h = createHash('sha256').update(buf.subarray(0, len)).digest();
      if (!h.equals(e.chunks.subarray(c * 32, c * 32 + 32))) return false;
    }
    await onSame?.(fh);
    return true;
  } finally {
    await fh.close();
  }
}

