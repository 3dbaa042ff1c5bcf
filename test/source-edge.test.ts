// The files source when the tree changes under it: a path that vanishes,
// becomes a folder or a fifo, or shrinks between the walk and the read; a
// file whose data cannot be read (a damaged filesystem); a source given as
// `link/`; and what a failed seed leaves open.
//
// Most of these need the change to land in the gap between the walk (lstat)
// and the read, every time. The walker asks getfattr for a batch's xattrs
// after it has lstat'ed the batch and before any file of it is read, so a
// getfattr found first on PATH that changes the tree once, then runs the real
// one, changes it exactly there, through the real CLI and with no hook in
// ferry itself.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { chmod, link, lstat, mkdir, open, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { walk } from '../source/files.js';
import { MemDisk } from '../format/memdisk.js';
import { writeVolume } from '../format/volume/index.js';
import { FERRY, ferry, must, withTmp, type Result } from './helpers/exec.js';

const PASS = 'source edge test passphrase, long enough';
const env = { FERRY_PASSPHRASE: PASS };
const MiB = 1024 * 1024;

async function ok(args: string[]): Promise<string> {
  const r = await ferry(args, { env });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout.toString();
}

/**
 * Runs ferry in a process group of its own and kills the whole group (its
 * perl helper too) if it has not ended after `seconds`: code null then.
 */
function ferryWithin(seconds: number, args: string[], extraEnv: NodeJS.ProcessEnv): Promise<Result & { timedOut: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FERRY, ...args], {
      env: { ...process.env, ...env, ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* gone already */
      }
    }, seconds * 1000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString(), timedOut });
    });
  });
}

/** PATH with a getfattr that runs `between` (shell lines) once, between the walk and the reads. */
async function changeBetweenWalkAndRead(dir: string, between: string): Promise<NodeJS.ProcessEnv> {
  const real = spawnSync('sh', ['-c', 'command -v getfattr']).stdout.toString().trim();
  if (!real) throw new Error('getfattr (package attr) is needed');
  const bin = join(dir, 'hook-bin');
  await mkdir(bin);
  await writeFile(join(dir, 'between.sh'), between);
  await writeFile(join(bin, 'getfattr'), `#!/bin/sh\nif mkdir '${dir}/hook-ran' 2>/dev/null; then sh -e '${dir}/between.sh' >&2; fi\nexec '${real}' "$@"\n`);
  await chmod(join(bin, 'getfattr'), 0o755);
  return { PATH: `${bin}:${process.env.PATH}` };
}

/** Seeds `sources` as item `item` through the CLI (with `extraEnv`), imports it, restores it under `out`. */
async function seedAndRestore(dir: string, item: string, sources: string[], extraEnv: NodeJS.ProcessEnv = {}, seconds = 120) {
  const vault = join(dir, `vault-${item}`);
  await ok(['init', vault, '--kdf-log-n', '12']);
  const disk = join(dir, `disk-${item}`);
  const seed = await ferryWithin(seconds, ['seed', '--vault', vault, '--item', item, '--kind', 'files', '--machine', 'm', '--disk', disk, ...sources], extraEnv);
  if (seed.timedOut || (seed.code !== 0 && seed.code !== 3)) return { seed, restore: null, out: '' };
  await ok(['import', '--vault', vault, disk]);
  const out = join(dir, `out-${item}`);
  const restore = await ferry(['restore', '--vault', vault, '--machine', 'm', '--item', item, '--to', out], { env });
  return { seed, restore, out };
}

