// Review of multi-disk Data Box seeds, their import in sittings and the
// check between sittings (2026-12-07, c): each test fails because of a bug
// found in review and passes once it is fixed.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ferry, ferryOk, withTmp } from './helpers/exec.js';

const PASS = 'review dec07c passphrase, long enough';
const env = { FERRY_PASSPHRASE: PASS };
const ok = (args: string[]) => ferryOk(args, env);
const MiB = 1024 * 1024;

interface Manifest {
  disk: number;
  of: number;
  seedId: string;
  objects: { name: string; size: number }[];
}

test('check between two sittings of a seed import: the blocks of disks not yet imported are a note, not BLOCK_MISSING', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'big'), randomBytes(7 * MiB));
    await writeFile(join(src, 'small'), 'small\n');
    const disks = [1, 2, 3, 4].map((n) => join(dir, `d${n}`));
    await ok(['seed', '--vault', vault, '--item', 'home', '--kind', 'files', '--machine', 'm', '--databox', 'box1',
      '--disk-capacity', '5M', ...disks.flatMap((d) => ['--disk', d]), src, '--quiet']);
    const manifests: Manifest[] = [];
    for (const d of disks) {
      try {
        manifests.push(JSON.parse(await readFile(join(d, 'FERRY-SEED.json'), 'utf8')) as Manifest);
      } catch {
        break; // a disk the seed did not need
      }
    }
    t.true(manifests.length >= 2, 'the seed spans several disks');
    // The disk holding the image's head goes in first (the others later, in another sitting).
    const k = manifests.findIndex((m) => m.objects.some((o) => o.name.endsWith('/head')));
    t.true(k >= 0);
    const first = await ferry(['import', '--vault', vault, disks[k]], { env });
    t.is(first.code, 0, first.stderr);
    t.regex(first.stdout.toString(), /not yet imported/);

    const r = await ferry(['check', '--vault', vault, '--json'], { env });
    const report = JSON.parse(r.stdout.toString()) as { problems: { code: string; object: string }[]; notes: string[] };
    t.deepEqual(report.problems.map((p) => `${p.code} ${p.object}`), [], 'a seed not fully imported yet is no problem of the vault');
    t.is(r.code, 0, r.stderr);
    t.true(report.notes.some((n) => n.includes(`seed ${manifests[0].seedId}`) && /not registered yet/.test(n)), report.notes.join('\n'));

    // The other disks in their own sittings, last first: the point appears, the check is clean.
    for (let i = manifests.length - 1; i >= 0; i--) if (i !== k) await ok(['import', '--vault', vault, disks[i], '--quiet']);
    const done = await ferry(['check', '--vault', vault, '--json'], { env });
    t.is(done.code, 0, done.stderr);
    t.deepEqual((JSON.parse(done.stdout.toString()) as { notes: string[] }).notes, []);
  });
});
