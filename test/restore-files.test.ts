// walk -> VolumeWriter on a MemDisk -> VolumeReader -> restoreFiles, checked
// with the tree comparer; then selections, --if-exists policies, re-runs,
// restores to the original place and damaged data.
import test from 'ava';
import { mkdtemp, rm, writeFile, readFile, mkdir, readdir, unlink, lstat, utimes, truncate, chmod, chown } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { walk } from '../source/files.js';
import { MemDisk } from '../format/memdisk.js';
import { writeVolume, VolumeReader } from '../format/volume/index.js';
import { restoreFiles, type RestoreOptions } from '../restore/files.js';
import { MARKER_NAME, prepareTarget as markTarget, removeMarker } from '../restore/marker.js';
import { makeTree, snapshotTree, diffSnapshots, compareTrees, NAMES, pseudoRandom } from './helpers/tree.js';
import { must, run } from './helpers/exec.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

async function withTmp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-restore-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function backup(src: string): Promise<{ reader: VolumeReader; disk: MemDisk; warnings: string[] }> {
  const disk = new MemDisk(2040 * GiB);
  const warnings: string[] = [];
  await writeVolume(disk, walk([src], { onWarning: (w) => warnings.push(w.message) }), { onWarning: (w) => warnings.push(w.message) });
  return { reader: await VolumeReader.open(disk), disk, warnings };
}

async function restore(reader: VolumeReader, opts: RestoreOptions) {
  const warnings: string[] = [];
  const r = await restoreFiles(reader, { ...opts, onWarning: (w) => warnings.push(w.message) });
  return { ...r, messages: warnings };
}

test('every kind of entry comes back equal: content, owners, modes, ns times, xattrs, ACLs, links, devices, sparse', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await makeTree(src); // with the 8 GiB sparse file
    const before = await snapshotTree(src);
    const { reader, warnings } = await backup(src);
    t.deepEqual(warnings, []);
    const to = join(dir, 'out');
    let progress = 0;
    const r = await restoreFiles(reader, { to, onWarning: (w) => t.fail(w.message), onProgress: () => progress++ });
    t.is(r.warnings, 0);
    t.true(progress > 0);
    t.true(r.restored >= 80, `restored ${r.restored}`);
    const after = await snapshotTree(join(to, src));
    t.deepEqual(diffSnapshots(before, after), []);
    reader.close();
  });
});

test('the comparer does see differences', async (t) => {
  await withTmp(async (dir) => {
    await makeTree(join(dir, 'a'), { hugeSparse: 0 });
    await makeTree(join(dir, 'b'), { hugeSparse: 0 });
    const before = await snapshotTree(join(dir, 'a'));
    const b = join(dir, 'b');
    await utimes(join(b, 'hello.txt'), 5, 5);
    await unlink(join(b, 'links', 'pair-2'));
    await writeFile(join(b, 'links', 'pair-2'), 'pair'); // same bytes, but no longer linked
    const diffs = diffSnapshots(before, await snapshotTree(b));
    t.true(diffs.some((d) => d.startsWith('hello.txt: mtime')), diffs.join('\n'));
    t.true(diffs.some((d) => d.startsWith('hard-link groups differ')), diffs.join('\n'));
  });
});

test('a re-run finishes an interrupted restore and changes nothing else', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await makeTree(src, { hugeSparse: 0 });
    const { reader } = await backup(src);
    const to = join(dir, 'out');
    await restore(reader, { to });
    // simulate an interruption: a file half written under its temporary name, a missing subtree
    const base = join(to, src);
    const multi = reader.stat(join(src, 'multi-chunk.bin'))!;
    await unlink(join(base, 'multi-chunk.bin'));
    await writeFile(join(base, `.ferry-partial-${multi.id}`), 'half');
    await rm(join(base, 'links', 'b'), { recursive: true });
    // copy and skip leave existing directories' times alone; overwrite sets them again
    for (const ifExists of ['copy', 'skip', 'overwrite'] as const) {
      const r = await restore(reader, { to, ifExists });
      t.deepEqual(r.messages, []);
      t.is(r.copies, 0, `${ifExists}: no copies of equal files`);
    }
    t.deepEqual(await compareTrees(src, base), []);
    t.false((await readdir(base)).some((n) => n.startsWith('.ferry-partial')), 'no temporary files left');
    reader.close();
  });
});