/** A sparse file: `size` bytes, with `data` at each of `at`, holes elsewhere. */
async function sparseFile(path: string, size: number, at: number[], data: Buffer): Promise<void> {
  const fh = await open(path, 'w');
  try {
    for (const off of at) await fh.write(data, 0, data.length, off);
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

test('a hard link whose first path cannot be read: the next readable link carries the data and the group', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    for (const d of ['a', 'b', 'c', 'big']) await mkdir(join(src, d), { recursive: true });
    // small (read ahead) and large (read when the writer asks) groups
    const small = randomBytes(200_000);
    await writeFile(join(src, 'a', '1-first'), small);
    await link(join(src, 'a', '1-first'), join(src, 'b', '2-second'));
    await link(join(src, 'a', '1-first'), join(src, 'c', '3-third'));
    const large = randomBytes(3 * MiB + 17);
    await writeFile(join(src, 'big', '1'), large);
    await link(join(src, 'big', '1'), join(src, 'big', '2'));
    await link(join(src, 'big', '1'), join(src, 'big', '3'));
    await link(join(src, 'big', '1'), join(src, 'big', '4'));
    await writeFile(join(src, 'plain.txt'), 'plain');
    // the first path of each group goes, and the second of the large one too
    const hook = await changeBetweenWalkAndRead(dir, `rm '${src}/a/1-first' '${src}/big/1' '${src}/big/2'\n`);
    const { seed, restore, out } = await seedAndRestore(dir, 'links', [src], hook);
    t.is(seed.code, 3, seed.stderr);
    t.is(restore!.code, 0, restore!.stderr);
    const root = join(out, src);
    t.false(existsSync(join(root, 'a', '1-first')));
    t.true((await readFile(join(root, 'b', '2-second'))).equals(small), 'the second link carries the data');
    t.true((await readFile(join(root, 'c', '3-third'))).equals(small));
    t.is((await stat(join(root, 'b', '2-second'))).ino, (await stat(join(root, 'c', '3-third'))).ino, 'and the group is one file again');
    t.false(existsSync(join(root, 'big', '2')));
    t.true((await readFile(join(root, 'big', '3'))).equals(large), 'the third link carries it when the first two are gone');
    t.is((await stat(join(root, 'big', '3'))).ino, (await stat(join(root, 'big', '4'))).ino);
    t.is(await readFile(join(root, 'plain.txt'), 'utf8'), 'plain');
    // what could not be read is listed; the links that could be are not
    for (const gone of ['a/1-first', 'big/1', 'big/2']) t.regex(seed.stderr, new RegExp(`cannot read ${src}/${gone}:`));
    t.notRegex(seed.stderr, /2-second|3-third|big\/3|big\/4/);
  });
});

test('reads of a file that fail mid-way (a damaged filesystem) are a warning for that file, not a crash', async (t) => {
  await withTmp(async (dir) => {
    const img = join(dir, 'fs.img');
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    await must('truncate', ['-s', '64M', img]);
    await must('mkfs.ext4', ['-q', '-F', '-b', '4096', img]);
    await must('mount', ['-o', 'loop', img, mnt]); // the tests run as root (CI too)
    const after = randomBytes(2 * MiB + 3);
    try {
      // 4 MiB written every other block first, then the rest: many extents,
      // so ext4 keeps them in a tree block of their own outside the inode
      const fh = await open(join(mnt, 'bad.bin'), 'w');
      for (const parity of [0, 1]) {
        for (let i = parity; i < 1024; i += 2) {
          await fh.write(randomBytes(4096), 0, 4096, i * 4096);
          await fh.sync();
        }
      }
      await fh.close();
      await writeFile(join(mnt, 'good.txt'), 'good');
      await writeFile(join(mnt, 'later.bin'), after);
    } finally {
      await must('umount', [mnt]);
    }
    // zero that tree block: the inode (size, type) reads fine, the data does not (EIO / EUCLEAN)
    const info = (await must('debugfs', ['-R', 'stat /bad.bin', img])).toString();
    const etb = /\(ETB0\):\s*(\d+)/.exec(info);
    if (!etb) throw new Error(`bad.bin has no extent tree block:\n${info}`);
    const fh = await open(img, 'r+');
    await fh.write(Buffer.alloc(4096), 0, 4096, Number(etb[1]) * 4096);
    await fh.close();
    await must('mount', ['-o', 'loop,ro,errors=continue', img, mnt]);
    try {
      t.is((await lstat(join(mnt, 'bad.bin'))).size, 4 * MiB, 'the file is still listed whole');
      const { seed, restore, out } = await seedAndRestore(dir, 'damaged', [mnt]);
      t.is(seed.code, 3, seed.stderr);
      t.regex(seed.stderr, new RegExp(`cannot read ${mnt}/bad.bin: `));
      t.notRegex(seed.stderr, /node:internal|Node\.js v|Closing file descriptor/, 'no crash, no leaked descriptor');
      t.is(restore!.code, 0, restore!.stderr);
      t.false(existsSync(join(out, mnt, 'bad.bin')));
      t.is(await readFile(join(out, mnt, 'good.txt'), 'utf8'), 'good');
      t.true((await readFile(join(out, mnt, 'later.bin'))).equals(after), 'the seed went on after the bad file');
    } finally {
      spawnSync('umount', [mnt]);
    }
  });
});

