// `ferry check --vault V [--read-data]`: every object the points need is
// there, and with --read-data reads and authenticates; each problem names
// its object; what no point needs is a note; the vault is not written.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ferry, sha256, withTmp } from './helpers/exec.js';

const env = { FERRY_PASSPHRASE: 'a passphrase of sixteen+ characters' };

interface Report {
  points: number;
  disks: number;
  blocks: number;
  readData: boolean;
  bytesRead: number;
  problems: Array<{ code: string; object: string; message: string }>;
  notes: string[];
}

async function check(vault: string, ...more: string[]): Promise<{ code: number; report: Report; stderr: string }> {
  const r = await ferry(['check', '--vault', vault, '--json', ...more], { env });
  return { code: r.code, report: JSON.parse(r.stdout.toString()) as Report, stderr: r.stderr.toString() };
}

async function flip(file: string, at: number): Promise<void> {
  const b = await readFile(file);
  b[at] ^= 0x40;
  await writeFile(file, b);
}

/** Every file under `dir` with its SHA-256: what a check must leave as it is. */
async function listing(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
    const r = join(rel, e.name);
    if (e.isDirectory()) out.push(...(await listing(dir, r)));
    else {
      out.push(`${r} ${sha256(await readFile(join(dir, r)))}`);
    }
  }
  return out.sort();
}

test('check finds what is missing, and --read-data what is damaged, naming each object', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    const src = join(dir, 'src');
    await mkdir(join(src, 'sub'), { recursive: true });
    await writeFile(join(src, 'a.bin'), randomBytes(5 * 1024 * 1024 + 7));
    await writeFile(join(src, 'sub', 'b.txt'), 'text\n'.repeat(100000));
    for (const args of [
      ['init', vault, '--kdf-log-n', '12'],
      ['seed', '--vault', vault, '--item', 'docs', '--kind', 'files', '--disk', join(dir, 'd1'), src],
      ['import', '--vault', vault, join(dir, 'd1')],
    ]) {
      const r = await ferry([...args, '--quiet'], { env });
      t.is(r.code, 0, `${args[0]}: ${r.stderr}`);
    }

    const clean = await check(vault);
    t.is(clean.code, 0, clean.stderr);
    t.deepEqual([clean.report.points, clean.report.disks, clean.report.problems, clean.report.notes], [1, 1, [], []]);
    t.true(clean.report.blocks >= 3, `${clean.report.blocks} blocks`);
    const human = await ferry(['check', '--vault', vault], { env });
    t.is(human.code, 0);
    t.regex(human.stdout.toString(), /no problems in 1 point, 1 disk, \d+ blocks/);

    const disk = (await readdir(join(vault, 'disks')))[0];
    const blocks = join(vault, 'disks', disk, 'blocks');
    const names = (await readdir(blocks)).sort((a, b) => Number(a) - Number(b));
    t.is(names.length, clean.report.blocks);
    const read = await check(vault, '--read-data');
    t.is(read.code, 0, read.stderr);
    t.true(read.report.readData);
    t.is(read.report.bytesRead, names.length * (512 + 2 * 1024 * 1024), 'every block read once, bitmap and data');

    // A vault the check must not change.
    const before = await listing(vault);
    const keep = join(dir, 'keep');
    await mkdir(keep);
    for (const n of names) await copyFile(join(blocks, n), join(keep, n));
    const restoreBlocks = async () => {
      await rm(blocks, { recursive: true });
      await mkdir(blocks);
      for (const n of names) await copyFile(join(keep, n), join(blocks, n));
    };

    // One flipped byte: present (exit 0 without --read-data), damaged with it.
    const [first, second] = names;
    await flip(join(blocks, first), 100);
    t.is((await check(vault)).code, 0);
    const damaged = await check(vault, '--read-data');
    t.is(damaged.code, 1);
    t.deepEqual(damaged.report.problems.map((p) => [p.code, p.object]), [['BLOCK_DAMAGED', `disks/${disk}/blocks/${first}`]]);
    t.true(damaged.stderr.includes(`disks/${disk}/blocks/${first}`), damaged.stderr);

    // Cut short: found without reading data, by the size import recorded.
    await restoreBlocks();
    await truncate(join(blocks, second), 1000);
    const cut = await check(vault);
    t.is(cut.code, 1);
    t.deepEqual(cut.report.problems.map((p) => [p.code, p.object]), [['BLOCK_DAMAGED', `disks/${disk}/blocks/${second}`]]);
    t.regex(cut.report.problems[0].message, /holds 1000 bytes, but \d+ were imported/);

    // Truncated, and two swapped: each named.
    await restoreBlocks();
    await truncate(join(blocks, first), 50);
    await rename(join(blocks, second), join(dir, 'tmp'));
    await copyFile(join(keep, first), join(blocks, second));
    await rename(join(dir, 'tmp'), join(blocks, first));
    const swapped = await check(vault, '--read-data');
    t.is(swapped.code, 1);
    t.deepEqual(swapped.report.problems.map((p) => p.object).sort(), [`disks/${disk}/blocks/${first}`, `disks/${disk}/blocks/${second}`].sort());

    // Missing: found without reading data; a stray copy is a note, not a problem.
    await restoreBlocks();
    await rename(join(blocks, second), join(blocks, '999999'));
    const missing = await check(vault);
    t.is(missing.code, 1);
    t.deepEqual(missing.report.problems.map((p) => [p.code, p.object]), [['BLOCK_MISSING', `disks/${disk}/blocks/${second}`]]);
    t.deepEqual(missing.report.notes, [`1 block object under disks/${disk}/ that its head does not refer to`]);

    // A point whose object is damaged, and one whose disk is gone.
    await restoreBlocks();
    const points = join(vault, 'items');
    const pointFile = join(points, (await readdir(points))[0], 'docs', 'points', '00000001');
    const pointBytes = await readFile(pointFile);
    await flip(pointFile, pointBytes.length - 5);
    const point = await check(vault);
    t.is(point.code, 1);
    t.deepEqual(point.report.problems.map((p) => p.code), ['POINT_DAMAGED']);
    await writeFile(pointFile, pointBytes);
    await rename(join(vault, 'disks', disk, 'head'), join(dir, 'head'));
    const nohead = await check(vault);
    t.is(nohead.code, 1);
    t.deepEqual(nohead.report.problems.map((p) => [p.code, p.object]), [['DISK_MISSING', `disks/${disk}/head`]]);
    t.true(nohead.report.notes.some((n) => n.startsWith(`${names.length} block objects under disks/${disk}/ of a disk with no head`)), nohead.report.notes.join('\n'));
    await rename(join(dir, 'head'), join(vault, 'disks', disk, 'head'));

    // A disk that is in no point (ferry vhd import) is a note.
    const raw = join(dir, 'x.raw');
    await writeFile(raw, randomBytes(3 * 1024 * 1024));
    t.is((await ferry(['vhd', 'create', join(dir, 'x.vhd'), '--from', raw], { env })).code, 0);
    const imp = await ferry(['vhd', 'import', '--vault', vault, join(dir, 'x.vhd')], { env });
    t.is(imp.code, 0, imp.stderr.toString());
    const extra = await check(vault, '--read-data');
    t.is(extra.code, 0, extra.stderr);
    t.deepEqual(extra.report.notes, [`disk ${imp.stdout.toString().trim()} is in no point (stored by ferry vhd import, or by an import that has not registered its point yet)`]);
    t.is(extra.report.disks, 2);

    // Nothing of the seeded disk was written by the checks.
    const after = (await listing(vault)).filter((l) => !l.startsWith(`disks/${imp.stdout.toString().trim()}`));
    t.deepEqual(after.filter((l) => !l.startsWith('locks')), before.filter((l) => !l.startsWith('locks')));
  });
});

