// Seed disks that lie, break or stop at the worst moment: an edited manifest,
// a fifo where an object should be, a run stopped while it marked the disks
// complete, an import stopped between a point and its marker, a source that
// shrank between two runs, a small real file system that fills up.
import test from 'ava';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rm, stat, statfs, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SEED_MANIFEST } from '../format/seedmanifest.js';
import { ferry, ferryOk, must, run, sha256, withTmp } from './helpers/exec.js';

const PASS = 'seed safety passphrase, long enough';
const env = { FERRY_PASSPHRASE: PASS };
const MiB = 1024 * 1024;

const ok = (args: string[]) => ferryOk(args, env);

async function initVault(dir: string): Promise<string> {
  const v = join(dir, 'vault');
  await ok(['init', v, '--kdf-log-n', '12']);
  return v;
}

async function points(vault: string): Promise<Array<Record<string, unknown>>> {
  return JSON.parse(await ok(['points', '--vault', vault, '--json']));
}

async function tree(root: string, randomMiB: number, files = 12): Promise<void> {
  await mkdir(join(root, 'sub'), { recursive: true });
  await writeFile(join(root, 'big.bin'), randomBytes(randomMiB * MiB));
  for (let i = 0; i < files; i++) await writeFile(join(root, 'sub', `f${i}`), i % 2 ? randomBytes(30_000 + i * 1000) : `text ${i}\n`.repeat(2000));
}

async function treeHash(root: string): Promise<string> {
  return sha256(await must('sh', ['-c', `cd "${root}" && find . -type f -print0 | sort -z | xargs -0 sha256sum`]));
}

const readManifest = async (d: string) => JSON.parse(await readFile(join(d, SEED_MANIFEST), 'utf8'));
const writeManifest = (d: string, m: unknown) => writeFile(join(d, SEED_MANIFEST), JSON.stringify(m, null, 1));

/** A seed of ~14 MiB over disks of 6 MiB: three disks, as the import sees them. */
async function threeDisks(dir: string, vault: string, item = 'x'): Promise<{ src: string; disks: string[] }> {
  const src = join(dir, `src-${item}`);
  await tree(src, 12);
  const targets = ['a', 'b', 'c', 'd'].map((n) => join(dir, `${item}-${n}`));
  await ok(['seed', '--vault', vault, '--item', item, '--kind', 'files', '--machine', 'm', '--disk-capacity', '6M', ...targets.flatMap((d) => ['--disk', d]), src]);
  const disks = targets.filter((d) => existsSync(join(d, SEED_MANIFEST)));
  if (disks.length < 3) throw new Error(`the seed took ${disks.length} disks, the test needs 3`);
  return { src, disks };
}

test('an edited manifest (an object left out, disks renumbered, a path out of the disk) is refused at import and nothing is registered', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const { src, disks } = await threeDisks(dir, vault);
    const originals = await Promise.all(disks.map(readManifest));
    const edits: Array<[string, (ms: any[]) => void, RegExp]> = [
      ['an object left out', (ms) => ms[1].objects.pop(), /does not match the seed's sealed record \(its list of objects was changed\)/],
      ['two disks swap numbers', (ms) => ([ms[0].disk, ms[1].disk] = [ms[1].disk, ms[0].disk]), /does not match the seed's sealed record \(it holds the objects of disk [12], but says it is disk [12]\)/],
      ['one disk fewer', (ms) => ms.forEach((m) => (m.of = 2)) /* disk 3 then says 3 of 2 */, /SEED|not a ferry seed manifest|does not match/],
      ['a name leading out of the disk', (ms) => (ms[2].objects[0].name = '../../../etc/passwd'), /is not one this seed writes/],
    ];
    for (const [what, edit, message] of edits) {
      const ms = structuredClone(originals);
      edit(ms);
      for (const [i, d] of disks.entries()) await writeManifest(d, ms[i]);
      const r = await ferry(['import', '--vault', vault, ...disks], { env });
      t.is(r.code, 1, `${what}: ${r.stderr}`);
      t.regex(r.stderr, message, what);
      t.is(r.stderr.trim().split('\n').length, 1, what);
      t.deepEqual(await points(vault), [], what);
    }
    // and the disks as they were import and restore
    for (const [i, d] of disks.entries()) await writeManifest(d, originals[i]);
    await ok(['import', '--vault', vault, ...disks]);
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'x', '--to', join(dir, 'out')]);
    t.is(await treeHash(join(dir, 'out', src)), await treeHash(src));
  });
});