test('a sparse file swapped for a fifo before it is read is a warning, not a hang', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    // sparse and large: its data map comes from SEEK_DATA/SEEK_HOLE (the perl helper)
    await sparseFile(join(src, 'sparse.img'), 64 * MiB, [0, 32 * MiB], randomBytes(MiB));
    // small: read on a reader thread; a fifo opened without blocking reads as empty
    await writeFile(join(src, 'small.txt'), 'small file content');
    await writeFile(join(src, 'z-after.txt'), 'after');
    const hook = await changeBetweenWalkAndRead(dir, `cd '${src}'\nrm sparse.img small.txt\nmkfifo sparse.img small.txt\n`);
    const { seed, restore, out } = await seedAndRestore(dir, 'fifo', [src], hook, 60);
    t.false(seed.timedOut, 'the seed ended by itself');
    t.is(seed.code, 3, seed.stderr);
    t.regex(seed.stderr, new RegExp(`cannot read ${src}/sparse.img: .*fifo`));
    t.regex(seed.stderr, new RegExp(`cannot read ${src}/small.txt: .*fifo`));
    t.is(restore!.code, 0, restore!.stderr);
    const root = join(out, src);
    t.false(existsSync(join(root, 'sparse.img')));
    t.false(existsSync(join(root, 'small.txt')), 'not stored as an empty file');
    t.is(await readFile(join(root, 'z-after.txt'), 'utf8'), 'after');
  });
});

test('a file swapped for a folder or for another file before it is read is a warning, and left out', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'big-to-dir.bin'), randomBytes(3 * MiB));
    await writeFile(join(src, 'small-to-dir.txt'), 'x');
    await writeFile(join(src, 'replaced.txt'), 'the file as listed');
    await writeFile(join(src, 'z-after.txt'), 'after');
    const hook = await changeBetweenWalkAndRead(
      dir,
      `cd '${src}'\nrm big-to-dir.bin small-to-dir.txt\nmkdir big-to-dir.bin small-to-dir.txt\nprintf 'a new file, written since' > replaced.new\nmv replaced.new replaced.txt\n`,
    );
    const { seed, restore, out } = await seedAndRestore(dir, 'swap', [src], hook);
    t.is(seed.code, 3, seed.stderr);
    t.regex(seed.stderr, new RegExp(`cannot read ${src}/big-to-dir.bin: .*folder`));
    t.regex(seed.stderr, new RegExp(`cannot read ${src}/small-to-dir.txt: .*folder`));
    t.regex(seed.stderr, new RegExp(`cannot read ${src}/replaced.txt: .*replaced`));
    t.notRegex(seed.stderr, /node:internal|Node\.js v/);
    t.is(restore!.code, 0, restore!.stderr);
    const root = join(out, src);
    for (const n of ['big-to-dir.bin', 'small-to-dir.txt', 'replaced.txt']) t.false(existsSync(join(root, n)), n);
    t.is(await readFile(join(root, 'z-after.txt'), 'utf8'), 'after');
  });
});

test('a sparse file that shrinks before it is read is stored at the size it has, with a warning', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    const head = randomBytes(MiB);
    await sparseFile(join(src, 'sparse.img'), 64 * MiB, [0, 48 * MiB], head);
    // cut inside the hole: no read comes back short, only the size tells
    const hook = await changeBetweenWalkAndRead(dir, `truncate -s 5M '${src}/sparse.img'\n`);
    const { seed, restore, out } = await seedAndRestore(dir, 'shrink', [src], hook);
    t.is(seed.code, 3, seed.stderr);
    t.regex(seed.stderr, new RegExp(`${src}/sparse.img shrank while it was read`));
    t.is(restore!.code, 0, restore!.stderr);
    const back = await readFile(join(out, src, 'sparse.img'));
    t.is(back.length, 5 * MiB, 'the size it has now, not 64 MiB');
    t.true(back.equals(await readFile(join(src, 'sparse.img'))));
  });
});

