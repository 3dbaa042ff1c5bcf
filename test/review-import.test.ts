// From a review of multi-disk seeds and import from the outside: a disk
// given twice goes in once, and a damaged copy is followed by a good one.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { cp, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ferry, withTmp } from './helpers/exec.js';
import { withTmpfs } from './helpers/mounts.js';

const env = { FERRY_PASSPHRASE: 'import review passphrase, long enough' };

test('a disk given twice is imported once; a damaged copy before a good one: the good one goes in, the point appears, exit 3', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}`), randomBytes(2 * 1024 * 1024 + i * 1000));
    const disks = ['d1', 'd2', 'd3', 'd4', 'd5'].map((d) => join(dir, d));
    for (const args of [
      ['init', vault, '--kdf-log-n', '12'],
      ['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk-capacity', '5M', ...disks.flatMap((d) => ['--disk', d]), src],
    ]) {
      const r = await ferry([...args, '--quiet'], { env });
      t.is(r.code, 0, r.stderr.toString());
    }
    const used: string[] = [];
    for (const d of disks) if ((await readdir(d).catch((): string[] => [])).includes('FERRY-SEED.json')) used.push(d);
    t.true(used.length >= 3, `${used.length} disks`);
    const [d1, d2, ...rest] = used;

    const twice = await ferry(['import', '--vault', vault, d1, d1, '--json'], { env });
    t.is(twice.code, 0, twice.stderr.toString());
    const r1 = JSON.parse(twice.stdout.toString());
    t.deepEqual(r1.imported.map((d: { already: boolean; copyOf?: string }) => [d.already, d.copyOf]), [[false, undefined], [true, d1]]);
    t.deepEqual(r1.waiting[0].missing, used.slice(1).map((_, i) => i + 2));

    // a copy of disk 2 with a block gone, given before the good disk 2
    const bad = join(dir, 'copy-of-d2');
    await cp(d2, bad, { recursive: true });
    const [id] = await readdir(join(bad, 'disks'));
    const [victim] = await readdir(join(bad, 'disks', id, 'blocks'));
    await rm(join(bad, 'disks', id, 'blocks', victim));
    const mixed = await ferry(['import', '--vault', vault, bad, d2, ...rest], { env });
    t.is(mixed.code, 3, mixed.stderr.toString());
    t.regex(mixed.stdout.toString(), /registered point 1 of/);
    t.regex(mixed.stderr.toString(), /warning: .*copy-of-d2.*another copy of disk 2 given here was imported/);
    const points = JSON.parse((await ferry(['points', '--vault', vault, '--json'], { env })).stdout.toString());
    t.is(points.length, 1);
  });
});

test('a --disk folder that did not exist is made and said so (a disk not mounted where it was named writes elsewhere)', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    await writeFile(join(dir, 'a.txt'), 'a\n');
    t.is((await ferry(['init', vault, '--kdf-log-n', '12', '--quiet'], { env })).code, 0);
    const fresh = join(dir, 'not-mounted');
    const r = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', fresh, join(dir, 'a.txt')], { env });
    t.is(r.code, 0, r.stderr.toString());
    t.true(r.stdout.toString().includes(`${fresh} did not exist and was made: if a disk should be mounted there, it was not`), r.stdout.toString());
    const there = join(dir, 'there');
    await mkdir(there);
    const j = JSON.parse((await ferry(['seed', '--vault', vault, '--item', 'y', '--kind', 'files', '--disk', there, join(dir, 'a.txt'), '--json'], { env })).stdout.toString());
    t.is(j.madeDisks, undefined);
  });
});

test('an import stopped part way by a full vault says which disks went in before it (under --json in its error document)', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}`), randomBytes(2 * 1024 * 1024 + i * 1000));
    for (const json of [false, true]) {
      const disks = ['d1', 'd2', 'd3', 'd4', 'd5'].map((d) => join(dir, `${json}`, d));
      const vault = join(dir, 'small', 'v');
      await withTmpfs(join(dir, 'small'), '9m', async () => {
        t.is((await ferry(['init', vault, '--kdf-log-n', '12', '--quiet'], { env })).code, 0);
        const s = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk-capacity', '5M', ...disks.flatMap((d) => ['--disk', d]), src, '--quiet'], { env });
        t.is(s.code, 0, s.stderr.toString());
        const r = await ferry(['import', '--vault', vault, ...disks.slice(0, 3), ...(json ? ['--json'] : [])], { env });
        t.is(r.code, 1, r.stderr.toString());
        const lines = r.stderr.toString().trim().split('\n');
        t.regex(lines.at(-1)!, /the disk is full: free space there/);
        if (json) {
          const doc = JSON.parse(r.stdout.toString());
          t.true(doc.error.imported.length >= 1 && doc.error.imported.length < 3, r.stdout.toString());
          t.deepEqual([doc.error.imported[0].dir, doc.error.imported[0].disk], [disks[0], 1]);
        } else {
          // each disk that went in once, then the error
          t.true(lines.length >= 2 && lines.length < 4, r.stderr.toString());
          t.regex(lines[0], /^ferry: before it stopped: .*d1: disk 1 of \d+ of seed [0-9a-f]{16} verified and imported/);
          for (const l of lines.slice(0, -1)) t.regex(l, /^ferry: before it stopped: /);
        }
      });
    }
  });
});

test('a leftover disk of a run whose later run is registered is said to be not needed, not sent to seed again', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}`), randomBytes(2 * 1024 * 1024 + i * 1000));
    t.is((await ferry(['init', vault, '--kdf-log-n', '12', '--quiet'], { env })).code, 0);
    const d = (n: number) => join(dir, `d${n}`);
    const seed = (...ns: number[]) => ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk-capacity', '5M', ...ns.flatMap((n) => ['--disk', d(n)]), src, '--quiet'], { env });
    t.is((await seed(1, 2)).code, 1, 'two disks are too few');
    const again = await seed(2, 3, 4, 5);
    t.is(again.code, 0, again.stderr.toString());
    const used: string[] = [];
    for (const n of [2, 3, 4, 5]) if ((await readdir(d(n))).includes('FERRY-SEED.json')) used.push(d(n));
    t.is((await ferry(['import', '--vault', vault, ...used, '--quiet'], { env })).code, 0);
    const left = await ferry(['import', '--vault', vault, d(1)], { env });
    t.is(left.code, 1);
    t.regex(left.stderr.toString(), /holds disk 1 of an unfinished run \([0-9a-f]+\) of a seed whose later run [0-9a-f]+ is registered in this vault already \(point 1\): this disk is not needed/);
  });
});
