// Seed, import and restore through the real CLI: volumes byte for byte,
// spanning disks, disks imported in reverse and in several sittings, and
// what happens with missing, damaged, foreign and interrupted seeds.
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, rm, writeFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { SEED_MANIFEST } from '../format/seedmanifest.js';
import { compareTrees } from './helpers/tree.js';
import { FERRY, ferry, must, run, sha256, withTmp } from './helpers/exec.js';

const PASS = 'seed test passphrase, long enough';
const env = { FERRY_PASSPHRASE: PASS };
const MiB = 1024 * 1024;

async function initVault(dir: string, name = 'vault'): Promise<string> {
  const v = join(dir, name);
  const r = await ferry(['init', v, '--kdf-log-n', '12'], { env });
  if (r.code !== 0) throw new Error(r.stderr);
  return v;
}

async function ok(args: string[], extra: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await ferry(args, { env: { ...env, ...extra } });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout.toString();
}

async function points(vault: string): Promise<Array<Record<string, unknown>>> {
  return JSON.parse(await ok(['points', '--vault', vault, '--json']));
}

/** A small tree of random and compressible files. */
async function plainTree(root: string, files = 40): Promise<void> {
  for (let i = 0; i < files; i++) {
    const d = join(root, `d${i % 5}`, `e${i % 3}`);
    await mkdir(d, { recursive: true });
    const body = i % 2 ? randomBytes(50_000 + i * 7919) : Buffer.from(`line ${i}\n`.repeat(5000 + i * 100));
    await writeFile(join(d, `f${i}.bin`), body);
  }
}

async function treeHash(root: string): Promise<string> {
  const out = await must('sh', ['-c', `cd "${root}" && find . -type f -print0 | sort -z | xargs -0 sha256sum`]);
  return sha256(out);
}

test('an ext4 image seeded as a volume restores byte for byte (raw) and as a VHD qemu-img compares equal', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const content = join(dir, 'content');
    await plainTree(content, 12);
    await writeFile(join(content, 'random.bin'), randomBytes(6 * MiB));
    const img = join(dir, 'ext4.img');
    await must('truncate', ['-s', '48M', img]);
    await must('mkfs.ext4', ['-q', '-F', '-d', content, img]);
    await ok(['seed', '--vault', vault, '--item', 'vol', '--kind', 'volume', '--machine', 'host1', '--disk', join(dir, 'd1'), '--disk', join(dir, 'd2'), '--disk', join(dir, 'd3'), '--disk-capacity', '5M', img]);
    const d2 = JSON.parse(await readFile(join(dir, 'd2', SEED_MANIFEST), 'utf8'));
    t.true(d2.of >= 2, 'the seed spans disks');
    t.true(d2.complete);
    const used = ['d1', 'd2', 'd3'].map((d) => join(dir, d)).filter((d) => existsSync(join(d, SEED_MANIFEST)));
    await ok(['import', '--vault', vault, ...used.reverse()]);
    const ps = await points(vault);
    t.is(ps.length, 1);
    t.like(ps[0], { seq: 1, kind: 'volume', machine: 'host1', item: 'vol', source: 'seed' });
    const raw = join(dir, 'restored.img');
    await ok(['restore', '--vault', vault, '--machine', 'host1', '--item', 'vol', '--to', raw, '--format', 'raw']);
    t.true((await readFile(raw)).equals(await readFile(img)));
    const vhd = join(dir, 'restored.vhd');
    await ok(['restore', '--vault', vault, '--machine', 'host1', '--item', 'vol', '--to', vhd, '--format', 'vhd']);
    const cmp = await run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', vhd, img]);
    t.is(cmp.code, 0, cmp.stdout.toString());
    t.is((await run('e2fsck', ['-fn', raw])).code, 0, 'the restored image is a clean ext4');
  });
});

test('import names a missing disk and registers nothing until it comes; then the point appears', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await plainTree(src, 60);
    await writeFile(join(src, 'big.bin'), randomBytes(9 * MiB));
    const disks = [1, 2, 3, 4, 5, 6].map((n) => join(dir, `disk${n}`));
    await ok(['seed', '--vault', vault, '--item', 'docs', '--kind', 'files', '--machine', 'm', ...disks.flatMap((d) => ['--disk', d]), '--disk-capacity', '5M', src]);
    const of = JSON.parse(await readFile(join(disks[0], SEED_MANIFEST), 'utf8')).of as number;
    t.true(of >= 3, `spans at least three disks (got ${of})`);
    const used = disks.slice(0, of);
    const r1 = await ferry(['import', '--vault', vault, used[0], used[of - 1]], { env });
    t.is(r1.code, 0, r1.stderr);
    t.regex(r1.stdout.toString(), /disks? 2.* of \d+ of seed [0-9a-f]+ .*not yet imported/);
    t.deepEqual(await points(vault), []);
    // the rest, in reverse order, in a second sitting
    await ok(['import', '--vault', vault, ...used.slice(1, of - 1).reverse()]);
    const ps = await points(vault);
    t.is(ps.length, 1);
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'docs', '--to', join(dir, 'out')]);
    t.is(await treeHash(join(dir, 'out', src)), await treeHash(src));
    // importing a disk again changes nothing
    await ok(['import', '--vault', vault, used[0]]);
    t.is((await points(vault)).length, 1);
  });
});