test('a source given as link/ or link/. backs up the folder the link points to; link alone stays a symlink', async (t) => {
  await withTmp(async (dir) => {
    const target = join(dir, 'data', 'real');
    await mkdir(join(target, 'sub'), { recursive: true });
    const body = randomBytes(100_000);
    await writeFile(join(target, 'f.bin'), body);
    await writeFile(join(target, 'sub', 'g.txt'), 'g');
    await mkdir(join(dir, 'src'));
    const lnk = join(dir, 'src', 'lnk');
    await symlink('../data/real', lnk);
    await symlink('../data/real/f.bin', join(dir, 'src', 'file-lnk'));
    for (const [item, source] of [['slash', `${lnk}/`], ['dot', `${lnk}/.`]]) {
      const { seed, restore, out } = await seedAndRestore(dir, item, [source]);
      t.is(seed.code, 0, seed.stderr);
      t.is(restore!.code, 0, restore!.stderr);
      const at = join(out, lnk);
      t.true((await lstat(at)).isDirectory(), `${source}: the folder, not the link`);
      t.true((await readFile(join(at, 'f.bin'))).equals(body), source);
      t.is(await readFile(join(at, 'sub', 'g.txt'), 'utf8'), 'g', source);
      t.false(existsSync(join(out, target)), `${source}: stored under the name given, not the link's target`);
    }
    const plain = await seedAndRestore(dir, 'plain', [lnk]);
    t.is(plain.seed.code, 0, plain.seed.stderr);
    t.true((await lstat(join(plain.out, lnk))).isSymbolicLink(), 'without a slash the link itself');
    // a link to a file given with a slash is what the kernel says: not a folder
    // (the only source: nothing to back up, so the seed fails before it writes)
    const file = await seedAndRestore(dir, 'filelink', [`${join(dir, 'src', 'file-lnk')}/`]);
    t.is(file.seed.code, 1, file.seed.stderr);
    t.regex(file.seed.stderr, /file-lnk.*not a directory/i);
  });
});

/** Descriptors of this process open on paths under `dir`. */
function openUnder(dir: string): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const p = readlinkSync(`/proc/self/fd/${fd}`);
      if (p.startsWith(dir + '/')) out.push(p);
    } catch {
      /* closed meanwhile */
    }
  }
  return out;
}

test('a seed that fails while writing (disks full) leaves no source file open', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    for (const n of ['a.bin', 'b.bin', 'c.bin']) await writeFile(join(src, n), randomBytes(6 * MiB));
    // fails as a full seed disk does, in the middle of b.bin
    class FullDisk extends MemDisk {
      override async write(offset: number, data: Buffer): Promise<void> {
        if (offset + data.length > 10 * MiB) throw Object.assign(new Error('the seed disks are full'), { code: 'SEED_DISKS_FULL' });
        return super.write(offset, data);
      }
    }
    const err = await t.throwsAsync(writeVolume(new FullDisk(64 * MiB * 1024), walk([src], { xattrs: false }), { onWarning: () => {} }));
    t.is((err as { code?: string }).code, 'SEED_DISKS_FULL');
    // the file being read when it failed is closed by the time the error is out
    t.deepEqual(openUnder(src), []);
  });
});

test('a file written in place between walk and read (same inode) is stored with a warning; sysfs files that read short are not', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'same'), 'AAAA-first-version\n');
    await writeFile(join(src, 'other'), 'left alone\n');
    // the same length, the same inode: only its change time tells
    const hook = await changeBetweenWalkAndRead(dir, `printf 'BBBB-later-version\\n' > '${join(src, 'same')}'\n`);
    const { seed, restore, out } = await seedAndRestore(dir, 'inplace', [src], hook);
    t.is(seed.code, 3, seed.stderr);
    t.regex(seed.stderr, /same changed after it was listed: stored as read/);
    t.notRegex(seed.stderr, /other/);
    t.is(restore?.code, 0, restore?.stderr);
    t.is(await readFile(join(out, src, 'other'), 'utf8'), 'left alone\n');
    // sysfs says 4096 bytes and holds a few: no warning for that
    const sys = '/sys/kernel/mm/transparent_hugepage';
    if (existsSync(sys)) {
      const r = await seedAndRestore(dir, 'sysfs', [sys]);
      t.is(r.seed.code, 0, r.seed.stderr);
      t.notRegex(r.seed.stderr, /shrank/);
      t.is(await readFile(join(r.out, sys, 'enabled'), 'utf8'), await readFile(join(sys, 'enabled'), 'utf8'));
    }
  });
});

