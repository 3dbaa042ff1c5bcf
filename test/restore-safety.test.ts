// A restore into a target that holds the user's things: never through a
// symlink out of the target, never the user's folder deleted for a file,
// never the metadata of a file outside changed through a hard link, never a
// stopped run's temporary or a folder it moved aside left behind.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { chmod, link, lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, unlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VolumeReader } from '../format/volume/index.js';
import { backup } from './helpers/volume.js';
import { restoreFiles, type RestoreOptions } from '../restore/files.js';
import { setMetaNoFollow } from '../restore/writer.js';
import { ferry, ferryOk, must } from './helpers/exec.js';

const MiB = 1024 ** 2;

async function withTmp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-restore-safety-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function restore(reader: VolumeReader, opts: RestoreOptions) {
  const warnings: string[] = [];
  const r = await restoreFiles(reader, { ...opts, onWarning: (w) => warnings.push(w.message) });
  return { ...r, messages: warnings };
}

async function filesUnder(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => !e.isDirectory()).map((e) => join(e.parentPath ?? (e as { path: string }).path, e.name));
}

test('--path into a target where a folder on the way is a symlink writes nothing outside the target', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'a', 'b'), { recursive: true });
    await writeFile(join(src, 'a', 'b', 'f'), 'data\n');
    const reader = await backup(src);
    const to = join(dir, 'out');
    const evil = join(dir, 'evil');
    await mkdir(to);
    await mkdir(join(evil, ...src.split('/').slice(2), 'a'), { recursive: true });
    // out/<first component of src> -> evil
    await symlink(evil, join(to, src.split('/')[1]));
    for (const ifExists of ['copy', 'overwrite', 'skip'] as const) {
      const r = await restore(reader, { to, paths: [join(src, 'a', 'b')], ifExists });
      t.deepEqual(await filesUnder(evil), [], ifExists);
      t.true(r.messages.some((m) => /is in the way \(not a directory\)/.test(m)), `${ifExists}: ${r.messages.join(' | ')}`);
    }
    // the whole item under skip: the symlink stays, and the warning says what was left out
    const all = await restore(reader, { to, ifExists: 'skip' });
    t.deepEqual(await filesUnder(evil), []);
    t.true(all.messages.some((m) => /is a symlink where the backup has a folder: left as it is, and nothing under it restored/.test(m)), all.messages.join(' | '));
  });
});

test('overwrite replaces a folder where the backup has a file only once the file is there: on a full disk the folder stays', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'big'), randomBytes(12 * MiB));
    const reader = await backup(src);
    const small = join(dir, 'small');
    await mkdir(small);
    await must('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', small]);
    try {
      const to = join(small, 'out');
      await mkdir(join(to, src, 'big'), { recursive: true });
      await writeFile(join(to, src, 'big', 'precious'), randomBytes(6 * MiB)); // 6 + 12 > 16: the file cannot be written
      const failed = await restoreFiles(reader, { to, ifExists: 'overwrite' }).then(() => null, (err: Error & { code?: string }) => err);
      t.is(failed?.code, 'RESTORE_DISK_FULL', failed?.message);
      t.is((await stat(join(to, src, 'big', 'precious'))).size, 6 * MiB, 'the folder and its file are back');
      t.deepEqual((await readdir(join(to, src))).filter((n) => n.startsWith('.ferry-')), []);
      // with room, the same restore replaces it
      await must('mount', ['-o', 'remount,size=64m', small]);
      await restoreFiles(reader, { to, ifExists: 'overwrite' });
      t.true((await lstat(join(to, src, 'big'))).isFile());
      t.deepEqual((await readdir(join(to, src))).filter((n) => n.startsWith('.ferry-')), []);
    } finally {
      await must('umount', ['-l', small]).catch(() => undefined);
    }
  });
});

test('overwrite does not change a file outside the target through a hard link, and a stopped run leaves no temporary under skip', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'f1'), 'hello\n');
    await chmod(join(src, 'f1'), 0o644);
    await writeFile(join(src, 'g'), 'other\n');
    const reader = await backup(src);
    const to = join(dir, 'out');
    await restore(reader, { to });
    // the user links a file of theirs outside the target in place of f1 (same content, other mode and time)
    const outside = join(dir, 'outside');
    await writeFile(outside, 'hello\n');
    await chmod(outside, 0o600);
    await utimes(outside, new Date('2010-01-01T00:00:00Z'), new Date('2010-01-01T00:00:00Z'));
    await rm(join(to, src, 'f1'));
    await link(outside, join(to, src, 'f1'));
    // and a run stopped while it wrote g left its temporary name
    const gid = reader.stat(Buffer.from(join(src, 'g')))!.id;
    const partial = join(to, src, `.ferry-partial-${gid}`);
    await writeFile(partial, 'cut sh');
    await restore(reader, { to, ifExists: 'skip' });
    t.false(existsSync(partial), 'the temporary of the stopped run is gone');
    await restore(reader, { to, ifExists: 'overwrite' });
    const st = await stat(outside);
    t.is(st.mode & 0o7777, 0o600);
    t.is(st.mtime.toISOString(), '2010-01-01T00:00:00.000Z');
    t.is(st.nlink, 1, 'the restored f1 is a file of its own');
    t.is(await readFile(join(to, src, 'f1'), 'utf8'), 'hello\n');
    t.is((await stat(join(to, src, 'f1'))).mode & 0o7777, 0o644);
  });
});

