// From a first-use walkthrough of the README (the findings a new
// administrator hit): each test fails on the behaviour found then.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, stat, writeFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { SEED_MANIFEST } from '../format/seedmanifest.js';
import { FERRY, ferry, must, run, withTmp } from './helpers/exec.js';
import { withTmpfs } from './helpers/mounts.js';
import { existsSync } from 'node:fs';

const env = { FERRY_PASSPHRASE: 'walkthrough passphrase, long enough' };
const MiB = 1024 * 1024;

async function ok(args: string[], cwd?: string): Promise<string> {
  const r = await ferry(args, { env, cwd });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout.toString();
}

async function seeded(dir: string, machine = 'm'): Promise<{ vault: string; src: string; disk: string }> {
  const vault = join(dir, 'vault');
  await ok(['init', vault, '--kdf-log-n', '12']);
  const src = join(dir, 'src');
  await mkdir(join(src, 'sub'), { recursive: true });
  await writeFile(join(src, 'sub', 'a.txt'), 'a\n');
  await writeFile(join(src, 'r.bin'), randomBytes(3 * MiB));
  const disk = join(dir, 'd1');
  await ok(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', machine, '--disk', disk, src]);
  return { vault, src, disk };
}

test('vhd create refuses an OUT that exists (a chain parent stays intact) unless --force, and --size never cuts a --from image', async (t) => {
  await withTmp(async (dir) => {
    const parent = join(dir, 'p.vhd');
    await ok(['vhd', 'create', parent, '--size', '1M']);
    await ok(['vhd', 'create', join(dir, 'c.vhd'), '--parent', parent]);
    const before = await readFile(parent);
    const r = await ferry(['vhd', 'create', parent, '--size', '1M']);
    t.is(r.code, 1);
    t.is(r.stderr, `ferry: ${parent} exists: vhd create would replace it (and break any differencing disk made over it); remove it or give --force\n`);
    t.true((await readFile(parent)).equals(before));
    t.is((await ferry(['vhd', 'check', join(dir, 'c.vhd')])).code, 0, 'the child still opens over its parent');
    await ok(['vhd', 'create', parent, '--size', '2M', '--force']);

    const raw = join(dir, 'r.raw');
    await writeFile(raw, randomBytes(4 * MiB));
    const cut = await ferry(['vhd', 'create', join(dir, 'r.vhd'), '--from', raw, '--size', '1M']);
    t.is(cut.code, 2);
    t.regex(cut.stderr, /^ferry: --size 1M is less than .*r\.raw holds \(4194304 bytes\)/);
  });
});

test('a tar restore holds what is in the point, not a ./ entry that would change the folder it is unpacked into', async (t) => {
  await withTmp(async (dir) => {
    const { vault, src, disk } = await seeded(dir);
    await ok(['import', '--vault', vault, disk]);
    const tar = join(dir, 'x.tar');
    await ok(['restore', '--vault', vault, '--item', 'x', '--machine', 'm', '--format', 'tar', '--to', tar]);
    const list = (await must('tar', ['-tf', tar])).toString().split('\n').filter(Boolean);
    t.false(list.includes('./'), list.slice(0, 3).join(' '));
    t.true(list.includes(`.${src}/sub/a.txt`), list.join(' '));
    const into = join(dir, 'into');
    await mkdir(into);
    await chmod(into, 0o755);
    await must('tar', ['-C', into, '-xpf', tar]);
    t.is((await stat(into)).mode & 0o7777, 0o755, 'the folder unpacked into keeps its mode');
    t.is(await readFile(join(into, src, 'sub', 'a.txt'), 'utf8'), 'a\n');
  });
});

test('the same seed command run again after it completed says so and exits 0, writing nothing', async (t) => {
  await withTmp(async (dir) => {
    const { vault, src, disk } = await seeded(dir);
    const manifest = await readFile(join(disk, SEED_MANIFEST));
    const r = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk', disk, src], { env });
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout.toString(), /^seed [0-9a-f]{16} of m\/x \(files\) is already complete on .*d1: nothing to do/);
    t.true((await readFile(join(disk, SEED_MANIFEST))).equals(manifest), 'the disk is not rewritten');
  });
});

