// The "every kind of entry" test tree, and a comparer of two trees.
//
// makeTree builds deep paths, 255-byte and non-UTF-8 names, empty, multi-chunk
// and sparse files (one 8 GiB apparent), hard links across folders, dangling
// and odd symlinks, a fifo, a socket, char and block devices, user xattrs and
// POSIX ACLs, odd modes, odd owners and nanosecond times. It is built with
// independent tools (touch, setfacl, setfattr, mknod, mkfifo, perl's bind),
// never with ferry's own code, and needs root.
//
// snapshotTree records everything the comparer checks; diffSnapshots lists
// every difference. What is compared: type, mode, uid, gid, size, mtime (ns),
// atime (ns) of files, fifos, devices and sockets (reading a directory or a
// symlink updates its atime, so there it means nothing), symlink target,
// xattrs, rdev, file content, hard-link structure, and for sparse files that
// the copy is sparse too (allocated blocks within 25% + 64 KiB).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants as C } from 'node:fs';
import { chmod, lchown, lstat, mkdir, open, readdir, readlink, symlink, writeFile, link } from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

export interface TreeOptions {
  /** Apparent size of the big sparse file (8 GiB by default; 0 leaves it out). */
  hugeSparse?: number;
}

function sh(cmd: string, args: string[], input?: Buffer): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString() }));
    // a child that exits without reading its input is not an error
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? Buffer.alloc(0));
  });
}

async function must(cmd: string, args: string[], input?: Buffer): Promise<Buffer> {
  const r = await sh(cmd, args, input);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

function q(p: Buffer): Buffer {
  const parts: Buffer[] = [Buffer.from("'")];
  let s = 0;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0x27) {
      parts.push(p.subarray(s, i), Buffer.from("'\\''"));
      s = i + 1;
    }
  }
  parts.push(p.subarray(s), Buffer.from("'"));
  return Buffer.concat(parts);
}

/** Runs shell lines where paths are raw bytes (non-UTF-8 names cannot be argv strings in Node). */
async function shell(lines: Buffer[]): Promise<void> {
  const r = await sh('sh', ['-e', '-s'], Buffer.concat(lines.flatMap((l) => [l, Buffer.from('\n')])));
  if (r.code !== 0) throw new Error(`shell failed: ${r.stderr}`);
}

const B = (s: string | Buffer) => (Buffer.isBuffer(s) ? s : Buffer.from(s));
const J = (...parts: (string | Buffer)[]) => Buffer.concat(parts.flatMap((p, i) => (i ? [Buffer.from('/'), B(p)] : [B(p)])));

export function pseudoRandom(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i + 4 <= n; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeUInt32LE(x >>> 0, i);
  }
  return out;
}