test('a fifo in place of an object is named at import, which neither hangs nor keeps the lock', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const { disks } = await threeDisks(dir, vault);
    const m = await readManifest(disks[1]);
    const victim = join(disks[1], m.objects[0].name);
    const keep = await readFile(victim);
    await unlink(victim);
    await must('mkfifo', [victim]);
    const r = await run('timeout', ['-s', 'KILL', '60', process.execPath, join(process.cwd(), 'bin', 'ferry'), 'import', '--vault', vault, ...disks], { env });
    t.is(r.code, 1, r.stderr);
    t.true(r.stderr.includes(m.objects[0].name) && /not a regular file/.test(r.stderr), r.stderr);
    t.deepEqual(await points(vault), []);
    await unlink(victim);
    await writeFile(victim, keep);
    await ok(['import', '--vault', vault, ...disks]);
    t.is((await points(vault)).length, 1);
  });
});

test('a seed stopped while it marked its disks complete is finished by the same command, and imports', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const { src, disks } = await threeDisks(dir, vault);
    // What a run stopped after marking disk 1 leaves: disks 2 and 3 hold the
    // manifest written before the marking (every object listed, not complete).
    for (const d of disks.slice(1)) {
      const m = await readManifest(d);
      m.complete = false;
      m.of = null;
      delete m.point;
      await writeManifest(d, m);
    }
    const stuck = await ferry(['import', '--vault', vault, ...disks], { env });
    t.is(stuck.code, 1);
    t.regex(stuck.stderr, /unfinished seed/);
    const targets = ['a', 'b', 'c', 'd'].map((n) => join(dir, `x-${n}`));
    const again = JSON.parse(await ok(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk-capacity', '6M', ...targets.flatMap((d) => ['--disk', d]), '--json', src]));
    t.is(again.diskCount, 3);
    const ms = await Promise.all(disks.map(readManifest));
    t.deepEqual(ms.map((m) => [m.disk, m.of, m.complete]), [[1, 3, true], [2, 3, true], [3, 3, true]]);
    // run once more: it is complete now, and says so (exit 0, nothing written)
    const third = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk-capacity', '6M', ...targets.flatMap((d) => ['--disk', d]), src], { env });
    t.is(third.code, 0, third.stderr);
    t.regex(third.stdout.toString(), /is already complete on .*: nothing to do/);
    await ok(['import', '--vault', vault, disks[2], disks[0], disks[1]]);
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'x', '--to', join(dir, 'out')]);
    t.is(await treeHash(join(dir, 'out', src)), await treeHash(src));
  });
});

test('an import stopped between writing the point and its marker registers no second point when run again', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const { disks } = await threeDisks(dir, vault);
    await ok(['import', '--vault', vault, ...disks]);
    const seedId = (await readManifest(disks[0])).seedId as string;
    await rm(join(vault, 'seeds', seedId, 'registered'));
    await ok(['import', '--vault', vault, ...disks]);
    const ps = await points(vault);
    t.is(ps.length, 1, JSON.stringify(ps));
    t.true(existsSync(join(vault, 'seeds', seedId, 'registered')));
  });
});

test('a resumed seed of a source that shrank keeps nothing of the larger run, and drops what no manifest lists', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await tree(src, 12);
    await writeFile(join(src, 'gone.bin'), randomBytes(6 * MiB));
    const a = join(dir, 'a');
    const base = ['seed', '--vault', vault, '--item', 'y', '--kind', 'files', '--machine', 'm', '--disk-capacity', '16M', '--disk', a];
    const first = await ferry([...base, src], { env });
    t.is(first.code, 1, first.stderr);
    t.regex(first.stderr, /add another --disk/);
    // the source shrinks; a stray object of this seed lies on the disk, listed nowhere
    await rm(join(src, 'gone.bin'));
    const diskId = (await readManifest(a)).params.diskId as string;
    const stray = join(a, 'disks', diskId, 'blocks', '999999');
    await writeFile(stray, randomBytes(1000));
    await ok([...base, src]);
    t.false(existsSync(stray), 'the stray object is gone');
    // the same objects as a fresh seed of the shrunk source, and no file on the disk that is not listed
    const m = await readManifest(a);
    await ok(['seed', '--vault', vault, '--item', 'z', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'fresh'), src]);
    const fresh = await readManifest(join(dir, 'fresh'));
    t.is(m.objects.length, fresh.objects.length);
    const files = (await readdir(join(a, 'disks', diskId), { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).length;
    t.is(files, m.objects.length);
    await ok(['import', '--vault', vault, a]);
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'y', '--to', join(dir, 'out')]);
    t.is(await treeHash(join(dir, 'out', src)), await treeHash(src));
  });
});