test('a damaged, a foreign and a non-seed disk are named at import and nothing is registered', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const other = await initVault(dir, 'other');
    const src = join(dir, 'src');
    await plainTree(src, 20);
    const d1 = join(dir, 'd1');
    await ok(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', d1, src]);
    // foreign: the disk belongs to `vault`, imported into `other`
    const f = await ferry(['import', '--vault', other, d1], { env });
    t.is(f.code, 1);
    t.regex(f.stderr, /SEED|holds a seed for vault/);
    t.regex(f.stderr, new RegExp(d1.replace(/[/.]/g, '\\$&')));
    // not a seed disk
    await mkdir(join(dir, 'empty'));
    const e = await ferry(['import', '--vault', vault, join(dir, 'empty')], { env });
    t.is(e.code, 1);
    t.regex(e.stderr, /not a ferry seed disk/);
    // not there at all (unplugged)
    const gone = await ferry(['import', '--vault', vault, join(dir, 'unplugged')], { env });
    t.is(gone.code, 1);
    t.regex(gone.stderr, /unplugged does not exist: is the seed disk connected and mounted\?/);
    // damaged: flip one byte of one block object
    const m = JSON.parse(await readFile(join(d1, SEED_MANIFEST), 'utf8'));
    const victim = m.objects.find((o: { name: string }) => o.name.includes('/blocks/')).name as string;
    const p = join(d1, victim);
    const b = await readFile(p);
    b[b.length >> 1] ^= 0x40;
    await writeFile(p, b);
    const c = await ferry(['import', '--vault', vault, d1], { env });
    t.is(c.code, 1);
    t.true(c.stderr.includes(victim), c.stderr);
    t.is(c.stderr.trim().split('\n').length, 1);
    t.deepEqual(await points(vault), []);
    t.deepEqual(await points(other), []);
  });
});

test('a seed killed at random points and run again gives the same restore', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await plainTree(src, 120);
    await writeFile(join(src, 'big.bin'), randomBytes(24 * MiB));
    const disks = [join(dir, 'a'), join(dir, 'b'), join(dir, 'c')];
    // ~59 MB of sealed objects over 3 x 24 MiB: room to spare whatever order a resumed run fills the disks in
    const args = ['seed', '--vault', vault, '--item', 'k', '--kind', 'files', '--machine', 'm', ...disks.flatMap((d) => ['--disk', d]), '--disk-capacity', '24M', src];
    let kills = 0;
    for (let i = 0; i < 5; i++) {
      const child = spawn(process.execPath, [FERRY, ...args], { env: { ...process.env, ...env }, stdio: 'ignore' });
      // the first early enough to land for sure (a whole run takes about a second here)
      const delay = 150 + Math.floor(Math.random() * (i === 0 ? 250 : 900));
      const timer = setTimeout(() => child.kill('SIGKILL'), delay);
      const code = await new Promise<number | null>((res) => child.on('close', (c) => res(c)));
      clearTimeout(timer);
      if (code === null) kills++;
      else break;
    }
    const last = await ferry(args, { env });
    // finished already by an unkilled run, or finishes now
    t.true(last.code === 0 || /complete seed/.test(last.stderr), last.stderr);
    t.true(kills >= 1, 'at least one run was killed');
    await ok(['import', '--vault', vault, ...disks.reverse().filter((d) => existsSync(join(d, SEED_MANIFEST)))]);
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'k', '--to', join(dir, 'out')]);
    t.is(await treeHash(join(dir, 'out', src)), await treeHash(src));
  });
});