/** A file of `size` bytes holding only `pieces` (the rest holes). */
export async function writeAt(path: Buffer, pieces: { at: number; data: Buffer }[], size: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    for (const p of pieces) await fh.write(p.data, 0, p.data.length, p.at);
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

/** Names used by the tree, exported so tests can point at entries. */
export const NAMES = {
  long: 'L'.repeat(255),
  nonUtf8: Buffer.from([0x62, 0x61, 0x64, 0x2d, 0xff, 0xfe, 0x2e, 0x74, 0x78, 0x74]), // "bad-\xff\xfe.txt"
  weird: Buffer.from("we ird\nna\\me 'q' =x"),
};

/** Builds the tree under `root` (created). */
export async function makeTree(root: string, opts: TreeOptions = {}): Promise<void> {
  const R = B(root);
  await mkdir(root, { recursive: true });
  const times: Buffer[] = []; // touch lines, run last (deepest first for directories)
  const setTimes = (p: Buffer, atime: string, mtime: string) => {
    times.push(Buffer.concat([Buffer.from(`touch -h -a -d @${atime} -- `), q(p)]));
    times.push(Buffer.concat([Buffer.from(`touch -h -m -d @${mtime} -- `), q(p)]));
  };

  // plain files
  await writeFile(J(R, 'empty'), '');
  await writeFile(J(R, 'hello.txt'), 'hello, ferry\n');
  await writeFile(J(R, 'multi-chunk.bin'), pseudoRandom(3 * MiB + 123, 7));
  await writeFile(J(R, 'zeros-not-sparse.bin'), Buffer.alloc(256 * 1024)); // allocated zeros stay allocated
  setTimes(J(R, 'hello.txt'), '1234567890.123456789', '1234567891.987654321');
  setTimes(J(R, 'multi-chunk.bin'), '-1000000000.000000001', '1500000000.5');

  // names
  await writeFile(J(R, NAMES.long), 'long name');
  await mkdir(J(R, 'D'.repeat(255)));
  await writeFile(J(R, 'D'.repeat(255), NAMES.long), 'long in long');
  await writeFile(J(R, NAMES.nonUtf8), 'not utf-8');
  await writeFile(J(R, NAMES.weird), 'weird');
  await writeFile(J(R, 'ünïcødé ✓'), 'unicode');
  setTimes(J(R, NAMES.nonUtf8), '1600000000.000000777', '1600000001.000000888');

  // deep path (> 4096 bytes would need *at() calls; 40 levels of 60 bytes is 2.4 KB)
  let deep = J(R, 'deep');
  for (let i = 0; i < 40; i++) deep = J(deep, `level-${String(i).padStart(2, '0')}-${'x'.repeat(50)}`);
  await mkdir(deep, { recursive: true });
  await writeFile(J(deep, 'bottom.txt'), 'at the bottom');

  // sparse files
  await writeAt(J(R, 'sparse-small'), [{ at: 0, data: Buffer.from('head') }, { at: 5 * MiB + 64 * 1024, data: pseudoRandom(200 * 1024, 3) }], 9 * MiB + 17);
  await writeAt(J(R, 'sparse-all-hole'), [], 3 * MiB);
  if ((opts.hugeSparse ?? 8 * GiB) > 0) {
    const size = opts.hugeSparse ?? 8 * GiB;
    await writeAt(J(R, 'sparse-huge'), [
      { at: 0, data: pseudoRandom(4096, 11) },
      { at: GiB + 64 * 1024, data: pseudoRandom(2 * MiB, 12) },
      { at: size - 100, data: pseudoRandom(100, 13) },
    ], size);
  }

  // hard links across folders
  await mkdir(J(R, 'links', 'a'), { recursive: true });
  await mkdir(J(R, 'links', 'b', 'c'), { recursive: true });
  await writeFile(J(R, 'links', 'a', 'orig'), pseudoRandom(100_000, 5));
  await link(J(R, 'links', 'a', 'orig'), J(R, 'links', 'b', 'link1'));
  await link(J(R, 'links', 'a', 'orig'), J(R, 'links', 'b', 'c', 'link2'));
  await writeFile(J(R, 'links', 'pair-1'), 'pair');
  await link(J(R, 'links', 'pair-1'), J(R, 'links', 'pair-2'));

  // symlinks
  await symlink('nowhere/at/all', J(R, 'dangling'));
  await symlink('deep', J(R, 'to-dir'));
  await symlink('/etc/hostname', J(R, 'absolute'));
  await symlink(Buffer.from([0xff, 0xfe, 0x2f, 0x78]), J(R, 'odd-target'));
  setTimes(J(R, 'dangling'), '1300000000.111111111', '1300000000.222222222');

  // special files
  await shell([
    Buffer.concat([Buffer.from('mkfifo -m 640 -- '), q(J(R, 'fifo'))]),
    Buffer.concat([Buffer.from('mknod -m 620 -- '), q(J(R, 'chardev')), Buffer.from(' c 10 300')]),
    Buffer.concat([Buffer.from('mknod -m 660 -- '), q(J(R, 'blockdev')), Buffer.from(' b 7 200')]),
  ]);
  await must('perl', ['-MSocket', '-e', 'socket(S,PF_UNIX,SOCK_STREAM,0) or die; bind(S, pack_sockaddr_un($ARGV[0])) or die "$!"', J(R, 'sock').toString()]);
  setTimes(J(R, 'fifo'), '1400000000.000000001', '1400000000.000000002');
  setTimes(J(R, 'chardev'), '1400000001.000000001', '1400000001.000000002');

  // xattrs and ACLs
  await writeFile(J(R, 'xattrs.txt'), 'with attributes');
  await mkdir(J(R, 'acl-dir'));
  await writeFile(J(R, 'acl-dir', 'inherits'), 'acl child');
  await shell([
    Buffer.concat([Buffer.from('setfattr -n user.plain -v hello -- '), q(J(R, 'xattrs.txt'))]),
    Buffer.concat([Buffer.from('setfattr -n user.binary -v 0sAAEC/wD+ -- '), q(J(R, 'xattrs.txt'))]),
    Buffer.concat([Buffer.from('setfattr -n user.empty -- '), q(J(R, 'xattrs.txt'))]),
    Buffer.concat([Buffer.from('setfattr -n user.on-odd-name -v yes -- '), q(J(R, NAMES.nonUtf8))]),
    Buffer.concat([Buffer.from('setfattr -n user.on-dir -v d -- '), q(J(R, 'acl-dir'))]),
    Buffer.concat([Buffer.from('setfacl -m u:12345:rw,g:54321:r -- '), q(J(R, 'xattrs.txt'))]),
    Buffer.concat([Buffer.from('setfacl -d -m u:12345:rx -- '), q(J(R, 'acl-dir'))]),
    Buffer.concat([Buffer.from('setfacl -m u:12345:rwx -- '), q(J(R, 'acl-dir'))]),
  ]);

  // modes and owners
  await writeFile(J(R, 'setuid'), '#!/bin/sh\n');
  await chmod(J(R, 'setuid'), 0o4755);
  await writeFile(J(R, 'setgid-exec'), 'x');
  await chmod(J(R, 'setgid-exec'), 0o2711);
  await writeFile(J(R, 'mode-000'), 'locked');
  await chmod(J(R, 'mode-000'), 0o000);
  await mkdir(J(R, 'sticky'));
  await chmod(J(R, 'sticky'), 0o1777);
  await mkdir(J(R, 'setgid-dir'));
  await chmod(J(R, 'setgid-dir'), 0o2775);
  await writeFile(J(R, 'owned'), 'by someone else');
  await lchown(J(R, 'owned'), 12345, 54321);
  await mkdir(J(R, 'owned-dir'));
  await writeFile(J(R, 'owned-dir', 'inside'), 'inside');
  await lchown(J(R, 'owned-dir'), 12345, 12345);
  await symlink('owned', J(R, 'owned-link'));
  await lchown(J(R, 'owned-link'), 54321, 54321);
  // chown clears setuid: set the owner first, then the mode
  await writeFile(J(R, 'owned-setuid'), 'x');
  await lchown(J(R, 'owned-setuid'), 12345, 54321);
  await chmod(J(R, 'owned-setuid'), 0o4750);

  // directory times last, deepest first, after their contents stopped changing
  setTimes(J(R, 'owned-dir'), '1100000000.123', '1100000000.456');
  setTimes(J(R, 'links', 'b', 'c'), '1200000000.000000003', '1200000000.000000004');
  setTimes(J(R, 'links'), '1200000001.000000003', '1200000001.000000004');
  setTimes(J(R, 'D'.repeat(255)), '1200000002.5', '1200000002.75');
  setTimes(R, '1000000000.000000001', '1000000000.999999999');
  await shell(times);
}

export interface EntryInfo {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: bigint;
  atimeNs: bigint;
  mtimeNs: bigint;
  rdev: bigint;
  blocks: bigint;
  nlink: bigint;
  ino: string;
  target?: string;
  xattrs: string;
  sha?: string;
}

export type Snapshot = Map<string, EntryInfo>;

export function typeOf(st: BigIntStats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'chardev';
  return 'blockdev';
}

function parseGetfattr(out: Buffer, root: Buffer): Map<string, string> {
  // independent of ferry's parser on purpose: paths are compared as escaped text
  const map = new Map<string, string[]>();
  let cur: string[] | null = null;
  const prefix = '# file: ' + escape(root).toString('latin1');
  for (const line of out.toString('latin1').split('\n')) {
    if (line.startsWith('# file: ')) {
      const rel = line.startsWith(prefix) ? line.slice(prefix.length).replace(/^\//, '') : line;
      cur = [];
      map.set(rel, cur);
    } else if (line && cur) cur.push(line);
  }
  return new Map([...map].map(([k, v]) => [k, v.sort().join('\n')]));
}

function escape(p: Buffer): Buffer {
  const out: number[] = [];
  for (const c of p) {
    if (c < 0x20 || c === 0x5c || c === 0x7f) out.push(0x5c, ...Buffer.from(c.toString(8).padStart(3, '0')));
    else out.push(c);
  }
  return Buffer.from(out);
}

/** Everything about a tree that the comparer checks. Metadata first, content after (reading changes atimes). */
export async function snapshotTree(root: string): Promise<Snapshot> {
  const R = B(root);
  const snap: Snapshot = new Map();
  const files: [string, Buffer][] = [];
  const walkDir = async (abs: Buffer, rel: Buffer) => {
    const st = await lstat(abs, { bigint: true });
    const type = typeOf(st);
    const key = escape(rel).toString('latin1');
    const info: EntryInfo = {
      type, mode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid), size: type === 'dir' ? 0n : st.size,
      atimeNs: st.atimeNs, mtimeNs: st.mtimeNs, rdev: st.rdev, blocks: st.blocks, nlink: st.nlink, ino: `${st.dev}:${st.ino}`, xattrs: '',
    };
    snap.set(key, info);
    if (type === 'symlink') info.target = escape(await readlink(abs, { encoding: 'buffer' })).toString('latin1');
    if (type === 'file') files.push([key, abs]);
    if (type === 'dir') {
      const names = (await readdir(abs, { encoding: 'buffer' })).sort(Buffer.compare);
      for (const n of names) await walkDir(J(abs, n), rel.length ? J(rel, n) : n);
    }
  };
  await walkDir(R, Buffer.alloc(0));
  const x = parseGetfattr(await must('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', root]), R);
  for (const [k, v] of x) {
    const info = snap.get(k);
    if (info) info.xattrs = v;
  }
  for (const [key, abs] of files) {
    const info = snap.get(key)!;
    // sparse files: read only where the kernel says data is (holes read as zeros anyway)
    const ranges = info.blocks * 512n < info.size ? await dataRanges(abs) : [[0, Number(info.size)]];
    const fh = await open(abs, C.O_RDONLY | C.O_NOATIME);
    try {
      // digest of (offset, grain) for every 64 KiB grain that is not all zeros, and the length:
      // equal for equal content, and cheap for the 8 GiB sparse file
      const h = createHash('sha256');
      const buf = Buffer.allocUnsafe(4 * MiB);
      const grain = 64 * 1024;
      const zero = Buffer.alloc(grain);
      for (const [start, end] of ranges) {
        for (let pos = start; pos < end; ) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - pos), pos);
          if (!bytesRead) break;
          // grains are aligned to the file offset, so equal content hashes the same whatever the ranges
          for (let i = 0; i < bytesRead; ) {
            const next = Math.min(bytesRead, (Math.floor((pos + i) / grain) + 1) * grain - pos);
            const g = buf.subarray(i, next);
            if (!g.equals(zero.subarray(0, g.length))) h.update(`${pos + i}:`).update(g);
            i = next;
          }
          pos += bytesRead;
        }
      }
      h.update(`end:${info.size}`);
      snap.get(key)!.sha = h.digest('hex');
    } finally {
      await fh.close();
    }
  }
  return snap;
}