test('an interrupted restore into a new folder: what it left is its own, finished on the next run whatever the policy', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await makeTree(src, { hugeSparse: 0 });
    const { reader } = await backup(src);
    const base = (to: string) => join(to, src);
    const volume = reader.superblock.uuid.toString('hex');
    // What a restore killed mid-way leaves: folders it made, still 0700 with
    // the time they were made, a file cut short under its real name, and
    // (unless a kill came before it was written) its marker.
    const interrupted = async (to: string, marker: boolean) => {
      await restore(reader, { to });
      t.false(existsSync(join(to, MARKER_NAME)), 'a complete restore into a new folder leaves no marker');
      const d = base(to);
      await truncate(join(d, 'multi-chunk.bin'), MiB);
      for (const x of [d, join(d, 'links'), join(d, 'links', 'b', 'c')]) {
        await chmod(x, 0o700);
        await utimes(x, new Date(), new Date());
      }
      if (marker) await writeFile(join(to, MARKER_NAME), JSON.stringify({ format: 'ferry-restore-unfinished', volume }));
    };

    // without the marker the folder is the user's: the cut-short file is kept, the backup's copy beside it
    const plain = join(dir, 'plain');
    await interrupted(plain, false);
    const r0 = await restore(reader, { to: plain });
    t.is(r0.copies, 1);
    t.true((await readdir(base(plain))).some((n) => n.startsWith('multi-chunk.bin.ferry-restored-')));

    // a marker that is not the restoring user's counts for nothing
    const foreign = join(dir, 'foreign');
    await interrupted(foreign, true);
    await chown(join(foreign, MARKER_NAME), 12345, 12345);
    t.is((await restore(reader, { to: foreign })).copies, 1);

    // with it, the file is replaced and the folders get their metadata, under every policy
    for (const ifExists of ['copy', 'skip', 'overwrite'] as const) {
      const to = join(dir, `out-${ifExists}`);
      await interrupted(to, true);
      const r = await restore(reader, { to, ifExists });
      t.deepEqual(r.messages, []);
      t.is(r.copies, 0, ifExists);
      t.deepEqual(await compareTrees(src, base(to)), [], ifExists);
      t.false(existsSync(join(to, MARKER_NAME)), `${ifExists}: the marker goes once the whole volume is restored`);
    }

    // a narrower run finishes what it covers (folders up to `to` included) and keeps the marker for the rest
    const narrow = join(dir, 'narrow');
    await interrupted(narrow, true);
    const r1 = await restore(reader, { to: narrow, paths: [join(src, 'links', 'b', 'c', 'link2')] });
    t.is(r1.messages.length, 1);
    t.regex(r1.messages[0], /\.ferry-restore-unfinished stays: this run restored only part of the backup/);
    t.is(r1.copies, 0);
    for (const x of [base(narrow), join(base(narrow), 'links'), join(base(narrow), 'links', 'b', 'c')]) {
      const [a, b] = [await lstat(x.replace(narrow, '')), await lstat(x)];
      t.is(b.mode, a.mode, x);
      t.is(b.mtimeMs, a.mtimeMs, x);
    }
    t.true(existsSync(join(narrow, MARKER_NAME)), 'the marker stays: multi-chunk.bin is still cut short');
    // the same target spelled with a trailing slash is the same target
    const r2 = await restore(reader, { to: `${narrow}/` });
    t.deepEqual(r2.messages, []);
    t.is(r2.copies, 0);
    t.deepEqual(await compareTrees(src, base(narrow)), []);
    t.false(existsSync(join(narrow, MARKER_NAME)));

    // the marker of another backup's restore: left alone, and this run follows the policy
    const other = join(dir, 'other');
    await interrupted(other, false);
    await writeFile(join(other, MARKER_NAME), JSON.stringify({ format: 'ferry-restore-unfinished', volume: 'ff'.repeat(16) }));
    const r3 = await restore(reader, { to: other });
    t.is(r3.copies, 1);
    t.true(existsSync(join(other, MARKER_NAME)));
    t.true(r3.messages.some((m) => /a restore of another backup into this folder did not finish/.test(m)), r3.messages.join('\n'));
    reader.close();
  });
});