test('a registered seed whose point is gone is a problem, and importing its disks again registers it again; a stray file among points is not ferry\'s, not "point NaN"', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    await mkdir(join(dir, 'src'));
    await writeFile(join(dir, 'src', 'a.bin'), randomBytes(100_000));
    for (const args of [
      ['init', vault, '--kdf-log-n', '12'],
      ['seed', '--vault', vault, '--item', 'docs', '--kind', 'files', '--disk', join(dir, 'd1'), join(dir, 'src')],
      ['import', '--vault', vault, join(dir, 'd1')],
    ]) {
      const r = await ferry([...args, '--quiet'], { env });
      t.is(r.code, 0, `${args[0]}: ${r.stderr}`);
    }
    const [machine] = await readdir(join(vault, 'items'));
    const pointsDir = join(vault, 'items', machine, 'docs', 'points');

    await writeFile(join(pointsDir, 'junk'), 'y\n');
    const junk = await check(vault);
    t.is(junk.code, 0, junk.stderr);
    t.deepEqual(junk.report.notes, [`object items/${machine}/docs/points/junk is not ferry's`]);
    const listed = await ferry(['points', '--vault', vault, '--json'], { env });
    t.is(listed.code, 0, listed.stderr.toString());
    t.false(listed.stderr.toString().includes('NaN'));
    await rm(join(pointsDir, 'junk'));

    await rm(join(pointsDir, '00000001'));
    const gone = await check(vault);
    t.is(gone.code, 1);
    t.deepEqual(gone.report.problems.map((p) => p.code), ['POINT_MISSING']);
    const again = await ferry(['import', '--vault', vault, join(dir, 'd1')], { env });
    t.is(again.code, 0, again.stderr.toString());
    t.regex(again.stdout.toString(), /registered point 1 of/);
    t.is((await check(vault)).code, 0);

    // import's own records are read too
    const [image] = await readdir(join(vault, 'seeds', 'images'));
    await flip(join(vault, 'seeds', 'images', image), 40);
    const record = await check(vault);
    t.is(record.code, 1);
    t.deepEqual(record.report.problems.map((p) => [p.code, p.object]), [['SEED_RECORD_DAMAGED', `seeds/images/${image}`]]);
  });
});
