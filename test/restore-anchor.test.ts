// A restore names every entry through its folder's descriptor (restore/anchor.ts):
// a folder on the way swapped for a symlink while the restore runs leads
// nothing out of the target.
import test from 'ava';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmod, chown, lchown, link, lstat, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { walk } from '../source/files.js';
import { MemDisk } from '../format/memdisk.js';
import { writeVolume, VolumeReader } from '../format/volume/index.js';
import { restoreFiles } from '../restore/files.js';
import { removeTree } from '../restore/anchor.js';

const GiB = 1024 ** 3;

async function withTmp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-restore-anchor-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function backup(src: string | string[]): Promise<VolumeReader> {
  const disk = new MemDisk(2040 * GiB);
  await writeVolume(disk, walk(Array.isArray(src) ? src : [src]), {});
  return VolumeReader.open(disk);
}

// Swaps folder d for a symlink to `outside` and back, as fast as it can, until killed.
const SWAPPER = String.raw`
my ($d, $real, $outside) = @ARGV;
$| = 1; print "go\n";
while (1) {
  rename($d, $real) or next;
  symlink($outside, $d);
  select(undef, undef, undef, 0.0003);
  unlink($d);
  rename($real, $d);
  select(undef, undef, undef, 0.0003);
}`;

test('a folder in the target swapped for a symlink and back, over and over while files are restored into it: nothing lands outside', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'd', 'sub'), { recursive: true });
    for (let i = 0; i < 400; i++) await writeFile(join(src, 'd', `f${i}`), `file ${i}\n`.repeat(1 + (i % 7)));
    for (let i = 0; i < 100; i++) await writeFile(join(src, 'd', 'sub', `g${i}`), `sub ${i}\n`);
    const reader = await backup(src);
    const target = join(dir, 'target');
    const outside = join(dir, 'outside');
    await mkdir(outside);
    // the folder already there (another user's, say): files go in under temporary names, then are renamed
    const d = join(target, src.slice(1), 'd');
    await mkdir(join(d, 'sub'), { recursive: true });
    const swapper = spawn('perl', ['-e', SWAPPER, d, `${d}.real`, outside], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((res, rej) => {
        swapper.stdout.once('data', () => res());
        swapper.once('error', rej);
      });
      for (const ifExists of ['overwrite', 'copy'] as const) {
        await restoreFiles(reader, { to: target, ifExists, onWarning: () => {} });
      }
    } finally {
      swapper.kill('SIGKILL');
      await new Promise((res) => swapper.once('close', res));
    }
    t.deepEqual(await readdir(outside), [], 'nothing was written through the symlink');
    // and what was restored inside is right (the swapper may have left the user's folder at its other
    // name, and overwrite may have replaced a symlink it found at d with a new folder)
    let checked = 0;
    for (const real of [d, `${d}.real`]) {
      if (!(await lstat(real).catch(() => null))?.isDirectory()) continue;
      for (const name of await readdir(real)) {
        if (!/^f\d+$/.test(name)) continue;
        const i = Number(name.slice(1));
        t.is(await readFile(join(real, name), 'utf8'), `file ${i}\n`.repeat(1 + (i % 7)));
        checked++;
      }
    }
    // (how many made it depends on the race: a folder swapped in over one the restore made takes its place)
    t.log(`${checked} files restored and checked`);
    reader.close();
  });
});

test('to the original places, a symlink where the backup passed through a folder is followed only when root made it in a folder only root can write', async (t) => {
  await withTmp(async (dir) => {
    // dir is root's, mode 0700: a symlink root put in it is trusted
    await mkdir(join(dir, 'real'));
    await symlink(join(dir, 'real'), join(dir, 'link'));
    await mkdir(join(dir, 'real', 'src'));
    await writeFile(join(dir, 'real', 'src', 'a'), 'a\n');
    // stored under the path through the link (the walker keeps the path it was given)
    const reader = await backup(`${join(dir, 'link', 'src')}/`);
    await rm(join(dir, 'real', 'src'), { recursive: true });
    await mkdir(join(dir, 'real', 'src'));
    const warnings: string[] = [];
    const r = await restoreFiles(reader, { ifExists: 'overwrite', onWarning: (w) => warnings.push(w.message) });
    t.deepEqual(warnings, []);
    t.is(r.failed, 0);
    t.is(await readFile(join(dir, 'real', 'src', 'a'), 'utf8'), 'a\n');
    // the same link in a folder anyone may write: refused, named, and nothing written through it
    await chmod(dir, 0o777);
    await rm(join(dir, 'real', 'src', 'a'));
    const again: string[] = [];
    const r2 = await restoreFiles(reader, { ifExists: 'overwrite', onWarning: (w) => again.push(w.message) });
    t.is(r2.failed, 0);
    t.true(again.some((m) => m.includes(`${join(dir, 'link')} is a symlink where the backup only passes through a folder`)), again.join('\n'));
    t.false(again.some((m) => m.includes('/proc/')), 'messages name the folders, not descriptors');
    t.deepEqual(await readdir(join(dir, 'real', 'src')), []);
    await chmod(dir, 0o700);
    reader.close();
  });
});