test('prepareTarget: a new or empty folder is marked; a marked one is inherited only from the same backup and the same user', async (t) => {
  await withTmp(async (dir) => {
    const vol = 'ab'.repeat(16);
    const made = join(dir, 'made', 'deep');
    t.like(markTarget(Buffer.from(made), vol), { active: true, inherited: false });
    t.true(existsSync(join(made, MARKER_NAME)));
    t.like(markTarget(Buffer.from(made), vol), { active: true, inherited: true, volume: vol });
    t.like(markTarget(Buffer.from(made), 'cd'.repeat(16)), { active: false, inherited: false, other: true });
    const empty = join(dir, 'empty');
    await mkdir(empty);
    t.like(markTarget(Buffer.from(empty), vol), { active: true, inherited: false });
    const full = join(dir, 'full');
    await mkdir(full);
    await writeFile(join(full, 'mine'), 'x');
    t.like(markTarget(Buffer.from(full), vol), { active: false, inherited: false, other: false });
    t.false(existsSync(join(full, MARKER_NAME)));
    await writeFile(join(full, MARKER_NAME), '{"volume":"' + vol + '"}');
    await chown(join(full, MARKER_NAME), 12345, 12345);
    t.like(markTarget(Buffer.from(full), vol), { active: false, inherited: false }, 'a marker of another user is not one');
    removeMarker(Buffer.from(made));
    t.false(existsSync(join(made, MARKER_NAME)));
  });
});

test('a target that cannot be a folder is a clear error, with nothing started or left running', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'f'), 'x');
    const { reader } = await backup(src);
    await writeFile(join(dir, 'afile'), 'not a folder');
    for (const to of [join(dir, 'afile'), join(dir, 'afile', 'sub')]) {
      const err = await t.throwsAsync(restoreFiles(reader, { to }));
      t.is((err as { code?: string }).code, 'RESTORE_TARGET', to);
      t.regex(err!.message, to.endsWith('sub') ? /a file stands where a folder of the path goes; give --to a folder/ : /it is a file, not a folder; give --to a folder/);
    }
    reader.close();
  });
});

async function conflictTree(dir: string) {
  const src = join(dir, 'src');
  await mkdir(join(src, 'sub'), { recursive: true });
  await writeFile(join(src, 'changed.txt'), 'from the backup');
  await writeFile(join(src, 'equal.txt'), 'same');
  await writeFile(join(src, 'sub', 'only-in-backup.txt'), 'new');
  await writeFile(join(src, 'was-file'), 'a file in the backup');
  return src;
}

async function prepareTarget(to: string, src: string) {
  const base = join(to, src);
  await mkdir(join(base, 'sub'), { recursive: true });
  await writeFile(join(base, 'changed.txt'), 'edited since');
  await writeFile(join(base, 'equal.txt'), 'same');
  await writeFile(join(base, 'extra.txt'), 'only in the target');
  await mkdir(join(base, 'was-file'));
  await writeFile(join(base, 'was-file', 'x'), 'x');
  return base;
}

test('ifExists copy keeps existing files and writes the restored ones beside them', async (t) => {
  await withTmp(async (dir) => {
    const src = await conflictTree(dir);
    const { reader } = await backup(src);
    const to = join(dir, 'out');
    const base = await prepareTarget(to, src);
    const r = await restore(reader, { to, ifExists: 'copy', point: '7' });
    t.deepEqual(r.messages, []);
    t.is(await readFile(join(base, 'changed.txt'), 'utf8'), 'edited since');
    t.is(await readFile(join(base, 'changed.txt.ferry-restored-7'), 'utf8'), 'from the backup');
    t.is(await readFile(join(base, 'equal.txt'), 'utf8'), 'same');
    await t.throwsAsync(lstat(join(base, 'equal.txt.ferry-restored-7')), undefined, 'no copy of an equal file');
    t.is(await readFile(join(base, 'extra.txt'), 'utf8'), 'only in the target');
    t.is(await readFile(join(base, 'sub', 'only-in-backup.txt'), 'utf8'), 'new');
    t.true((await lstat(join(base, 'was-file'))).isDirectory());
    t.is(await readFile(join(base, 'was-file.ferry-restored-7'), 'utf8'), 'a file in the backup');
    t.is(r.copies, 2);
    t.true(r.unchanged >= 1);
    reader.close();
  });
});

test('ifExists overwrite replaces what differs, leaves extra files', async (t) => {
  await withTmp(async (dir) => {
    const src = await conflictTree(dir);
    const { reader } = await backup(src);
    const to = join(dir, 'out');
    const base = await prepareTarget(to, src);
    const r = await restore(reader, { to, ifExists: 'overwrite' });
    // the folder of the user's in the way of a file goes, and is named
    t.deepEqual(r.messages, [`${join(base, 'was-file')} was a folder of 1 entry where the backup has a file: replaced by the file, and what it held removed (--if-exists overwrite)`]);
    // compared first: reading a file below changes its atime
    t.deepEqual(await compareTrees(src, base, { ignore: (k) => k === 'extra.txt' || k === '' }), []);
    t.is(await readFile(join(base, 'changed.txt'), 'utf8'), 'from the backup');
    t.is(await readFile(join(base, 'was-file'), 'utf8'), 'a file in the backup');
    t.is(await readFile(join(base, 'extra.txt'), 'utf8'), 'only in the target');
    t.is(r.copies, 0);
    reader.close();
  });
});