test('import of an object damaged on the seed disk says the copy is damaged (checksum), not that a key is wrong', async (t) => {
  await withTmp(async (dir) => {
    const { vault, disk } = await seeded(dir);
    const m = JSON.parse(await readFile(join(disk, SEED_MANIFEST), 'utf8'));
    const obj = join(disk, m.prefix + m.objects[1].name);
    const b = await readFile(obj);
    b[b.length >> 1] ^= 1;
    await writeFile(obj, b);
    const r = await ferry(['import', '--vault', vault, disk], { env });
    t.is(r.code, 1);
    t.regex(r.stderr, /does not match its checksum; the disk is damaged and was not imported: if this disk is a copy/);
    t.notRegex(r.stderr, /authentication/);
  });
});

test('restore: a --point that is no number, latest or date is a usage error; another machine\'s item is hinted; option errors read like ferry\'s', async (t) => {
  await withTmp(async (dir) => {
    const { vault, disk } = await seeded(dir, 'web01');
    await ok(['import', '--vault', vault, disk]);
    let r = await ferry(['restore', '--vault', vault, '--item', 'x', '--machine', 'web01', '--point', '-1', '--to', join(dir, 'o')], { env });
    t.is(r.code, 2, r.stderr);
    r = await ferry(['restore', '--vault', vault, '--item', 'x', '--machine', 'web01', '--point', '2000-01-01', '--to', join(dir, 'o')], { env });
    t.is(r.code, 1);
    t.regex(r.stderr, /has no point at or before 2000-01-01 \(2000-01-01T00:00:00.000Z\); its first is 1, of 20/);
    r = await ferry(['restore', '--vault', vault, '--item', 'x', '--machine', 'other', '--to', join(dir, 'o')], { env });
    t.is(r.code, 1);
    t.regex(r.stderr, /no recovery point of item x on machine other in .*; machine web01 has an item x: add --machine web01\n$/);
    r = await ferry(['points', '--vault', vault, '--bogus'], { env });
    t.is(r.code, 2);
    t.is(r.stderr, "ferry: unknown option '--bogus'\n");
  });
});

test('vhd cat into a slow pipe prints no listener warning', async (t) => {
  await withTmp(async (dir) => {
    const raw = join(dir, 'r.raw');
    await writeFile(raw, randomBytes(64 * MiB));
    await ok(['vhd', 'create', join(dir, 'r.vhd'), '--from', raw]);
    const r = await run('sh', ['-c', `node ${JSON.stringify(FERRY)} vhd cat ${JSON.stringify(join(dir, 'r.vhd'))} | (sleep 1; sha256sum)`]);
    t.is(r.code, 0, r.stderr);
    t.notRegex(r.stderr, /MaxListenersExceeded/);
    t.is(r.stdout.toString().split(' ')[0], (await must('sha256sum', [raw])).toString().split(' ')[0]);
  });
});

test('disks all too small for one object: the error asks for larger disks, not for more of them', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'r.bin'), randomBytes(3 * MiB));
    const r = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', join(dir, 'a'), '--disk', join(dir, 'b'), '--disk-capacity', '1M', src], { env });
    // a --disk-capacity below one block is a usage error, before anything is written
    t.is(r.code, 2);
    t.regex(r.stderr, /^ferry: --disk-capacity 1M is too small: a seed disk must hold one 2 MiB block and its manifest, 3M at least/);
    t.false(existsSync(join(dir, 'a', 'FERRY-SEED.json')));
    // disks whose free space is too small: the error asks for larger disks, not for more of them
    await withTmpfs(join(dir, 'a'), '1m', () =>
      withTmpfs(join(dir, 'b'), '1m', async () => {
        const small = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', join(dir, 'a'), '--disk', join(dir, 'b'), src], { env });
        t.is(small.code, 1);
        t.regex(small.stderr, /^ferry: the seed disks are too small \(.*\/a, .*\/b\): a disk needs \d+ MiB at least; give larger ones/);
      }),
    );
  });
});

