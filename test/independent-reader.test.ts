// The formats proven by an independent reader: tools/ferry_read.py, written
// in Python from docs/ alone (vault-format, seal-format, seed-format,
// volume-format), must read what ferry writes exactly as ferry does. For a
// small tree seeded over two disks and imported, its extraction must equal
// `ferry restore` entry by entry (type, mode, owner, size, allocated blocks,
// links, target, rdev, ns times, xattrs, content), its point listing must
// equal `ferry points`, and the VHD it rebuilds from head and blocks must be
// byte for byte `ferry vhd export --vault` and read in qemu-img as ferry
// reads the stored disk. A deflate vault with a files and a volume item
// (whose length is not whole sectors) goes the same way. Needs root (chown,
// mknod) and /usr/bin/python3 with python3-cryptography and
// python3-zstandard (scripts/setup.mjs installs them).
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { chmod, lchown, link, lstat, mkdir, open, readFile, readdir, readlink, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT, ferry, must, run, withTmp } from './helpers/exec.js';
import { typeOf, writeAt } from './helpers/tree.js';

const PYTHON = '/usr/bin/python3';
const READER = join(ROOT, 'tools', 'ferry_read.py');
const env = { FERRY_PASSPHRASE: 'independent reader passphrase 0123' };
const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
const rootTest = isRoot ? test.serial : test.skip;
const needs = isRoot ? '' : ' (skipped: needs root, for chown and mknod)';