test('ifExists skip leaves every existing entry alone', async (t) => {
  await withTmp(async (dir) => {
    const src = await conflictTree(dir);
    const { reader } = await backup(src);
    const to = join(dir, 'out');
    const base = await prepareTarget(to, src);
    const r = await restore(reader, { to, ifExists: 'skip' });
    t.deepEqual(r.messages, []);
    t.is(await readFile(join(base, 'changed.txt'), 'utf8'), 'edited since');
    t.true((await lstat(join(base, 'was-file'))).isDirectory());
    t.is(await readFile(join(base, 'sub', 'only-in-backup.txt'), 'utf8'), 'new');
    t.is(r.copies, 0);
    t.true(r.skipped >= 2);
    reader.close();
  });
});

test('paths select entries (exact paths and globs; a directory brings its subtree); a lone hard link carries the data', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await makeTree(src, { hugeSparse: 0 });
    const { reader } = await backup(src);
    const to1 = join(dir, 'one');
    await restore(reader, { to: to1, paths: [join(src, 'links', 'b')] });
    const got = await readdir(join(to1, src));
    t.deepEqual(got, ['links']);
    const l1 = await lstat(join(to1, src, 'links', 'b', 'link1'));
    const l2 = await lstat(join(to1, src, 'links', 'b', 'c', 'link2'));
    t.is(l1.ino, l2.ino, 'the two selected links are still one file');
    t.true((await readFile(join(to1, src, 'links', 'b', 'link1'))).equals(pseudoRandom(100_000, 5)));
    // globs
    const to2 = join(dir, 'two');
    await restore(reader, { to: to2, paths: ['*.txt'] });
    const names = (await readdir(join(to2, src))).sort();
    t.true(names.includes('hello.txt'));
    t.true(names.includes('xattrs.txt'));
    t.false(names.includes('multi-chunk.bin'));
    t.true((await readdir(join(to2, src, 'deep'))).length === 1, 'deep/.../bottom.txt came with its parents');
    reader.close();
  });
});

test('a --path that names nothing in the backup: an error before anything is made when none does, a warning beside one that does', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'sub'), { recursive: true });
    await writeFile(join(src, 'sub', 'a.conf'), 'a');
    const { reader } = await backup(src);
    const to = join(dir, 'out');
    for (const paths of [[join(src, 'nope')], ['*.xyz'], ['sub/a.conf.bak', join(src, 'gone')]]) {
      const err = await t.throwsAsync(restore(reader, { to, paths }));
      t.is((err as { code?: string }).code, 'RESTORE_NO_SUCH_PATH');
      t.true(err!.message.startsWith(`nothing in this backup matches --path ${JSON.stringify(paths[0])}`), err!.message);
      t.false(existsSync(to), 'nothing made, not even the target');
    }
    const r = await restore(reader, { to, paths: [join(src, 'nope'), 'sub/*.conf'] });
    t.deepEqual(r.messages, [`nothing in this backup matches --path ${JSON.stringify(join(src, 'nope'))}`]);
    t.is(await readFile(join(to, src, 'sub', 'a.conf'), 'utf8'), 'a');
    // a path spelled with // and a trailing slash is the same path
    const to2 = join(dir, 'out2');
    const r2 = await restore(reader, { to: to2, paths: [`${src.replace(/\/src$/, '//src')}//sub/`] });
    t.deepEqual(r2.messages, []);
    t.is(await readFile(join(to2, src, 'sub', 'a.conf'), 'utf8'), 'a');
    reader.close();
  });
});

test('without --to, entries go back to their original place', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await makeTree(src, { hugeSparse: 64 * MiB });
    const before = await snapshotTree(src);
    const { reader } = await backup(src);
    await rm(src, { recursive: true });
    const r = await restore(reader, {});
    t.deepEqual(r.messages, []);
    t.deepEqual(diffSnapshots(before, await snapshotTree(src)), []);
    reader.close();
  });
});

