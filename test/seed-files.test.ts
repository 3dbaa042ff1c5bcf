// The files kind from end to end through the real CLI: a tree with every kind
// of entry is seeded over several disks, imported in reverse order and
// restored; content and every metadata field must equal the source. Then the
// --if-exists policies, alternate-server recovery and system state.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, writeFile, symlink, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { SEED_MANIFEST } from '../format/seedmanifest.js';
import { ferry, ferryOk, must, withTmp } from './helpers/exec.js';
import { diffSnapshots, makeTree, snapshotTree } from './helpers/tree.js';

const PASS = 'files test passphrase, long enough';
const env = { FERRY_PASSPHRASE: PASS };
const MiB = 1024 * 1024;

const ok = (args: string[]) => ferryOk(args, env);

async function vaultWithSeed(dir: string, src: string, item: string, capacity = '6M', machine = 'alpha', opts = { importNow: true }): Promise<{ vault: string; disks: string[] }> {
  const vault = join(dir, 'vault');
  await ok(['init', vault, '--kdf-log-n', '12']);
  const targets = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => join(dir, `disk${n}`));
  await ok(['seed', '--vault', vault, '--item', item, '--kind', 'files', '--machine', machine, '--disk-capacity', capacity, ...targets.flatMap((d) => ['--disk', d]), src]);
  const disks = targets.filter((d) => existsSync(join(d, SEED_MANIFEST)));
  if (opts.importNow) await ok(['import', '--vault', vault, ...disks]);
  return { vault, disks };
}

test('a tree with every kind of entry survives seed over several disks, reverse import and restore, metadata and all', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await makeTree(src, { hugeSparse: 8 * 1024 * MiB });
    await writeFile(join(src, 'random.bin'), randomBytes(11 * MiB));
    // Snapshot before the seed reads anything: reading may move atimes.
    const before = await snapshotTree(src);
    const { vault, disks } = await vaultWithSeed(dir, src, 'tree', '6M', 'alpha', { importNow: false });
    t.true(disks.length >= 3, `spans at least three disks (got ${disks.length})`);
    for (const d of [...disks].reverse()) await ok(['import', '--vault', vault, d]);
    const points = JSON.parse(await ok(['points', '--vault', vault, '--json']));
    t.is(points.length, 1);
    t.like(points[0], { seq: 1, machine: 'alpha', item: 'tree', kind: 'files', source: 'seed' });
    t.true(points[0].size >= 11 * MiB);
    const out = join(dir, 'out');
    await ok(['restore', '--vault', vault, '--machine', 'alpha', '--item', 'tree', '--to', out]);
    const after = await snapshotTree(join(out, src));
    t.deepEqual(diffSnapshots(before, after), [], 'first restore');
    t.true(before.size > 20, 'the tree is not trivial');
    // a second restore over the first is idempotent: everything equal, nothing copied
    const again = JSON.parse(await ok(['restore', '--vault', vault, '--machine', 'alpha', '--item', 'tree', '--to', out, '--json']));
    t.is(again.restored, 0);
    t.deepEqual(diffSnapshots(before, await snapshotTree(join(out, src))), [], 'second restore leaves everything as it was');
  });
});

test('--if-exists copy, overwrite and skip do what they say on changed, equal and extra files', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'sub'), { recursive: true });
    await writeFile(join(src, 'changed.txt'), 'original content\n');
    await writeFile(join(src, 'equal.txt'), 'same\n');
    await writeFile(join(src, 'sub', 'only-in-backup.txt'), 'from the backup\n');
    const { vault } = await vaultWithSeed(dir, src, 'ie', '64M');
    const prepare = async (to: string) => {
      const root = join(to, src);
      await rm(to, { recursive: true, force: true });
      await mkdir(join(root, 'sub'), { recursive: true });
      await writeFile(join(root, 'changed.txt'), 'edited since\n');
      await writeFile(join(root, 'equal.txt'), 'same\n');
      await writeFile(join(root, 'extra.txt'), 'not in the backup\n');
      return root;
    };
    const restore = (to: string, policy: string) => ok(['restore', '--vault', vault, '--machine', 'alpha', '--item', 'ie', '--to', to, '--if-exists', policy]);

    const c = await prepare(join(dir, 'copy'));
    await restore(join(dir, 'copy'), 'copy');
    t.is(await readFile(join(c, 'changed.txt'), 'utf8'), 'edited since\n', 'copy keeps the existing file');
    const copies = (await readdir(c)).filter((n) => n.startsWith('changed.txt') && n !== 'changed.txt');
    t.is(copies.length, 1, `one copy beside it: ${copies}`);
    t.regex(copies[0], /ferry-restored/);
    t.is(await readFile(join(c, copies[0]), 'utf8'), 'original content\n');
    t.false((await readdir(c)).some((n) => n.startsWith('equal.txt.')), 'an equal file gets no copy');
    t.is(await readFile(join(c, 'extra.txt'), 'utf8'), 'not in the backup\n');
    t.is(await readFile(join(c, 'sub', 'only-in-backup.txt'), 'utf8'), 'from the backup\n');

    const o = await prepare(join(dir, 'over'));
    await restore(join(dir, 'over'), 'overwrite');
    t.is(await readFile(join(o, 'changed.txt'), 'utf8'), 'original content\n');
    t.deepEqual((await readdir(o)).sort(), ['changed.txt', 'equal.txt', 'extra.txt', 'sub']);
    t.is(await readFile(join(o, 'extra.txt'), 'utf8'), 'not in the backup\n', 'extra files stay');

    const s = await prepare(join(dir, 'skip'));
    await restore(join(dir, 'skip'), 'skip');
    t.is(await readFile(join(s, 'changed.txt'), 'utf8'), 'edited since\n');
    t.deepEqual((await readdir(s)).sort(), ['changed.txt', 'equal.txt', 'extra.txt', 'sub']);
    t.is(await readFile(join(s, 'sub', 'only-in-backup.txt'), 'utf8'), 'from the backup\n', 'missing files still come back');

    const bad = await ferry(['restore', '--vault', vault, '--machine', 'alpha', '--item', 'ie', '--to', join(dir, 'x'), '--if-exists', 'maybe'], { env });
    t.is(bad.code, 2);
  });
});