async function ok(args: string[]): Promise<Buffer> {
  const r = await ferry(args, { env });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** tools/ferry_read.py, which must succeed. */
async function reader(args: string[]): Promise<Buffer> {
  const r = await run(PYTHON, [READER, ...args], { env });
  if (r.code !== 0) throw new Error(`ferry_read.py ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

const B = (s: string) => Buffer.from(s);
const J = (...parts: Array<string | Buffer>) => Buffer.concat(parts.flatMap((p, i) => (i ? [B('/'), B2(p)] : [B2(p)])));
const B2 = (p: string | Buffer) => (Buffer.isBuffer(p) ? p : B(p));
const CAFE = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // "caf\xe9": not UTF-8

/**
 * The tree of tools/ferry_read_e2e.sh and more: a hard link, symlinks (one
 * owned by 1234:5678, one dangling), sparse files (one ending in a short
 * all-hole chunk), zeros written as data (in a sparse file and in a file
 * without holes), a non-UTF-8 name, xattrs (one with a non-UTF-8 name and
 * a binary value), a fifo, a char device, odd modes (setuid folder, setgid
 * file, sticky folder, 640), ns times (one before 1970), owner 1234:5678.
 */
async function buildTree(root: string): Promise<void> {
  const S = B(root);
  await mkdir(join(root, 'sub', 'deeper'), { recursive: true });
  await mkdir(join(root, 'emptydir'));
  await writeFile(J(S, 'hello.txt'), 'hello world\n');
  await writeFile(J(S, 'empty'), '');
  await lchown(J(S, 'empty'), 1234, 5678);
  await writeFile(J(S, 'rand.bin'), randomBytes(3 * MiB)); // does not compress: stored raw
  // a page of zeros written between two of data: stored (its grain is not all zero), restored as a hole
  const pages = Buffer.concat([Buffer.alloc(4096, 'A'), Buffer.alloc(4096), Buffer.alloc(4096, 'B')]);
  await writeAt(J(S, 'sparse.img'), [{ at: MiB, data: pages }, { at: 5_000_000, data: B('middle') }], 10 * MiB);
  await writeAt(J(S, 'sparse-tail.img'), [{ at: 0, data: B('head') }], 10 * MiB + 100); // its last chunk: 100 bytes of hole
  // zeros written, in a file with no holes: stored, and restored as written
  await writeFile(J(S, 'zeros-inside.bin'), Buffer.concat([Buffer.alloc(4096, 'A'), Buffer.alloc(128 * 1024), Buffer.alloc(4096, 'B')]));
  await symlink('hello.txt', J(S, 'link'));
  await lchown(J(S, 'link'), 1234, 5678);
  await symlink('/nonexistent', J(S, 'dangling'));
  await link(J(S, 'hello.txt'), J(S, 'sub', 'hard'));
  await writeFile(J(S, CAFE), 'x');
  await writeFile(J(S, 'sub', 'deeper', 'n.txt'), Array.from({ length: 20000 }, (_, i) => `${i + 1}\n`).join(''));
  await chmod(J(S, 'sub', 'deeper', 'n.txt'), 0o640);
  await writeFile(J(S, 'setgid'), 'g');
  await chmod(J(S, 'setgid'), 0o2710);
  await mkdir(J(S, 'sticky'));
  await chmod(J(S, 'sticky'), 0o1777);
  await must('setfattr', ['-n', 'user.x', '-v', 'value', join(root, 'hello.txt')]);
  await must('bash', ['-c', 'setfattr -n "$(printf "user.caf\\xe9")" -v 0sAAEC/w== "$1"', 'bash', join(root, 'setgid')]);
  await must('mkfifo', [join(root, 'fifo')]);
  await must('mknod', [join(root, 'null-dev'), 'c', '1', '3']);
  await chmod(J(S, 'sub'), 0o4755);
  await must('touch', ['-h', '-d', '2001-02-03 04:05:06.123456789', join(root, 'hello.txt')]);
  await must('touch', ['-h', '-d', '@-1000000000.000000001', join(root, 'setgid')]);
  await must('touch', ['-h', '-d', '@1300000000.222222222', join(root, 'dangling')]);
  await must('touch', ['-h', '-d', '@1200000000.000000004', join(root, 'sub', 'deeper')]);
}

/** find -printf's %y letter of an entry's type. */
const TYPE_CHAR: Record<string, string> = { file: 'f', dir: 'd', symlink: 'l', fifo: 'p', chardev: 'c', blockdev: 'b', socket: 's' };
const typeChar = (st: BigIntStats): string => TYPE_CHAR[typeOf(st)];

/**
 * One line per entry under `root` (not `root` itself), sorted by path:
 * type, mode, owner, size, allocated blocks, links, ns times, symlink
 * target, rdev, and which earlier path a hard link shares its inode with;
 * then one line per entry with its xattrs; then one line per regular file
 * with its SHA-256. Metadata is read before any content (reading moves
 * atimes), each folder before it is listed.
 */
async function listing(root: string): Promise<{ meta: string[]; xattrs: string[]; content: string[] }> {
  const meta: string[] = [];
  const files: Array<[string, Buffer]> = [];
  const inodes = new Map<string, string>();
  const walk = async (abs: Buffer, rel: string): Promise<void> => {
    const st = await lstat(abs, { bigint: true });
    const type = typeChar(st);
    if (rel) {
      const same = inodes.get(`${st.dev}:${st.ino}`);
      if (!same) inodes.set(`${st.dev}:${st.ino}`, rel);
      const target = type === 'l' ? ` -> ${JSON.stringify((await readlink(abs, { encoding: 'buffer' })).toString('latin1'))}` : '';
      const rdev = type === 'c' || type === 'b' ? ` rdev=${st.rdev}` : '';
      meta.push(
        `${JSON.stringify(rel)} ${type} ${(st.mode & 0o7777n).toString(8)} ${st.uid}:${st.gid} size=${st.size} blocks=${st.blocks} ` +
          `nlink=${st.nlink} mtime=${st.mtimeNs} atime=${st.atimeNs}${target}${rdev}${same ? ` same-inode-as=${JSON.stringify(same)}` : ''}`,
      );
      if (type === 'f') files.push([rel, abs]);
    }
    if (type !== 'd') return;
    const names = (await readdir(abs, { encoding: 'buffer' })).sort(Buffer.compare);
    for (const n of names) await walk(J(abs, n), rel ? `${rel}/${n.toString('latin1')}` : n.toString('latin1'));
  };
  await walk(B(root), '');
  // getfattr -R lists folders in readdir order, which may differ between two trees: one block per entry, sorted
  const dump = await must('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '.'], { cwd: root });
  const xattrs = dump.toString('latin1').split('\n\n').map((b) => b.trim()).filter(Boolean).sort();
  const content: string[] = [];
  for (const [rel, abs] of files) content.push(`${JSON.stringify(rel)} ${createHash('sha256').update(await readFile(abs)).digest('hex')}`);
  return { meta: meta.sort(), xattrs, content: content.sort() };
}

/** The two trees hold the same entries with the same metadata, xattrs and content. */
async function sameTree(t: ExecutionContext, mine: string, theirs: string): Promise<void> {
  const a = await listing(mine);
  const b = await listing(theirs);
  t.deepEqual(a.meta, b.meta, 'metadata listing');
  t.deepEqual(a.xattrs, b.xattrs, 'xattrs');
  t.deepEqual(a.content, b.content, 'content');
}

interface Manifest {
  seq: number;
  time: string;
  machine: string;
  item: string;
  kind: string;
  source: string;
  chain: string[];
  size: number;
  sources: string[];
  stats: Record<string, number>;
  diskSize: number;
  volumeBytes?: number;
}

/** The reader's point manifests, checked against `ferry points --json`. */
async function points(t: ExecutionContext, vault: string): Promise<Manifest[]> {
  const mine = JSON.parse((await reader(['points', vault, '--json'])).toString()) as Manifest[];
  const theirs = JSON.parse((await ok(['points', '--vault', vault, '--json'])).toString()) as Array<Record<string, unknown>>;
  t.deepEqual(
    mine.map((p) => ({ seq: p.seq, time: p.time, kind: p.kind, machine: p.machine, item: p.item, source: p.source, size: p.size, disks: p.chain.length, sources: p.sources, stats: p.stats })),
    theirs,
    'points',
  );
  return mine;
}

/** The codec byte of a stored object (seal-format.md: header offset 6). */
async function codecOf(vault: string, name: string): Promise<number> {
  return (await readFile(join(vault, ...name.split('/'))))[6];
}

/** The reader's VHD of stored disk `id` is ferry's export byte for byte, and qemu-img reads its start as ferry reads the stored disk. */
async function sameVhd(t: ExecutionContext, dir: string, vault: string, id: string, virtualSize: number): Promise<void> {
  const mine = join(dir, `${id}.mine.vhd`);
  const theirs = join(dir, `${id}.theirs.vhd`);
  await reader(['vhd', vault, id, mine]);
  await ok(['vhd', 'export', '--vault', vault, '--disk', id, '--to', theirs]);
  const a = await readFile(mine);
  const b = await readFile(theirs);
  t.is(a.length, b.length, 'VHD file sizes');
  t.true(a.equals(b), 'the reader rebuilt the VHD byte for byte');
  const info = JSON.parse((await must('qemu-img', ['info', '--output=json', mine])).toString()) as { format: string; 'virtual-size': number };
  t.is(info.format, 'vpc');
  t.is(info['virtual-size'], virtualSize);
  const n = Math.min(virtualSize, 8 * MiB);
  const head = join(dir, `${id}.head.raw`);
  await must('qemu-img', ['dd', '-f', 'vpc', '-O', 'raw', 'bs=65536', `count=${Math.ceil(n / 65536)}`, `if=${mine}`, `of=${head}`]);
  const q = (await readFile(head)).subarray(0, n);
  const f = await ok(['vhd', 'cat', '--vault', vault, '--disk', id, '--length', String(n)]);
  t.true(q.equals(f), 'qemu-img reads the rebuilt VHD as ferry reads the stored disk');
}

rootTest(`ferry_read.py extracts a 2-disk seed exactly as ferry restores it, and rebuilds its VHD byte for byte${needs}`, async (t) => {
  await withTmp(async (dir) => {
    await reader(['selftest']);
    const src = join(dir, 'src');
    await buildTree(src);
    const vault = join(dir, 'v');
    await ok(['init', '-q', vault]); // the default scrypt cost, as a user's vault has it
    await mkdir(join(dir, 'd1'));
    await mkdir(join(dir, 'd2'));
    await ok(['seed', '-q', '--vault', vault, '--item', 't', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'd1'), '--disk', join(dir, 'd2'), '--disk-capacity', '3M', src]);
    // really two disks
    const second = JSON.parse(await readFile(join(dir, 'd2', 'FERRY-SEED.json'), 'utf8')) as { disk: number; of: number };
    t.deepEqual([second.disk, second.of], [2, 2]);
    await ok(['import', '-q', '--vault', vault, join(dir, 'd2'), join(dir, 'd1')]);

    const [p, ...more] = await points(t, vault);
    t.is(more.length, 0);
    t.is(p.chain.length, 1);
    t.is(p.diskSize, 2040 * 1024 ** 3);

    // the codecs the reader had to handle: zstd, and raw for the random file's blocks
    const blocks = await readdir(join(vault, 'disks', p.chain[0], 'blocks'));
    const codecs = new Set(await Promise.all(blocks.map((b) => codecOf(vault, `disks/${p.chain[0]}/blocks/${b}`))));
    t.deepEqual([...codecs].sort(), [0, 1], 'blocks stored with zstd and raw');

    await ok(['restore', '-q', '--vault', vault, '--item', 't', '--machine', 'm', '--to', join(dir, 'ref')]);
    await reader(['extract', vault, 'm/t', join(dir, 'out')]);
    await sameTree(t, join(dir, 'out'), join(dir, 'ref'));
    // and what was restored is the source (so the comparison covers every entry of the tree)
    const names = (await listing(join(dir, 'ref', src))).meta.map((l) => l.split(' ')[0]).sort();
    const expected = (await listing(src)).meta.map((l) => l.split(' ')[0]).sort();
    t.deepEqual(names, expected);

    await sameVhd(t, dir, vault, p.chain[0], p.diskSize);
  });
});

rootTest(`ferry_read.py reads a deflate vault: a files item and a volume item whose length is not whole sectors${needs}`, async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await buildTree(src);
    const vault = join(dir, 'v');
    await ok(['init', '-q', vault, '--compression', 'deflate', '--kdf-log-n', '12']);
    await ok(['seed', '-q', '--vault', vault, '--item', 't', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'd1'), src]);
    await ok(['import', '-q', '--vault', vault, join(dir, 'd1')]);
    // a volume: random data, a run of zeros (not stored), and a length of 3 MiB + 1000 bytes
    const img = join(dir, 'vol.img');
    await writeFile(img, Buffer.concat([randomBytes(MiB), Buffer.alloc(MiB), Buffer.alloc(MiB + 1000, 'ferry ')]));
    await ok(['seed', '-q', '--vault', vault, '--item', 'vol', '--kind', 'volume', '--machine', 'm', '--disk', join(dir, 'd2'), img]);
    await ok(['import', '-q', '--vault', vault, join(dir, 'd2')]);

    const all = await points(t, vault);
    t.deepEqual(all.map((p) => `${p.item} ${p.kind}`).sort(), ['t files', 'vol volume']);
    const files = all.find((p) => p.kind === 'files')!;
    const vol = all.find((p) => p.kind === 'volume')!;
    t.is(vol.volumeBytes, 3 * MiB + 1000);
    t.is(vol.diskSize, 3 * MiB + 1024);
    t.is(await codecOf(vault, `disks/${files.chain[0]}/head`), 2, 'the head is deflate');

    await ok(['restore', '-q', '--vault', vault, '--item', 't', '--machine', 'm', '--to', join(dir, 'ref')]);
    await reader(['extract', vault, 'm/t', join(dir, 'out')]);
    await sameTree(t, join(dir, 'out'), join(dir, 'ref'));

    await ok(['restore', '-q', '--vault', vault, '--item', 'vol', '--machine', 'm', '--format', 'raw', '--to', join(dir, 'vol.ferry.img')]);
    await reader(['extract', vault, 'm/vol', join(dir, 'vol.mine.img')]);
    const source = await readFile(img);
    const theirs = await readFile(join(dir, 'vol.ferry.img'));
    const mine = await readFile(join(dir, 'vol.mine.img'));
    t.is(mine.length, source.length);
    t.true(mine.equals(source), 'the reader gives back the volume');
    t.true(mine.equals(theirs), 'as ferry restores it');

    await sameVhd(t, dir, vault, vol.chain[0], vol.diskSize);
    await sameVhd(t, dir, vault, files.chain[0], files.diskSize);
  });
});