test('damaged data: the file is restored as read, with a warning, and the rest goes on', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'a'), pseudoRandom(2 * MiB, 1)); // written by the writer thread
    await writeFile(join(src, 'b'), 'fine');
    await writeFile(join(src, 'c'), pseudoRandom(6 * MiB, 2)); // written piece by piece on the main thread
    const { reader, disk } = await backup(src);
    const a = reader.stat(join(src, 'a'))!;
    const c = reader.stat(join(src, 'c'))!;
    t.is(c.extents.length, 1);
    await disk.write(a.extents[0].diskOffset + MiB + 5, Buffer.from('XX')); // second chunk of a
    await disk.write(c.extents[0].diskOffset + 5 * MiB + 7, Buffer.from('YY')); // sixth chunk of c
    const to = join(dir, 'out');
    const r = await restore(reader, { to });
    t.is(r.messages.length, 2, r.messages.join('\n'));
    t.true(r.messages.some((m) => m.includes(`${join(src, 'a')}: data at offset ${MiB} does not match its checksum`)), r.messages.join('\n'));
    t.true(r.messages.some((m) => m.includes(`${join(src, 'c')}: data at offset ${5 * MiB} does not match its checksum`)), r.messages.join('\n'));
    t.is(await readFile(join(to, src, 'b'), 'utf8'), 'fine');
    const ra = await readFile(join(to, src, 'a'));
    t.is(ra.length, 2 * MiB);
    t.is(ra.subarray(MiB + 5, MiB + 7).toString(), 'XX', 'restored as read');
    t.is((await readFile(join(to, src, 'c'))).length, 6 * MiB);
    reader.close();
  });
});

test('names: 255-byte and non-UTF-8 names get copies that still fit', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, NAMES.long), 'backup');
    await writeFile(Buffer.concat([Buffer.from(src + '/'), NAMES.nonUtf8]), 'backup');
    const { reader } = await backup(src);
    const to = join(dir, 'out');
    await mkdir(join(to, src), { recursive: true });
    await writeFile(join(to, src, NAMES.long), 'local');
    await writeFile(Buffer.concat([Buffer.from(join(to, src) + '/'), NAMES.nonUtf8]), 'local');
    const r = await restore(reader, { to, ifExists: 'copy', point: 'p1' });
    t.deepEqual(r.messages, []);
    t.is(r.copies, 2);
    const names = await readdir(join(to, src), { encoding: 'buffer' });
    t.is(names.length, 4);
    t.true(names.every((n) => n.length <= 255));
    reader.close();
  });
});

test('a full disk stops the restore with one clear error; after space is freed the same restore finishes the job', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'd'), { recursive: true });
    for (let i = 0; i < 24; i++) await writeFile(join(src, 'd', `f${String(i).padStart(2, '0')}`), pseudoRandom(MiB, i + 1));
    await chmod(join(src, 'd'), 0o750);
    const before = await snapshotTree(src);
    const { reader } = await backup(src);
    // an 8 MiB tmpfs holds a third of the 24 MiB
    const small = join(dir, 'small');
    await mkdir(small);
    await must('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', small]);
    try {
      const to = join(small, 'out');
      const messages: string[] = [];
      const err = await t.throwsAsync(restoreFiles(reader, { to, onWarning: (w) => messages.push(w.message) }), { code: 'RESTORE_DISK_FULL' });
      t.regex(err!.message, /^the disk is full: .*f\d\d and what follows it could not be restored to .*out \(\d+ entries, .* were\); free space there and run the same restore again/);
      // one error, not a warning per file that no longer fits
      t.deepEqual(messages, []);
      t.true(existsSync(join(to, MARKER_NAME)), 'the marker stays');
      // what is there is whole, and the folder got its mode
      const restoredDir = join(to, src, 'd');
      const names = await readdir(restoredDir);
      t.true(names.length >= 1 && names.length < 24, `${names.length} files`);
      for (const n of names) t.deepEqual(await readFile(join(restoredDir, n)), await readFile(join(src, 'd', n)), n);
      t.is((await lstat(restoredDir)).mode & 0o7777, 0o750);

      await must('mount', ['-o', 'remount,size=64m', small]);
      const r = await restore(reader, { to });
      t.deepEqual(r.messages, []);
      t.is(r.failed, 0);
      t.false(existsSync(join(to, MARKER_NAME)), 'the marker is gone');
      t.deepEqual(diffSnapshots(before, await snapshotTree(join(to, src))), []);
    } finally {
      await run('umount', ['-l', small]);
      reader.close();
    }
  });
});