test('a folder moved aside for a file by a restore that was stopped goes back, or goes once the file is there', async (t) => {
  await withTmp(async (dir) => {
    const env = { FERRY_PASSPHRASE: 'restore safety passphrase, long enough' };
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'big'), randomBytes(12 * MiB));
    const vault = join(dir, 'vault');
    await ferryOk(['init', vault, '--kdf-log-n', '12'], env);
    await ferryOk(['seed', '--vault', vault, '--item', 'p', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'd'), src], env);
    await ferryOk(['import', '--vault', vault, join(dir, 'd')], env);
    const to = join(dir, 'out');
    await mkdir(join(to, src, 'big'), { recursive: true });
    await writeFile(join(to, src, 'big', 'precious'), 'mine\n');
    const args = ['restore', '--vault', vault, '--machine', 'm', '--item', 'p', '--to', to];
    // stopped while the file is written: the folder is aside
    const cut = await ferry([...args, '--if-exists', 'overwrite'], { env: { ...env, FERRY_TEST_KILL_AFTER_BYTES: String(4 * MiB) } });
    t.is(cut.code, 128, cut.stderr);
    t.false(existsSync(join(to, src, 'big', 'precious')));
    // skip: the folder comes back and stays
    await ferryOk([...args, '--if-exists', 'skip'], env);
    t.is(await readFile(join(to, src, 'big', 'precious'), 'utf8'), 'mine\n');
    // stopped again, then overwrite to the end: the file, and nothing aside
    t.is((await ferry([...args, '--if-exists', 'overwrite'], { env: { ...env, FERRY_TEST_KILL_AFTER_BYTES: String(4 * MiB) } })).code, 128);
    // (the folder held a file of the user's: its going is a warning)
    const done = await ferry([...args, '--if-exists', 'overwrite'], { env });
    t.is(done.code, 3, done.stderr);
    t.regex(done.stderr, /big was a folder of 1 entry where the backup has a file/);
    t.true((await lstat(join(to, src, 'big'))).isFile());
    t.deepEqual((await readdir(join(to, src))).filter((n) => n.startsWith('.ferry-')), []);
    await must('cmp', [join(src, 'big'), join(to, src, 'big')]);
  });
});

test('a --to that is a symlink to a folder takes --path; overwrite run twice leaves hard links be; skip on a read-only target fails nothing', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'd'), { recursive: true });
    await writeFile(join(src, 'd', 'f'), 'f\n');
    await writeFile(join(src, 'a'), 'linked\n');
    await link(join(src, 'a'), join(src, 'd', 'b'));
    const reader = await backup(src);
    // --to through a symlink, then --path
    const real = join(dir, 'real');
    await mkdir(real);
    const to = join(dir, 'tl');
    await symlink(real, to);
    await restore(reader, { to });
    await unlink(join(real, src, 'd', 'f'));
    const one = await restore(reader, { to, paths: [join(src, 'd', 'f')] });
    t.deepEqual(one.messages, []);
    t.is(await readFile(join(real, src, 'd', 'f'), 'utf8'), 'f\n');
    // overwrite, twice: the restored hard links stay as they are
    const ino = async () => [(await stat(join(real, src, 'a'))).ino, (await stat(join(real, src, 'd', 'b'))).ino];
    const before = await ino();
    t.is(before[0], before[1]);
    const r1 = await restore(reader, { to, ifExists: 'overwrite' });
    const r2 = await restore(reader, { to, ifExists: 'overwrite' });
    t.deepEqual(await ino(), before);
    t.is(r1.restored + r2.restored, 0);
    // a read-only target: skip looks, changes nothing, fails nothing
    const ro = join(dir, 'ro');
    await mkdir(ro);
    await must('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', ro]);
    try {
      await restore(reader, { to: join(ro, 't') });
      await must('mount', ['-o', 'remount,ro', ro]);
      const r = await restore(reader, { to: join(ro, 't'), ifExists: 'skip' });
      t.deepEqual(r.messages, []);
      t.is(r.failed, 0);
    } finally {
      await must('umount', ['-l', ro]).catch(() => undefined);
    }
  });
});

