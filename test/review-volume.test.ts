// From a review of volume and system-state restores from the outside: each
// test fails on the behaviour the review found.
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, readdir, rename, stat, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { FERRY, ferry, run, withTmp } from './helpers/exec.js';
import { withLoop, withMount } from './helpers/mounts.js';

const env = { FERRY_PASSPHRASE: 'volume review passphrase, long enough' };
const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
const rootTest = isRoot ? test.serial : test.skip;

async function ok(args: string[]): Promise<string> {
  const r = await ferry(args, { env });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout.toString();
}

/** A vault holding one volume point of `data`. */
async function volumeVault(dir: string, data: Buffer): Promise<string> {
  const vault = join(dir, 'vault');
  await ok(['init', vault, '--kdf-log-n', '12']);
  const img = join(dir, 'vol.img');
  await writeFile(img, data);
  await ok(['seed', '--vault', vault, '--item', 'vol', '--kind', 'volume', '--machine', 'm', '--disk', join(dir, 'd1'), img]);
  await ok(['import', '--vault', vault, join(dir, 'd1')]);
  return vault;
}

test('restored images, VHDs and archives are readable by their owner alone; a copy never lands on a file already there', async (t) => {
  await withTmp(async (dir) => {
    const data = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(MiB), randomBytes(MiB + 100)]);
    const vault = await volumeVault(dir, data);
    const restore = (to: string, ...more: string[]) => ferry(['restore', '--vault', vault, '--machine', 'm', '--item', 'vol', '--to', to, '--json', ...more], { env });

    for (const [name, format] of [['v.raw', 'raw'], ['v.vhd', 'vhd']]) {
      const r = await restore(join(dir, name), '--format', format);
      t.is(r.code, 0, r.stderr.toString());
      t.is((await stat(join(dir, name))).mode & 0o777, 0o600, name);
    }
    t.true((await readFile(join(dir, 'v.raw'))).equals(data));

    // an equal VHD already there is left as it is (no second copy)
    const again = await restore(join(dir, 'v.vhd'));
    t.is(again.code, 0, again.stderr.toString());
    t.is(JSON.parse(again.stdout.toString()).unchanged, 1);
    t.false(existsSync(join(dir, 'v.vhd.ferry-restored-1')));

    // copy: a file at the copy's name is kept; the copy takes the next name, and an equal copy is found again
    const other = join(dir, 'e.img');
    await writeFile(other, 'not the volume');
    await writeFile(`${other}.ferry-restored-1`, 'precious');
    const c1 = await restore(other, '--format', 'raw');
    t.is(c1.code, 0, c1.stderr.toString());
    t.is(JSON.parse(c1.stdout.toString()).to, `${other}.ferry-restored-1.2`);
    t.is(await readFile(`${other}.ferry-restored-1`, 'utf8'), 'precious');
    t.true((await readFile(`${other}.ferry-restored-1.2`)).equals(data));
    const c2 = await restore(other, '--format', 'raw');
    t.is(JSON.parse(c2.stdout.toString()).unchanged, 1, c2.stdout.toString());
    t.false(existsSync(`${other}.ferry-restored-1.3`));

    // a dead run's partial copy beside an image already in place goes once it is stale
    const tag = createHash('sha256').update(hostname()).digest('hex').slice(0, 8);
    const left = join(dir, `v.raw.ferry-tmp-${tag}-999999`);
    await writeFile(left, randomBytes(1000));
    const past = new Date(Date.now() - 120_000);
    await utimes(left, past, past);
    const equal = await restore(join(dir, 'v.raw'), '--format', 'raw');
    t.is(JSON.parse(equal.stdout.toString()).unchanged, 1);
    t.false(existsSync(left), 'the leftover is gone');
  });
});