test('removing a folder in the way never deletes through a symlink, also not one swapped in while it runs', async (t) => {
  await withTmp(async (dir) => {
    const outside = join(dir, 'outside');
    await mkdir(join(outside, 'keep'), { recursive: true });
    for (let i = 0; i < 50; i++) await writeFile(join(outside, `o${i}`), 'keep\n');
    await writeFile(join(outside, 'keep', 'k'), 'keep\n');
    // symlinks inside the tree: removed themselves, what they point to stays
    const tree = join(dir, 'tree');
    await mkdir(join(tree, 'a', 'b'), { recursive: true });
    await symlink(outside, join(tree, 'a', 'to-dir'));
    await symlink(join(outside, 'o1'), join(tree, 'a', 'b', 'to-file'));
    await writeFile(join(tree, 'a', 'b', 'f'), 'x');
    removeTree(Buffer.from(tree));
    await t.throwsAsync(lstat(tree), { code: 'ENOENT' });
    t.is((await readdir(outside)).length, 51);
    removeTree(Buffer.from(tree)); // missing: nothing to do
    removeTree(Buffer.from(join(dir, 'outside', 'o0'))); // a file: unlinked
    t.is((await readdir(outside)).length, 50);
    await writeFile(join(outside, 'o0'), 'keep\n');
    // a folder inside swapped for a symlink to `outside` and back while the tree is removed
    for (let round = 0; round < 20; round++) {
      const tree = join(dir, `race${round}`); // a fresh tree each round: nothing a killed swapper left behind
      const sub = join(tree, 'sub');
      await mkdir(sub, { recursive: true });
      for (let i = 0; i < 50; i++) await writeFile(join(sub, `o${i}`), 'mine\n');
      const swapper = spawn('perl', ['-e', SWAPPER, sub, `${sub}.real`, outside], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        await new Promise<void>((res, rej) => {
          swapper.stdout.once('data', () => res());
          swapper.once('error', rej);
        });
        for (let k = 0; k < 5; k++) {
          try {
            removeTree(Buffer.from(tree));
          } catch {
            /* the swapper moved things meanwhile: what matters is below */
          }
        }
      } finally {
        swapper.kill('SIGKILL');
        await new Promise((res) => swapper.once('close', res));
      }
      await rm(tree, { recursive: true, force: true }).catch(() => {});
    }
    t.is((await readdir(outside)).length, 51, 'every file outside is still there');
    t.is(await readFile(join(outside, 'keep', 'k'), 'utf8'), 'keep\n');
  });
});

// Puts another hard link of `kept` (the user's own program) at name `a` and takes it away again, over and
// over until killed, keeping what was at `a` aside meanwhile.
const FILE_SWAPPER = String.raw`
my ($a, $kept, $t) = @ARGV;
$| = 1; print "go\n";
while (1) {
  rename($a, $t) or next;
  link($kept, $a);
  select(undef, undef, undef, 0.0002);
  unlink($a);
  rename($t, $a);
  select(undef, undef, undef, 0.0002);
}`;

test('overwrite of a file found equal sets owner, mode and capabilities on that file only, never on one swapped in at its name', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'd'), { recursive: true });
    const prog = join(src, 'd', 'prog');
    await writeFile(prog, '#!/bin/sh\necho restored\n');
    await chmod(prog, 0o4755);
    execFileSync('setfattr', ['-n', 'trusted.ferry-test', '-v', 'power', prog]);
    // the folder is one others may write, in the backup too (the restore sets the folder's mode as backed up)
    await chmod(join(src, 'd'), 0o777);
    const reader = await backup(src);
    const target = join(dir, 'target');
    const d = join(target, src.slice(1), 'd');
    await mkdir(d, { recursive: true });
    await chmod(d, 0o777); // another user may add, remove and rename entries here
    // the same file, the user's now; and the user's own program beside it
    await writeFile(join(d, 'prog'), '#!/bin/sh\necho restored\n');
    await chown(join(d, 'prog'), 1000, 1000);
    await chmod(join(d, 'prog'), 0o755);
    // the user's own program, kept beside the folder and linked in at the name again and again
    const evil = join(dir, 'evil-kept');
    await writeFile(evil, '#!/bin/sh\necho evil!!!\n');
    await chown(evil, 1000, 1000);
    await chmod(evil, 0o755);
    const swapper = spawn('perl', ['-e', FILE_SWAPPER, join(d, 'prog'), evil, join(d, 'tmp')], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((res, rej) => {
        swapper.stdout.once('data', () => res());
        swapper.once('error', rej);
      });
      for (let i = 0; i < 40; i++) await restoreFiles(reader, { to: target, ifExists: 'overwrite', onWarning: () => {} });
    } finally {
      swapper.kill('SIGKILL');
      await new Promise((res) => swapper.once('close', res));
    }
    // the user's program is as the user made it
    t.is(await readFile(evil, 'utf8'), '#!/bin/sh\necho evil!!!\n');
    const st = await lstat(evil);
    t.is(st.uid, 1000, 'still the user\'s');
    t.is(st.mode & 0o7777, 0o755, 'not made setuid');
    t.not(spawnSync('getfattr', ['-n', 'trusted.ferry-test', evil]).status, 0, 'no capability-like xattr');
    reader.close();
  });
});

test('the owner of a restored symlink is set on the symlink itself, through its descriptor, into a new and an existing folder', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await symlink('/etc/passwd', join(src, 'l'));
    await lchown(join(src, 'l'), 1234, 5678);
    const reader = await backup(src);
    const before = await lstat('/etc/passwd');
    for (const [to, existing] of [[join(dir, 'new'), false], [join(dir, 'old'), true]] as const) {
      if (existing) await mkdir(join(to, src), { recursive: true });
      const warnings: string[] = [];
      await restoreFiles(reader, { to, ifExists: 'overwrite', onWarning: (w) => warnings.push(w.message) });
      t.deepEqual(warnings, []);
      const st = await lstat(join(to, src, 'l'));
      t.true(st.isSymbolicLink());
      t.is(st.uid, 1234);
      t.is(st.gid, 5678);
    }
    const after = await lstat('/etc/passwd');
    t.is(after.uid, before.uid);
    t.is(after.gid, before.gid);
    reader.close();
  });
});