test('without --format, restore --to X.tar writes a tar, and --json lists the warnings', async (t) => {
  await withTmp(async (dir) => {
    const { vault, disk, src } = await seeded(dir);
    await ok(['import', '--vault', vault, disk]);
    const tar = join(dir, 'x.tar');
    const r = await ferry(['restore', '--vault', vault, '--item', 'x', '--machine', 'm', '--to', tar, '--path', join(src, 'sub'), '--path', '/nope', '--json'], { env });
    t.is(r.code, 3, r.stderr);
    const doc = JSON.parse(r.stdout.toString());
    t.is(doc.format, 'tar');
    t.deepEqual(doc.warningList, [{ message: 'nothing in this backup matches --path "/nope"' }]);
    t.true((await must('tar', ['-tf', tar])).toString().includes(`.${src}/sub/a.txt`));
    t.deepEqual((await readdir(dir)).filter((n) => n.startsWith('x.tar')), ['x.tar']);
  });
});

test('a seed stopped on full disks resumes only with the same sources; others are refused, naming both', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const big = join(dir, 'big');
    await mkdir(big);
    for (let i = 0; i < 4; i++) await writeFile(join(big, `r${i}`), randomBytes(3 * MiB));
    const small = join(dir, 'small');
    await mkdir(small);
    await writeFile(join(small, 'a'), 'a');
    const args = (src: string, ...disks: string[]) => ['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', ...disks.flatMap((d) => ['--disk', join(dir, d)]), '--disk-capacity', '6M', src];
    let r = await ferry(args(big, 'd1'), { env });
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, /the seed disks are full/);
    r = await ferry(args(small, 'd1', 'd2'), { env });
    t.is(r.code, 1);
    t.true(r.stderr.includes(`the disks hold an unfinished seed of m/x from ${big}, not ${small}: run that seed again`), r.stderr);
    r = await ferry(args(big, 'd1', 'd2', 'd3', 'd4'), { env });
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout.toString(), /\(resumed\)/);
  });
});

test('vhd import of a differencing disk whose parent is not stored is refused, and stores nothing; with the parent stored it goes in', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    await ok(['vhd', 'create', join(dir, 'p.vhd'), '--size', '4M']);
    await ok(['vhd', 'create', join(dir, 'c.vhd'), '--parent', join(dir, 'p.vhd')]);
    const r = await ferry(['vhd', 'import', '--vault', vault, join(dir, 'c.vhd')], { env });
    t.is(r.code, 1);
    t.regex(r.stderr, /c\.vhd is a differencing disk over .*p\.vhd \(disk [0-9a-f]{32}\), which is not in the vault: vhd import its parent first\n$/);
    t.deepEqual(await readdir(join(vault, 'disks')).catch(() => []), []);
    await ok(['vhd', 'import', '--vault', vault, join(dir, 'p.vhd')]);
    const id = (await ok(['vhd', 'import', '--vault', vault, join(dir, 'c.vhd')])).trim();
    await ok(['vhd', 'export', '--vault', vault, '--disk', id, '--to', join(dir, 'flat.raw'), '--type', 'raw']);
    t.is((await stat(join(dir, 'flat.raw'))).size, 4 * MiB);
  });
});

test('a wrong passphrase read with a trailing space says that the space counts', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    await writeFile(join(dir, 'pf'), `${env.FERRY_PASSPHRASE} \n`);
    const r = await ferry(['points', '--vault', vault, '--passphrase-file', join(dir, 'pf')]);
    t.is(r.code, 12);
    t.regex(r.stderr, /no key slot opens with it \(the passphrase from --passphrase-file .*pf starts or ends with spaces or a blank line/);
  });
});