test('a small real ext4 disk that fills up moves the seed to the next disk, keeps room to rewrite its manifest, and everything imports', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    // 8 MiB that does not compress, then 150 blocks that compress to a few KiB each:
    // small objects are where counting bytes instead of file-system blocks goes wrong
    await writeFile(join(src, 'a.bin'), randomBytes(8 * MiB));
    const lines: string[] = [];
    for (let i = 0; i < (300 * MiB) / 64; i++) lines.push(String(i).padStart(63, '0'));
    await writeFile(join(src, 'b.txt'), lines.join('\n') + '\n');
    lines.length = 0;
    const img = join(dir, 'small.img');
    const small = join(dir, 'small');
    await must('truncate', ['-s', '12M', img]);
    await must('mkfs.ext4', ['-q', '-F', img]);
    await mkdir(small);
    await must('mount', ['-o', 'loop', img, small]);
    try {
      const other = join(dir, 'other');
      const r = JSON.parse(await ok(['seed', '--vault', vault, '--item', 'w', '--kind', 'files', '--machine', 'm', '--disk', small, '--disk', other, '--json', src]));
      t.is(r.diskCount, 2);
      t.is((await readManifest(small)).disk, 1);
      const fs = await statfs(small);
      const manifest = (await stat(join(small, SEED_MANIFEST))).size;
      t.true(fs.bavail * fs.bsize >= manifest, `${fs.bavail * fs.bsize} bytes left on the small disk, its manifest takes ${manifest}`);
      await ok(['import', '--vault', vault, other, small]);
      await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'w', '--to', join(dir, 'out')]);
      t.is(await treeHash(join(dir, 'out', src)), await treeHash(src));
    } finally {
      const u = await run('umount', [small]);
      if (u.code !== 0) await run('umount', ['-l', small]);
    }
  });
});

/** What a run stopped right after marking the first disk complete leaves on the others. */
async function uncomplete(disks: string[]): Promise<void> {
  for (const d of disks) {
    const m = await readManifest(d);
    m.complete = false;
    m.of = null;
    delete m.point;
    await writeManifest(d, m);
  }
}

test('a seed stopped while marking, run again without the disk it marked, makes a new run that imports alone and wins over the old one', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const { src, disks } = await threeDisks(dir, vault);
    await uncomplete(disks.slice(1));
    // the marked disk goes in (and waits), the others are seeded again with more disks and without it
    await ok(['import', '--vault', vault, disks[0]]);
    const more = [disks[1], disks[2], join(dir, 'x-e'), join(dir, 'x-f')];
    await ok(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk-capacity', '6M', ...more.flatMap((d) => ['--disk', d]), src]);
    const used = more.filter((d) => existsSync(join(d, SEED_MANIFEST)));
    const out = await ok(['import', '--vault', vault, ...used]);
    t.regex(out, /no longer count/);
    t.is((await points(vault)).length, 1);
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'x', '--to', join(dir, 'out')]);
    t.is(await treeHash(join(dir, 'out', src)), await treeHash(src));
    // the old run's disk cannot come back over the registered one
    const old = await ferry(['import', '--vault', vault, disks[0]], { env });
    t.is(old.code, 1);
    t.regex(old.stderr, /another run of seed .* registered in this vault already \(point 1\); this disk is not needed/);
    // nor two runs at once
    const both = await ferry(['import', '--vault', join(dir, 'v2'), disks[0], used[0]], { env });
    t.not(both.code, 0);
  });
});

test('finishing the marking keeps the numbers of the sealed record, whatever order the disks are given in, and with one missing', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const { src, disks } = await threeDisks(dir, vault);
    const numbers = async () => (await Promise.all(disks.map(readManifest))).map((m) => [m.disk, m.of, m.complete]);
    await uncomplete(disks.slice(1));
    const seedArgs = (ds: string[]) => ['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk-capacity', '6M', ...ds.flatMap((d) => ['--disk', d]), src];
    // disk 2 not given: disk 3 is marked, and the output says disk 2 was not
    const partial = await ok(seedArgs([disks[2], disks[0]]));
    t.regex(partial, /disk 2 of 3 of this seed was not given/);
    t.deepEqual(await numbers(), [[1, 3, true], [2, null, false], [3, 3, true]]);
    // then all of them, in reverse order
    await ok(seedArgs([disks[2], disks[1], disks[0]]));
    t.deepEqual(await numbers(), [[1, 3, true], [2, 3, true], [3, 3, true]]);
    await ok(['import', '--vault', vault, ...disks]);
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'x', '--to', join(dir, 'out')]);
    t.is(await treeHash(join(dir, 'out', src)), await treeHash(src));
  });
});