/** [start, end) ranges holding data, by lseek SEEK_DATA/SEEK_HOLE through perl. */
async function dataRanges(path: Buffer): Promise<[number, number][]> {
  const script = 'my $n = do { local $/; <STDIN> }; open(my $f, "<", $n) or die "$!"; my $p = 0; while (1) { my $d = sysseek($f, $p, 3); last unless defined $d; my $h = sysseek($f, $d, 4); print $d+0, " ", $h+0, "\\n"; $p = $h; }';
  const out = await must('perl', ['-e', script], path); // the path on stdin: any bytes
  return out.toString().trim().split('\n').filter(Boolean).map((l) => l.split(' ').map(Number) as [number, number]);
}

function linkGroups(s: Snapshot): string[] {
  const groups = new Map<string, string[]>();
  for (const [k, v] of s) {
    if (v.type === 'dir' || v.nlink < 2n) continue;
    groups.set(v.ino, [...(groups.get(v.ino) ?? []), k]);
  }
  return [...groups.values()].map((g) => g.sort().join(' = ')).sort();
}

/** Every difference between two snapshots, as readable lines (empty when equal). */
export function diffSnapshots(a: Snapshot, b: Snapshot, opts: { ignore?: (rel: string) => boolean } = {}): string[] {
  const d: string[] = [];
  const ign = opts.ignore ?? (() => false);
  for (const k of a.keys()) if (!b.has(k) && !ign(k)) d.push(`missing in copy: ${k}`);
  for (const k of b.keys()) if (!a.has(k) && !ign(k)) d.push(`extra in copy: ${k}`);
  for (const [k, x] of a) {
    const y = b.get(k);
    if (!y || ign(k)) continue;
    const diff = (field: string, u: unknown, v: unknown) => {
      if (u !== v) d.push(`${k || '.'}: ${field} ${String(u)} != ${String(v)}`);
    };
    diff('type', x.type, y.type);
    if (x.type !== y.type) continue;
    diff('mode', x.mode.toString(8), y.mode.toString(8));
    diff('uid', x.uid, y.uid);
    diff('gid', x.gid, y.gid);
    diff('size', x.size, y.size);
    diff('mtime', x.mtimeNs, y.mtimeNs);
    if (x.type !== 'dir' && x.type !== 'symlink') diff('atime', x.atimeNs, y.atimeNs);
    diff('rdev', x.rdev, y.rdev);
    diff('target', x.target, y.target);
    diff('xattrs', x.xattrs, y.xattrs);
    diff('content', x.sha, y.sha);
    diff('nlink', x.nlink, y.nlink);
    if (x.type === 'file' && x.blocks * 512n < x.size) {
      // sparse: the copy must be sparse too, about as much allocated
      const slack = x.blocks / 4n + 128n;
      if (y.blocks > x.blocks + slack) d.push(`${k}: sparse file takes ${y.blocks} blocks, source ${x.blocks}`);
    }
  }
  const ga = linkGroups(a).filter((g) => !ign(g));
  const gb = linkGroups(b).filter((g) => !ign(g));
  if (ga.join('\n') !== gb.join('\n')) d.push(`hard-link groups differ:\n  ${ga.join('\n  ')}\nvs\n  ${gb.join('\n  ')}`);
  return d;
}

/** Walks two trees and lists every difference in content and metadata. */
export async function compareTrees(a: string, b: string, opts: { ignore?: (rel: string) => boolean } = {}): Promise<string[]> {
  return diffSnapshots(await snapshotTree(a), await snapshotTree(b), opts);
}