test('a restore under copy says how many it wrote beside existing files, and how many it found equal', async (t) => {
  await withTmp(async (dir) => {
    const { vault, disk, src } = await seeded(dir);
    await ok(['import', '--vault', vault, disk]);
    const to = join(dir, 'out');
    await ok(['restore', '--vault', vault, '--item', 'x', '--machine', 'm', '--to', to]);
    await writeFile(join(to, src, 'sub', 'a.txt'), 'changed\n');
    const out = await ok(['restore', '--vault', vault, '--item', 'x', '--machine', 'm', '--to', to]);
    t.regex(out, /: 1 entry, 2 B \(1 written beside a different existing one as \*\.ferry-restored-1, or \.2, \.3 \.\.\. after it where that name was taken\), \d+ skipped \(\d+ already equal\)\n/);
    t.is(await readFile(join(to, src, 'sub', 'a.txt.ferry-restored-1'), 'utf8'), 'a\n');
    // --verbose names each one
    const v = await ferry(['restore', '--vault', vault, '--item', 'x', '--machine', 'm', '--to', to, '--if-exists', 'skip', '--verbose'], { env });
    t.is(v.code, 0, v.stderr);
    t.true(v.stderr.includes(`ferry: ${join(to, src, 'sub', 'a.txt')} differs from the backup: left as it is (--if-exists skip)\n`), v.stderr);
  });
});

test('vhd export and vhd create never rename a file over a device or a folder', async (t) => {
  await withTmp(async (dir) => {
    await ok(['vhd', 'create', join(dir, 'a.vhd'), '--size', '1M']);
    let r = await ferry(['vhd', 'export', join(dir, 'a.vhd'), '--type', 'raw', '--to', '/dev/null']);
    t.is(r.code, 1);
    t.is(r.stderr, 'ferry: /dev/null is not a regular file: name a file to write\n');
    t.true((await stat('/dev/null')).isCharacterDevice());
    await mkdir(join(dir, 'd'));
    r = await ferry(['vhd', 'create', join(dir, 'd'), '--size', '1M', '--force']);
    t.is(r.code, 1);
    t.regex(r.stderr, /d is a folder: name a file to write\n$/);
  });
});

test('a complete seed is "already complete" only for the same kind and sources; another is refused naming both', async (t) => {
  await withTmp(async (dir) => {
    const { vault, disk, src } = await seeded(dir);
    const other = join(dir, 'other');
    await mkdir(other);
    await writeFile(join(other, 'b'), 'b');
    let r = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk', disk, other], { env });
    t.is(r.code, 1);
    t.true(r.stderr.includes(`the disks hold a complete seed of m/x from ${src}, not ${other}: run that seed again, or use empty disks`), r.stderr);
    const img = join(dir, 'v.img');
    await writeFile(img, randomBytes(MiB));
    r = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'volume', '--machine', 'm', '--disk', disk, img], { env });
    t.is(r.code, 1);
    t.regex(r.stderr, /the disks hold a complete files seed of m\/x, not this volume one/);
  });
});

test('a disk given twice (or with a copy of it) is verified and copied once', async (t) => {
  await withTmp(async (dir) => {
    const { vault, disk } = await seeded(dir);
    await must('cp', ['-a', disk, join(dir, 'copy')]);
    const out = await ok(['import', '--vault', vault, disk, join(dir, 'copy')]);
    t.regex(out, /d1: disk 1 of 1 of seed [0-9a-f]{16} verified and imported/);
    t.regex(out, /copy: disk 1 of 1 of seed [0-9a-f]{16} was imported from .*d1 in this run/);
  });
});