test('owners and modes of folders and nodes are set on the entry itself: a symlink or a file put in its place is refused and keeps its mode', async (t) => {
  await withTmp(async (dir) => {
    const secret = join(dir, 'secret');
    await writeFile(secret, 'not yours');
    await chmod(secret, 0o600);
    // a folder and a fifo that another user swapped for symlinks to a file of root's
    for (const [name, kind] of [['folder', 'dir'], ['fifo', 'node']] as const) {
      const p = join(dir, name);
      await symlink(secret, p);
      const err = t.throws(() => setMetaNoFollow(Buffer.from(p), kind, 0o666, { uid: 0, gid: 0 }));
      t.regex(err!.message, new RegExp(`${name} is no longer the`));
      t.is((await stat(secret)).mode & 0o7777, 0o600, `${name}: the target's mode is unchanged`);
    }
    // a folder expected, a file found (or the reverse): refused as well
    t.throws(() => setMetaNoFollow(Buffer.from(secret), 'dir', 0o644));
    await mkdir(join(dir, 'd'));
    t.throws(() => setMetaNoFollow(Buffer.from(join(dir, 'd')), 'node', 0o644));
    // what is there as restored gets its mode: folders (also ones nobody may read or enter), fifos, files
    for (const mode of [0o000, 0o311, 0o1777, 0o2750]) {
      setMetaNoFollow(Buffer.from(join(dir, 'd')), 'dir', mode);
      t.is((await lstat(join(dir, 'd'))).mode & 0o7777, mode);
    }
    execFileSync('mkfifo', [join(dir, 'f')]);
    setMetaNoFollow(Buffer.from(join(dir, 'f')), 'node', 0o4751, { uid: 1234, gid: 5678 });
    t.is((await lstat(join(dir, 'f'))).mode & 0o7777, 0o4751);
    t.is((await lstat(join(dir, 'f'))).isFIFO(), true);
    t.is((await lstat(join(dir, 'f'))).uid, 1234);
    t.is((await lstat(join(dir, 'f'))).gid, 5678);
    // a regular file where a node was restored (another user's program, say): neither chowned nor chmodded
    await writeFile(join(dir, 'prog'), '#!/bin/sh\n');
    await chmod(join(dir, 'prog'), 0o755);
    t.throws(() => setMetaNoFollow(Buffer.from(join(dir, 'prog')), 'node', 0o4755, { uid: 0, gid: 0 }));
    t.is((await lstat(join(dir, 'prog'))).mode & 0o7777, 0o755);
    t.throws(() => setMetaNoFollow(Buffer.from(join(dir, 'missing')), 'node', 0o644), { code: 'ENOENT' });
  });
});

test('a restore stopped midway into an existing folder leaves the folders it made with their owners and modes, and a copy rerun finishes it', async (t) => {
  await withTmp(async (dir) => {
    const env = { FERRY_PASSPHRASE: 'restore safety passphrase, long enough' };
    const src = join(dir, 'src');
    await mkdir(join(src, 'home', 'alice', 'docs'), { recursive: true });
    await writeFile(join(src, 'home', 'alice', 'docs', 'big'), randomBytes(12 * MiB));
    await writeFile(join(src, 'home', 'alice', 'docs', 'small'), 'small\n');
    for (const [p, mode] of [['home/alice', 0o750], ['home/alice/docs', 0o2770]] as const) {
      await chmod(join(src, p), mode);
      execFileSync('chown', ['1234:5678', join(src, p)]);
    }
    const vault = join(dir, 'vault');
    await ferryOk(['init', vault, '--kdf-log-n', '12'], env);
    await ferryOk(['seed', '--vault', vault, '--item', 'p', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'd'), src], env);
    await ferryOk(['import', '--vault', vault, join(dir, 'd')], env);
    const to = join(dir, 'out');
    await mkdir(join(to, src, 'home'), { recursive: true }); // an existing folder: no marker, --if-exists decides
    const args = ['restore', '--vault', vault, '--machine', 'm', '--item', 'p', '--to', to];
    const cut = await ferry(args, { env: { ...env, FERRY_TEST_KILL_AFTER_BYTES: String(4 * MiB) } });
    t.is(cut.code, 128, cut.stderr);
    const check = async () => {
      for (const [p, mode] of [['home/alice', 0o750], ['home/alice/docs', 0o2770]] as const) {
        const st = await lstat(join(to, src, p));
        t.is(st.uid, 1234, p);
        t.is(st.gid, 5678, p);
        t.is((st.mode & 0o7777).toString(8), mode.toString(8), p);
      }
    };
    await check(); // before: root's, mode 0700, until a run under overwrite
    await ferryOk([...args, '--if-exists', 'copy'], env);
    await check();
    await must('cmp', [join(src, 'home', 'alice', 'docs', 'big'), join(to, src, 'home', 'alice', 'docs', 'big')]);
    t.is(await readFile(join(to, src, 'home', 'alice', 'docs', 'small'), 'utf8'), 'small\n');
  });
});