test('a resumed seed deletes nothing but its own objects: not through a link in its folder, not where an edited manifest points', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await tree(src, 12);
    const d1 = join(dir, 'd1');
    const args = (ds: string[]) => ['seed', '--vault', vault, '--item', 'y', '--kind', 'files', '--machine', 'm', '--disk-capacity', '6M', ...ds.flatMap((d) => ['--disk', d]), src];
    t.is((await ferry(args([d1]), { env })).code, 1); // the disk is full: an unfinished seed on it
    const victim = join(dir, 'victim');
    await mkdir(join(victim, 'deep'), { recursive: true });
    await writeFile(join(victim, '7'), 'keep me');
    await writeFile(join(victim, 'deep', 'head'), 'keep me too');
    const m = await readManifest(d1);
    const own = join(d1, 'disks', m.params.diskId);
    await symlink(victim, join(own, 'blocks', 'lnk'));
    await symlink(join(victim, 'deep'), join(own, 'deep'));
    await symlink(join(victim, '7'), join(own, 'blocks', '99'));
    // an edited manifest that would lead out of the disk is refused before anything is touched
    const edited = structuredClone(m);
    edited.params.diskId = '../../victim';
    await writeManifest(d1, edited);
    const refused = await ferry(args([d1, join(dir, 'd2')]), { env });
    t.is(refused.code, 1);
    t.regex(refused.stderr, /not a ferry seed manifest \(field params/);
    await writeManifest(d1, m);
    await ok(args([d1, join(dir, 'd2'), join(dir, 'd3'), join(dir, 'd4')]));
    t.is(await readFile(join(victim, '7'), 'utf8'), 'keep me');
    t.is(await readFile(join(victim, 'deep', 'head'), 'utf8'), 'keep me too');
  });
});

test('one folder given twice, another --databox than the first run, a fifo for a manifest: each one clear line, nothing written', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await tree(src, 12);
    const d1 = join(dir, 'd1');
    await mkdir(d1);
    const base = ['seed', '--vault', vault, '--item', 'z', '--kind', 'files', '--machine', 'm', '--disk-capacity', '6M'];
    // (also two names of a folder that does not exist yet)
    const n = join(dir, 'not-yet');
    const twice = await ferry([...base, '--disk', n, '--disk', `${n}/.`, src], { env });
    t.is(twice.code, 2, twice.stderr);
    t.regex(twice.stderr, /are the same folder/);
    for (const again of [d1, `${d1}/`, join(dir, '.', 'd1')]) {
      const r = await ferry([...base, '--disk', d1, '--disk', again, src], { env });
      t.is(r.code, 2, r.stderr);
      t.regex(r.stderr, /are the same folder/);
      t.false(existsSync(join(d1, SEED_MANIFEST)));
    }
    t.is((await ferry([...base, '--databox', 'boxone', '--disk', d1, src], { env })).code, 1); // full: unfinished
    const other = await ferry([...base, '--disk', d1, '--disk', join(dir, 'd2'), src], { env });
    t.is(other.code, 2);
    t.regex(other.stderr, /written with --databox boxone; run it again the same way/);
    const fifoDisk = join(dir, 'fifo');
    await mkdir(fifoDisk);
    await must('mkfifo', [join(fifoDisk, SEED_MANIFEST)]);
    const f = await run('timeout', ['-s', 'KILL', '60', process.execPath, join(process.cwd(), 'bin', 'ferry'), ...base, '--disk', fifoDisk, src], { env });
    t.is(f.code, 1, f.stderr);
    t.regex(f.stderr, /not a regular file/);
  });
});