test('vhd import never replaces a stored disk: the same file again is "already stored", another with its unique id is refused', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const vhd = join(dir, 'q.vhd');
    await must('qemu-img', ['create', '-f', 'vpc', vhd, '8M']);
    await must('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x11 0 1M', vhd]);
    const id = (await ok(['vhd', 'import', '--vault', vault, vhd])).trim();
    t.is((await ok(['vhd', 'import', '--vault', vault, vhd])).trim(), id, 'the same file: its id, nothing stored again');
    await must('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x22 0 1M', vhd]); // written in place: the unique id stays
    const r = await ferry(['vhd', 'import', '--vault', vault, vhd], { env });
    t.is(r.code, 1);
    t.true(r.stderr.includes(`has the unique id of disk ${id}, which the vault already holds with other content: a stored disk is never replaced`), r.stderr);
    await ok(['vhd', 'export', '--vault', vault, '--disk', id, '--to', join(dir, 'back.raw'), '--type', 'raw']);
    t.true((await readFile(join(dir, 'back.raw'))).subarray(0, MiB).equals(Buffer.alloc(MiB, 0x11)), 'the stored disk still holds what was first imported');
  });
});

test('import of three disks with the middle one damaged imports the other two, names the damaged one, exits 1; its good copy finishes the seed', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}`), randomBytes(2 * MiB));
    const disks = [1, 2, 3, 4, 5].map((n) => join(dir, `d${n}`));
    await ok(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk-capacity', '5M', ...disks.flatMap((d) => ['--disk', d]), src]);
    const used: string[] = [];
    for (const d of disks) if (await stat(join(d, SEED_MANIFEST)).then(() => true, () => false)) used.push(d);
    t.true(used.length >= 3, used.join(' '));
    const m = JSON.parse(await readFile(join(used[1], SEED_MANIFEST), 'utf8'));
    const obj = join(used[1], m.prefix + m.objects[0].name);
    const good = await readFile(obj);
    const bad = Buffer.from(good);
    bad[bad.length >> 1] ^= 1;
    await writeFile(obj, bad);
    const r = await ferry(['import', '--vault', vault, ...used], { env });
    t.is(r.code, 1, r.stderr);
    const out = r.stdout.toString();
    for (const d of [used[0], ...used.slice(2)]) t.regex(out, new RegExp(`${d}: disk \\d of ${used.length} of seed [0-9a-f]+ verified and imported`));
    t.regex(out, new RegExp(`disk 2 of ${used.length} of seed [0-9a-f]+ \\(m/x\\) not yet imported`));
    t.regex(r.stderr, new RegExp(`on seed disk ${used[1]} \\(disk 2 of ${used.length}\\) does not match its checksum; the disk is damaged and was not imported`));
    t.deepEqual(JSON.parse((await ferry(['points', '--json', '--vault', vault], { env })).stdout.toString()), []);
    await writeFile(obj, good);
    const again = await ferry(['import', '--vault', vault, used[1]], { env });
    t.is(again.code, 0, again.stderr);
    t.regex(again.stdout.toString(), /registered point 1 of m\/x/);
  });
});

test('vhd create --from maps the image blocks: a ragged image, one shorter than --size, zero blocks, fixed and dynamic read as qemu-img reads them, as without the addon', async (t) => {
  await withTmp(async (dir) => {
    const raw = join(dir, 'img.raw');
    // 5 MiB and 777 bytes: data, a zero block, data, a tail that ends inside a block and a sector
    const data = Buffer.concat([randomBytes(2 * MiB), Buffer.alloc(2 * MiB), randomBytes(MiB + 777)]);
    await writeFile(raw, data);
    for (const [type, extra, size] of [['dynamic', [], 5 * MiB + 1024], ['fixed', [], 5 * MiB + 1024], ['dynamic', ['--size', '8M'], 8 * MiB], ['fixed', ['--size', '8M'], 8 * MiB]] as const) {
      const want = Buffer.concat([data, Buffer.alloc(size - data.length)]);
      for (const native of ['1', '0']) {
        const vhd = join(dir, `${type}-${size}-${native}.vhd`);
        const r = await ferry(['vhd', 'create', vhd, '--type', type, '--from', raw, ...extra], { env: { FERRY_NATIVE: native } });
        t.is(r.code, 0, r.stderr);
        const out = join(dir, 'out.raw');
        await must('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', vhd, out]);
        t.true((await readFile(out)).equals(want), `${type} ${size} native=${native}`);
      }
    }
  });
});