test('a restore stopped midway into an existing folder, run again under copy, gives the folders it made their times, ACLs and xattrs (its journal of folders made), and the journal goes once all is in place', async (t) => {
  await withTmp(async (dir) => {
    const state = join(dir, 'state');
    const env = { FERRY_PASSPHRASE: 'restore safety passphrase, long enough', FERRY_STATE_DIR: state };
    const src = join(dir, 'src');
    const docs = join(src, 'home', 'alice', 'docs');
    await mkdir(join(docs, 'sub'), { recursive: true });
    await writeFile(join(docs, 'big'), randomBytes(12 * MiB));
    await writeFile(join(docs, 'sub', 'small'), 'small\n');
    await must('setfacl', ['-d', '-m', 'u:nobody:rx', docs]);
    await must('setfattr', ['-n', 'user.tag', '-v', 'docs', docs]);
    await chmod(join(src, 'home', 'alice'), 0o751);
    for (const [p, when] of [[join(docs, 'sub'), '2001-02-03 04:05:06.123456789'], [docs, '2002-03-04 05:06:07.5'], [join(src, 'home', 'alice'), '2003-01-01 00:00:00']]) {
      await must('touch', ['-h', '-d', when, p]);
    }
    const vault = join(dir, 'vault');
    await ferryOk(['init', vault, '--kdf-log-n', '12'], env);
    await ferryOk(['seed', '--vault', vault, '--item', 'p', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'd'), src], env);
    await ferryOk(['import', '--vault', vault, join(dir, 'd')], env);
    const to = join(dir, 'out');
    await mkdir(join(to, src, 'home'), { recursive: true }); // an existing folder: no marker
    const args = ['restore', '--vault', vault, '--machine', 'm', '--item', 'p', '--to', to];
    const cut = await ferry(args, { env: { ...env, FERRY_TEST_KILL_AFTER_BYTES: String(4 * MiB) } });
    t.is(cut.code, 128, cut.stderr);
    const journals = async () => (existsSync(join(state, 'restores')) ? readdir(join(state, 'restores')) : []);
    t.is((await journals()).length, 1, 'the stopped run left its journal');
    const meta = async (root: string, p: string) => {
      const st = await lstat(join(root, p), { bigint: true });
      const x = execFileSync('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', join(root, p)]).toString().split('\n').slice(1).join('\n');
      return { mode: (st.mode & 0o7777n).toString(8), uid: st.uid, mtime: st.mtimeNs, xattrs: x };
    };
    const folders = ['home/alice', 'home/alice/docs', 'home/alice/docs/sub'];
    await ferryOk([...args, '--if-exists', 'copy'], env);
    for (const p of folders) t.deepEqual(await meta(join(to, src), p), await meta(src, p), p);
    await must('cmp', [join(docs, 'big'), join(to, docs, 'big')]);
    t.deepEqual(await journals(), [], 'a run that put everything in place removes the journal');
  });
});

test('under copy and skip, the new links of a group whose file is found in place, hard-linked to a file outside what is restored, do not join that file', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'a'), 'the same data\n');
    await link(join(src, 'a'), join(src, 'b'));
    await link(join(src, 'a'), join(src, 'c'));
    const reader = await backup(src);
    for (const ifExists of ['copy', 'skip'] as const) {
      const to = join(dir, `out-${ifExists}`);
      await mkdir(join(to, src), { recursive: true });
      await mkdir(join(to, 'elsewhere'));
      // the file is in place, equal, and hard-linked to another user's file outside
      await writeFile(join(to, 'elsewhere', 'z'), 'the same data\n');
      await link(join(to, 'elsewhere', 'z'), join(to, src, 'a'));
      const zino = (await stat(join(to, 'elsewhere', 'z'))).ino;
      const r = await restore(reader, { to, ifExists });
      t.deepEqual(r.messages, [], ifExists);
      t.is(r.failed, 0);
      t.is((await stat(join(to, src, 'a'))).ino, zino, `${ifExists}: the file in place is left as it is`);
      const b = await stat(join(to, src, 'b'));
      const c = await stat(join(to, src, 'c'));
      t.not(b.ino, zino, `${ifExists}: b joined the outside file`);
      t.is(b.ino, c.ino, `${ifExists}: b and c are one file, as in the backup`);
      t.is(await readFile(join(to, src, 'b'), 'utf8'), 'the same data\n');
      t.is((await stat(join(to, 'elsewhere', 'z'))).nlink, 2, `${ifExists}: only a links to the outside file`);
    }
    reader.close();
  });
});