test('a restore killed at random points and run again gives the same tree, with no copies and nothing left over', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await plainTree(src, 300);
    await writeFile(join(src, 'big.bin'), randomBytes(24 * MiB));
    await ok(['seed', '--vault', vault, '--item', 'r', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'd'), src]);
    await ok(['import', '--vault', vault, join(dir, 'd')]);
    const out = join(dir, 'out');
    const args = ['restore', '--vault', vault, '--machine', 'm', '--item', 'r', '--to', out];
    // how long a whole run takes here: the kills fall in its second half, where files are being written
    const t0 = Date.now();
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'r', '--to', join(dir, 'timing')]);
    const whole = Date.now() - t0;
    // runs killed at random points (from making the target to the last files), each followed by the next
    let kills = 0;
    for (let i = 0; i < 5; i++) {
      const child = spawn(process.execPath, [FERRY, ...args], { env: { ...process.env, ...env }, stdio: 'ignore' });
      let timer: NodeJS.Timeout | undefined;
      let poll: NodeJS.Timeout | undefined;
      if (i === 0) {
        // the first once it writes files (big.bin, 24 MiB, comes first), so that one kill lands
        // for sure whatever the load: a time taken from another run can be too late
        poll = setInterval(() => {
          if (existsSync(join(out, src, 'big.bin'))) child.kill('SIGKILL');
        }, 2);
      } else {
        timer = setTimeout(() => child.kill('SIGKILL'), Math.floor(whole * (0.3 + 0.65 * Math.random())));
      }
      const code = await new Promise<number | null>((res) => child.on('close', (c) => res(c)));
      clearTimeout(timer);
      clearInterval(poll);
      if (code === null) kills++;
    }
    t.true(kills >= 1, 'at least one run was killed');
    const leftovers = async () => (await must('find', [out])).toString().split('\n').filter((n) => /\.ferry-(restored|partial|restore-unfinished)/.test(n));
    await ok(args);
    t.deepEqual(await compareTrees(src, join(out, src)), []);
    t.deepEqual(await leftovers(), []);
    // and one killed for certain in the middle of big.bin (24 MiB, written first, in parts): it is
    // cut short under its real name, and the next run must replace it whatever the policy
    await rm(out, { recursive: true, force: true });
    const cut = await ferry([...args, '--if-exists', 'skip'], { env: { ...env, FERRY_TEST_KILL_AFTER_BYTES: String(10 * MiB) } });
    t.is(cut.code, 128, `killed by the hook (exit ${cut.code}): ${cut.stderr}`);
    t.true(existsSync(join(out, '.ferry-restore-unfinished')));
    const short = (await stat(join(out, src, 'big.bin'))).size;
    t.true(short >= 10 * MiB && short < 24 * MiB, `big.bin is ${short} bytes`);
    await ok([...args, '--if-exists', 'skip']);
    t.deepEqual(await compareTrees(src, join(out, src)), []);
    t.deepEqual(await leftovers(), []);
  });
});

test('more data than disks: ferry asks for another disk, and the same command with one more --disk finishes', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await plainTree(src, 10);
    await writeFile(join(src, 'big.bin'), randomBytes(12 * MiB));
    const base = ['seed', '--vault', vault, '--item', 'full', '--kind', 'files', '--machine', 'm', '--disk-capacity', '8M', src];
    const r = await ferry([...base, '--disk', join(dir, 'a')], { env });
    t.is(r.code, 1);
    t.regex(r.stderr, /add another --disk/);
    // The source changes between the runs: blocks that now hold other bytes
    // must be sealed again, unchanged ones are kept from the first run.
    const fh = await open(join(src, 'big.bin'), 'r+');
    await fh.write(randomBytes(64 * 1024), 0, 64 * 1024, 2.5 * MiB);
    await fh.close();
    const again = await ferry([...base, '--disk', join(dir, 'a'), '--disk', join(dir, 'b'), '--disk', join(dir, 'c'), '--json'], { env });
    t.is(again.code, 0, again.stderr);
    const res = JSON.parse(again.stdout.toString());
    t.true(res.kept >= 1, `kept ${res.kept}`);
    t.true(res.objects > res.kept, `${res.objects} objects, ${res.kept} kept`);
    const doc = JSON.parse((await ferry([...base, '--disk', join(dir, 'a'), '--json'], { env })).stdout.toString() || '{}');
    t.falsy(doc.seedId, 'a complete seed is not written again');
    await ok(['import', '--vault', vault, ...['c', 'b', 'a'].map((d) => join(dir, d)).filter((d) => existsSync(join(d, SEED_MANIFEST)))]);
    await ok(['restore', '--vault', vault, '--machine', 'm', '--item', 'full', '--to', join(dir, 'out')]);
    t.is(await treeHash(join(dir, 'out', src)), await treeHash(src));
  });
});

test('--databox lays objects out under BlockBlob/<container>/ and they import from there', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await plainTree(src, 6);
    const d = join(dir, 'databox');
    await ok(['seed', '--vault', vault, '--item', 'db', '--kind', 'files', '--machine', 'm', '--disk', d, '--databox', 'ferry-seed', src]);
    t.deepEqual((await readdir(d)).sort(), ['BlockBlob', SEED_MANIFEST]);
    t.true((await stat(join(d, 'BlockBlob', 'ferry-seed', 'disks'))).isDirectory());
    await ok(['import', '--vault', vault, d]);
    t.is((await points(vault)).length, 1);
    const bad = await ferry(['seed', '--vault', vault, '--item', 'db2', '--kind', 'files', '--disk', join(dir, 'x'), '--databox', 'Bad_Name', src], { env });
    t.is(bad.code, 2);
  });
});

test('a wrong passphrase exits 12 and a missing source is a clear error', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const r = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', join(dir, 'd'), dir], { env: { FERRY_PASSPHRASE: 'a wrong passphrase of length' } });
    t.is(r.code, 12);
    const m = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'volume', '--disk', join(dir, 'd'), join(dir, 'nope.img')], { env });
    t.not(m.code, 0);
    t.regex(m.stderr, /nope\.img/);
    t.is(m.stderr.trim().split('\n').length, 1, m.stderr);
  });
});