test('--path restores only what it names; --machine restores another machine\'s item; a missing item is one clear line', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'a', 'deep'), { recursive: true });
    await mkdir(join(src, 'b'), { recursive: true });
    await writeFile(join(src, 'a', 'deep', 'one.txt'), '1');
    await writeFile(join(src, 'b', 'two.txt'), '2');
    await symlink('deep/one.txt', join(src, 'a', 'link'));
    const { vault } = await vaultWithSeed(dir, src, 'pick', '64M', 'otherhost');
    const out = join(dir, 'out');
    await ok(['restore', '--vault', vault, '--machine', 'otherhost', '--item', 'pick', '--to', out, '--path', join(src, 'a')]);
    t.is(await readFile(join(out, src, 'a', 'deep', 'one.txt'), 'utf8'), '1');
    t.true((await lstat(join(out, src, 'a', 'link'))).isSymbolicLink());
    t.false(existsSync(join(out, src, 'b', 'two.txt')));
    const missing = await ferry(['restore', '--vault', vault, '--machine', 'nobody', '--item', 'pick', '--to', out], { env });
    t.is(missing.code, 1);
    t.regex(missing.stderr, /no recovery point of item pick on machine nobody/);
    t.is(missing.stderr.trim().split('\n').length, 1);
  });
});

test('a source that cannot be read is listed, the seed ends with exit code 3, and the rest restores', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'fine.txt'), 'fine');
    // As root every file reads; a source path that is gone by the time the walker gets to it
    // stands for the vanished file (the walker's own tests race a real unlink).
    await writeFile(join(src, 'vanishing.txt'), 'x'.repeat(1000));
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    // --exclude still works alongside
    await writeFile(join(src, 'skip.tmp'), 'excluded');
    const r = await ferry(['seed', '--vault', vault, '--item', 'w', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'd'), '--exclude', '*.tmp', src, join(dir, 'does-not-exist')], { env });
    t.is(r.code, 3, r.stderr);
    t.regex(r.stderr, /does-not-exist/);
    await ok(['import', '--vault', vault, join(dir, 'd')]);
    const out = join(dir, 'out');
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'w', '--to', out]);
    t.is(await readFile(join(out, src, 'fine.txt'), 'utf8'), 'fine');
    t.false(existsSync(join(out, src, 'skip.tmp')));
  });
});

test('system state seeds, and restores to a folder and to a tar archive for another machine', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const r = await ferry(['seed', '--vault', vault, '--item', 'state', '--kind', 'system-state', '--machine', 'srv', '--disk', join(dir, 'd')], { env });
    t.true(r.code === 0 || r.code === 3, r.stderr);
    await ok(['import', '--vault', vault, join(dir, 'd')]);
    const out = join(dir, 'out');
    await ok(['restore', '--vault', vault, '--machine', 'srv', '--item', 'state', '--to', out]);
    t.is(await readFile(join(out, 'etc', 'hostname'), 'utf8'), await readFile('/etc/hostname', 'utf8'));
    t.true(existsSync(join(out, 'ferry-system-state')), 'command outputs come back too');
    const tar = join(dir, 'state.tar');
    await ok(['restore', '--vault', vault, '--machine', 'srv', '--item', 'state', '--to', tar, '--format', 'tar']);
    const list = (await must('tar', ['-tf', tar])).toString();
    t.regex(list, /\.\/etc\/passwd/);
    t.regex(list, /ferry-system-state\//);
  });
});