test('a link to / given as link/ stores its tree under link/; a link/ source inside another source is named, not dropped silently', async (t) => {
  await withTmp(async (dir) => {
    const lnk = join(dir, 'rootlnk');
    await symlink('/', lnk);
    const paths: string[] = [];
    for await (const e of walk([`${lnk}/`], { excludes: [`${lnk}/*`], readerThreads: 0 })) {
      paths.push(e.path.toString());
      if (paths.length > 200) break; // the bug walks the whole system
    }
    t.true(paths.includes(lnk), paths.slice(0, 10).join(' '));
    t.deepEqual(paths.filter((p) => p.startsWith(lnk) && p !== lnk && !p.startsWith(`${lnk}/`)), []);

    const src = join(dir, 'src');
    const outside = join(dir, 'outside');
    await mkdir(src);
    await mkdir(outside);
    await writeFile(join(outside, 'f'), 'precious\n');
    await symlink(outside, join(src, 'lnk'));
    const r = await seedAndRestore(dir, 'nested', [src, `${join(src, 'lnk')}/`]);
    t.is(r.seed.code, 3, r.seed.stderr);
    t.regex(r.seed.stderr, /lnk\/ is a symlink inside .*src and is stored as one: what it points to is not backed up; give its real path \(.*outside\)/);

    // a plain folder given inside its parent is no symlink: no warning, walked once;
    // a path through the symlink is named too (the outer walk never reaches it)
    await mkdir(join(src, 'plain'));
    await writeFile(join(src, 'plain', 'p'), 'p\n');
    await mkdir(join(outside, 'deep'));
    const r2 = await seedAndRestore(dir, 'nested2', [src, `${join(src, 'plain')}/`, join(src, 'lnk', 'deep')]);
    t.is(r2.seed.code, 3, r2.seed.stderr);
    t.notRegex(r2.seed.stderr, /plain/);
    t.regex(r2.seed.stderr, /lnk\/deep is reached through the symlink .*src\/lnk inside .*src, which is stored as a symlink/);
    t.is(r2.seed.stderr.match(/warning/g)?.length, 1, r2.seed.stderr);
    t.is(await readFile(join(r2.out, src, 'plain', 'p'), 'utf8'), 'p\n');
  });
});

test('a proc or sysfs mount met inside a source is kept as an empty folder with a note, not a warning (a source named in /sys is still read: see above)', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'data'), { recursive: true });
    await mkdir(join(src, 'p'));
    await mkdir(join(src, 's'));
    await writeFile(join(src, 'data', 'f'), 'kept\n');
    await must('mount', ['-t', 'proc', 'proc', join(src, 'p')]);
    try {
      await must('mount', ['-t', 'sysfs', 'sysfs', join(src, 's')]);
      try {
        const vault = join(dir, 'vault');
        await ok(['init', vault, '--kdf-log-n', '12']);
        const disk = join(dir, 'disk');
        const seed = await ferryWithin(120, ['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk', disk, '--json', src], {});
        t.false(seed.timedOut);
        t.is(seed.code, 0, seed.stderr);
        const r = JSON.parse(seed.stdout.toString());
        t.deepEqual(r.warningList, []);
        t.deepEqual(r.notes.map((n: { path: string }) => n.path).sort(), [join(src, 'p'), join(src, 's')]);
        t.regex(r.notes[0].message, /is a (proc|sysfs) filesystem \(the kernel's live state, not files\): kept as an empty folder/);
        await ok(['import', '--vault', vault, disk]);
        const out = join(dir, 'out');
        await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'x', '--to', out]);
        t.deepEqual(readdirSync(join(out, src, 'p')), []);
        t.deepEqual(readdirSync(join(out, src, 's')), []);
        t.is(await readFile(join(out, src, 'data', 'f'), 'utf8'), 'kept\n');
        // without --json: one line each, after the summary's start
        const human = await ferryWithin(120, ['seed', '--vault', vault, '--item', 'y', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'disk2'), src], {});
        t.is(human.code, 0, human.stderr);
        t.regex(human.stderr + human.stdout.toString(), /left out: .*\/src\/p is a proc filesystem/);
      } finally {
        await must('umount', ['-l', join(src, 's')]);
      }
    } finally {
      await must('umount', ['-l', join(src, 'p')]);
    }
  });
});

test('a source named inside /proc is walked, with one warning that its files are stored empty', async (t) => {
  await withTmp(async (dir) => {
    const r = await seedAndRestore(dir, 'procsrc', ['/proc/sys/kernel/random', '/proc/self/limits']);
    t.is(r.seed.code, 3, r.seed.stderr);
    const lines = r.seed.stderr.split('\n').filter((l) => /proc filesystem/.test(l));
    t.is(lines.length, 2, r.seed.stderr);
    t.true(lines.some((l) => /\/proc\/sys\/kernel\/random is on a proc filesystem: its files say they hold 0 bytes and are stored empty; copy what you need out of it/.test(l)), r.seed.stderr);
    t.true(lines.some((l) => /\/proc\/self\/limits is a file of a proc filesystem: it says it holds 0 bytes and is stored empty; copy it into a file/.test(l)), r.seed.stderr);
    t.is(r.restore?.code, 0, r.restore?.stderr);
    t.true(existsSync(join(r.out, 'proc/sys/kernel/random/boot_id')));
  });
});