test('the disks not yet marked carry the record too: each one given alone later is only marked, never seeded again', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await tree(src, 12);
    const disks = ['a', 'b', 'c'].map((n) => join(dir, n));
    const seedArgs = (ds: string[]) => ['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk-capacity', '6M', ...ds.flatMap((d) => ['--disk', d]), src];
    // stopped right after marking disk 1
    const killed = await ferry(seedArgs(disks), { env: { ...env, FERRY_TEST_KILL_AFTER_MARKS: '1' } });
    t.is(killed.code, 128, killed.stderr);
    t.deepEqual((await Promise.all(disks.map(readManifest))).map((m) => [m.complete, !!m.point]), [[true, true], [false, true], [false, true]]);
    await ok(seedArgs([disks[2], disks[0]]));
    await ok(seedArgs([disks[1]]));
    const ms = await Promise.all(disks.map(readManifest));
    t.deepEqual(ms.map((m) => [m.disk, m.of, m.complete]), [[1, 3, true], [2, 3, true], [3, 3, true]]);
    t.is(new Set(ms.map((m) => m.seedId)).size, 1);
    await ok(['import', '--vault', vault, ...disks]);
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'x', '--to', join(dir, 'out')]);
    t.is(await treeHash(join(dir, 'out', src)), await treeHash(src));
  });
});

test('a point whose import stopped before its marker keeps its objects: a disk of another run of the same seed is refused', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await tree(src, 12);
    const seedArgs = (ds: string[]) => ['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk-capacity', '6M', ...ds.flatMap((d) => ['--disk', d]), src];
    const d = (n: string) => join(dir, n);
    // a first run fills X and D1 (one disk image on both), then run A goes on from D1 without X
    t.is((await ferry(seedArgs([d('X'), d('D1')]), { env })).code, 1);
    const runA = ['D1', 'D2', 'D3', 'D4', 'D5', 'D6'];
    await ok(seedArgs(runA.map(d)));
    const a = runA.map(d).filter((x) => existsSync(join(x, SEED_MANIFEST)));
    await ok(['import', '--vault', vault, ...a]);
    await must('cp', ['-a', src, d('srcA')]);
    const seedA = (await readManifest(a[0])).seedId as string;
    await rm(join(vault, 'seeds', seedA, 'registered')); // stopped between the point and its marker
    // the source changes; run B goes on from X, the same disk image
    await writeFile(join(src, 'big.bin'), randomBytes(12 * MiB));
    const runB = ['X', 'Y1', 'Y2', 'Y3', 'Y4', 'Y5'];
    await ok(seedArgs(runB.map(d)));
    const b = runB.map(d).filter((x) => existsSync(join(x, SEED_MANIFEST)));
    const r = await ferry(['import', '--vault', vault, ...b], { env });
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, /registered in this vault already \(point 1\); this disk is not needed/);
    t.is((await points(vault)).length, 1);
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'x', '--point', '1', '--to', d('out')]);
    t.is(await treeHash(join(d('out'), src)), await treeHash(d('srcA')));
  });
});

test('a complete seed whose disk lost or shortened an object since: the seed run again and the import both name it and say what to do', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const { src, disks } = await threeDisks(dir, vault);
    const targets = ['a', 'b', 'c', 'd'].map((n) => join(dir, `x-${n}`));
    const seedAgain = () => ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk-capacity', '6M', ...targets.flatMap((d) => ['--disk', d]), src], { env });
    const m = await readManifest(disks[1]);
    const victim = m.objects[0].name as string;
    const file = join(disks[1], m.prefix + victim);
    const keep = await readFile(file);
    await writeFile(file, keep.subarray(0, keep.length - 1));
    const short = await seedAgain();
    t.is(short.code, 1, short.stderr);
    t.regex(short.stderr, new RegExp(`object ${victim} on ${disks[1]} \\(disk 2 of 3\\) holds ${keep.length - 1} bytes, not ${keep.length} since: if this disk is a copy, copy it again`));
    await unlink(file);
    const gone = await seedAgain();
    t.is(gone.code, 1, gone.stderr);
    t.regex(gone.stderr, new RegExp(`object ${victim} on ${disks[1]} \\(disk 2 of 3\\) is missing since: .*seed again onto empty disks`));
    const imp = await ferry(['import', '--vault', vault, ...disks], { env });
    t.not(imp.code, 0);
    t.regex(imp.stderr, new RegExp(`object ${victim} is missing from seed disk ${disks[1]} .*copy it again from the original`));
    t.deepEqual(await points(vault), []);
    // the object back: both go on
    await writeFile(file, keep);
    t.is((await seedAgain()).code, 0);
    await ok(['import', '--vault', vault, ...disks]);
    t.is((await points(vault)).length, 1);
  });
});