rootTest('a device restore: --if-exists skip is refused, and a missing object is found before the device is written', async (t) => {
  await withTmp(async (dir) => {
    const data = randomBytes(6 * MiB);
    const vault = await volumeVault(dir, data);
    const before = randomBytes(8 * MiB);
    const img = join(dir, 'dev.img');
    await writeFile(img, before);
    await withLoop(img, async (dev) => {
      const skip = await ferry(['restore', '--vault', vault, '--machine', 'm', '--item', 'vol', '--to', dev, '--if-exists', 'skip'], { env });
      t.is(skip.code, 2, skip.stderr.toString());
      t.regex(skip.stderr.toString(), /always exists/);
      const disks = await readdir(join(vault, 'disks'));
      const blocks = join(vault, 'disks', disks[0], 'blocks');
      await rename(join(blocks, '2'), join(dir, 'block-2'));
      const missing = await ferry(['restore', '--vault', vault, '--machine', 'm', '--item', 'vol', '--to', dev], { env });
      t.is(missing.code, 1, missing.stderr.toString());
      t.regex(missing.stderr.toString(), /blocks\/2 is missing .* nothing was written/);
    });
    t.true((await readFile(img)).equals(before), 'the device is untouched');
  });
});

test('a tar restore is readable by its owner alone', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    await writeFile(join(dir, 'secret'), 'shadow-like\n');
    await ok(['seed', '--vault', vault, '--item', 'f', '--kind', 'files', '--disk', join(dir, 'd1'), join(dir, 'secret')]);
    await ok(['import', '--vault', vault, join(dir, 'd1')]);
    await ok(['restore', '--vault', vault, '--item', 'f', '--to', join(dir, 'out.tar')]);
    t.is((await stat(join(dir, 'out.tar'))).mode & 0o777, 0o600);
  });
});

rootTest('a restore that can write nothing at all fails (exit 1), and --quiet still names what failed', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    await writeFile(join(dir, 'a.txt'), 'a\n');
    await ok(['seed', '--vault', vault, '--item', 'f', '--kind', 'files', '--disk', join(dir, 'd1'), join(dir, 'a.txt')]);
    await ok(['import', '--vault', vault, join(dir, 'd1')]);
    const ro = join(dir, 'ro');
    await mkdir(ro, { mode: 0o555 });
    await chmod(dir, 0o755);
    await chmod(ro, 0o555);
    const r = await run('runuser', ['-u', 'nobody', '--', 'env', `FERRY_PASSPHRASE=${env.FERRY_PASSPHRASE}`, 'FERRY_STATE_DIR=/tmp/ferry-nobody-state', process.execPath, FERRY, 'restore', '--vault', vault, '--item', 'f', '--to', ro, '--quiet']);
    t.is(r.code, 1, r.stderr.toString());
    const lines = r.stderr.toString().trim().split('\n');
    t.regex(lines[0], /^ferry: warning: cannot restore .*EACCES/);
    t.regex(lines.at(-1)!, /^ferry: nothing was restored to .*ro: 1 entry could not be restored/);
  });
});

test('options that mean nothing for a volume are usage errors: restore --path, a --to named .tar, seed --exclude', async (t) => {
  await withTmp(async (dir) => {
    const vault = await volumeVault(dir, randomBytes(MiB));
    for (const more of [['--to', join(dir, 'p.raw'), '--path', '/etc'], ['--to', join(dir, 'x.tar')]]) {
      const r = await ferry(['restore', '--vault', vault, '--machine', 'm', '--item', 'vol', ...more], { env });
      t.is(r.code, 2, r.stderr.toString());
      t.is(r.stderr.toString().trim().split('\n').length, 1);
    }
    t.false(existsSync(join(dir, 'p.raw')) || existsSync(join(dir, 'x.tar')));
    const s = await ferry(['seed', '--vault', vault, '--item', 'v2', '--kind', 'volume', '--disk', join(dir, 'd2'), '--exclude', '*.log', join(dir, 'vol.img')], { env });
    t.is(s.code, 2, s.stderr.toString());
    t.regex(s.stderr.toString(), /--exclude picks files; a volume is copied whole/);
  });
});

rootTest('an image file mounted read-write (through a loop device) is warned about when seeded, as a device is', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const img = join(dir, 'fs.img');
    await writeFile(img, Buffer.alloc(8 * MiB));
    await run('mkfs.ext4', ['-q', '-F', img]);
    const mnt = join(dir, 'mnt');
    await withMount(['-o', 'loop', img], mnt, async () => {
      const r = await ferry(['seed', '--vault', vault, '--item', 'img', '--kind', 'volume', '--disk', join(dir, 'd1'), img], { env });
      t.is(r.code, 3, r.stderr.toString());
      t.true(r.stderr.toString().includes(`${img} is mounted read-write at ${mnt}`), r.stderr.toString());
    });
  });
});
