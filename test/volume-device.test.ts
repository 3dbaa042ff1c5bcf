// Volumes and block devices (loop devices here): a restore writes a device
// whole when it is large enough and refuses one too small or mounted,
// leaving it untouched; a restore to an image file that exists follows
// --if-exists; a seed of a device mounted read-write warns; a damaged block
// stops a volume restore unless --salvage, which writes zeros there.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ferry, must, run, withTmp } from './helpers/exec.js';
import { withLoop, withMount } from './helpers/mounts.js';

const env = { FERRY_PASSPHRASE: 'device test passphrase, long enough' };
const MiB = 1024 * 1024;

async function ok(args: string[]): Promise<void> {
  const r = await ferry(args, { env });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
}

/** A loop device over a new image `img` holding `fill`, detached after fn. */
async function withNewLoop<T>(img: string, fill: Buffer, fn: (dev: string) => Promise<T>): Promise<T> {
  await writeFile(img, fill);
  return withLoop(img, fn);
}

test('a volume restores onto a large enough device; a small or mounted one is refused and left as it was', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const img = join(dir, 'vol.img');
    const data = Buffer.concat([randomBytes(2 * MiB), Buffer.alloc(2 * MiB), randomBytes(2 * MiB)]);
    await writeFile(img, data);
    await ok(['seed', '--vault', vault, '--item', 'vol', '--kind', 'volume', '--machine', 'm', '--disk', join(dir, 'd1'), img]);
    await ok(['import', '--vault', vault, join(dir, 'd1')]);
    const restore = (to: string) => ferry(['restore', '--vault', vault, '--machine', 'm', '--item', 'vol', '--to', to, '--format', 'raw'], { env });

    // large enough: the volume, then what the device held after it (read and authenticated first: nothing is damaged)
    const old = randomBytes(8 * MiB);
    await withNewLoop(join(dir, 'big.img'), old, async (dev) => {
      const r = await ferry(['restore', '--vault', vault, '--machine', 'm', '--item', 'vol', '--to', dev, '--format', 'raw', '--verify-first'], { env });
      t.is(r.code, 0, r.stderr);
    });
    const big = await readFile(join(dir, 'big.img'));
    t.true(big.subarray(0, data.length).equals(data), 'the volume, byte for byte');
    t.true(big.subarray(data.length).equals(old.subarray(data.length)), 'the rest of the device untouched');

    // too small
    const small = randomBytes(4 * MiB);
    await withNewLoop(join(dir, 'small.img'), small, async (dev) => {
      const r = await restore(dev);
      t.is(r.code, 1, r.stderr);
      t.regex(r.stderr, new RegExp(`^ferry: ${dev} holds 4\\.0 MiB .* but the volume is 6\\.0 MiB`));
      t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    });
    t.true((await readFile(join(dir, 'small.img'))).equals(small), 'the small device is untouched');

    // mounted
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    await must('truncate', ['-s', '8M', join(dir, 'fs.img')]);
    await must('mkfs.ext4', ['-q', '-F', join(dir, 'fs.img')]);
    const before = await readFile(join(dir, 'fs.img'));
    await withNewLoop(join(dir, 'fs.img'), before, (dev) =>
      withMount([dev], mnt, async () => {
        const r = await restore(dev);
        t.is(r.code, 1, r.stderr);
        t.regex(r.stderr, new RegExp(`^ferry: ${dev} is in use \\(mounted`));
      }),
    );
    t.is((await run('e2fsck', ['-fn', join(dir, 'fs.img')])).code, 0, 'the mounted filesystem is still clean');
  });
});

test('a volume restored to an image file that exists: --if-exists copy writes beside it, skip leaves it, overwrite replaces it', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const img = join(dir, 'vol.img');
    const data = Buffer.concat([randomBytes(MiB), Buffer.alloc(MiB)]);
    await writeFile(img, data);
    await ok(['seed', '--vault', vault, '--item', 'vol', '--kind', 'volume', '--machine', 'm', '--disk', join(dir, 'd1'), img]);
    await ok(['import', '--vault', vault, join(dir, 'd1')]);
    const restore = (to: string, ...more: string[]) =>
      ferry(['restore', '--vault', vault, '--machine', 'm', '--item', 'vol', '--to', to, ...more], { env });
    const target = join(dir, 'there.img');
    const mine = Buffer.from('an image the administrator keeps\n');
    await writeFile(target, mine);

    let r = await restore(target); // default: copy
    t.is(r.code, 0, r.stderr);
    t.true((await readFile(target)).equals(mine), 'the existing image is kept');
    t.true((await readFile(`${target}.ferry-restored-1`)).equals(data), 'the restored one is beside it');

    r = await restore(target, '--if-exists', 'skip');
    t.is(r.code, 0, r.stderr);
    t.true((await readFile(target)).equals(mine));
    t.regex(r.stdout.toString(), /1 skipped/);

    r = await restore(join(dir, 'there.vhd'), '--format', 'vhd', '--if-exists', 'skip');
    t.is(r.code, 0, r.stderr);
    t.is((await run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', join(dir, 'there.vhd'), img])).code, 0, 'a VHD where nothing was');

    r = await restore(target, '--if-exists', 'overwrite');
    t.is(r.code, 0, r.stderr);
    t.true((await readFile(target)).equals(data), 'replaced');

    // an image already equal to the volume is left as it is: no copy beside it
    await rm(`${target}.ferry-restored-1`);
    r = await restore(target);
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout.toString(), /: 0 entries, 0 B, 1 skipped \(1 already equal\)\n$/);
    t.false(existsSync(`${target}.ferry-restored-1`));

    r = await restore(dir);
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, /is a folder: name the file to write/);
  });
});

test('seeding a device mounted read-write warns (exit 3) and names where; read-only or unmounted it does not', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    await must('truncate', ['-s', '8M', join(dir, 'fs.img')]);
    await must('mkfs.ext4', ['-q', '-F', join(dir, 'fs.img')]);
    await withNewLoop(join(dir, 'fs.img'), await readFile(join(dir, 'fs.img')), async (dev) => {
      const seed = (item: string) =>
        ferry(['seed', '--vault', vault, '--item', item, '--kind', 'volume', '--machine', 'm', '--disk', join(dir, item), dev], { env });
      await withMount([dev], mnt, async () => {
        const r = await seed('rw');
        t.is(r.code, 3, r.stderr);
        t.true(r.stderr.includes(`${dev} is mounted read-write at ${mnt}: `), r.stderr);
      });
      await withMount(['-o', 'ro', dev], mnt, async () => {
        const r = await seed('ro');
        t.is(r.code, 0, r.stderr);
      });
      const r = await seed('off');
      t.is(r.code, 0, r.stderr);
    });
  });
});

test('a damaged volume block stops the restore and names the object; --salvage writes the rest with zeros there (file, VHD and device), exit 3', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const img = join(dir, 'vol.img');
    const data = randomBytes(6 * MiB);
    await writeFile(img, data);
    await ok(['seed', '--vault', vault, '--item', 'vol', '--kind', 'volume', '--machine', 'm', '--disk', join(dir, 'd1'), img]);
    await ok(['import', '--vault', vault, join(dir, 'd1')]);
    const [id] = await readdir(join(vault, 'disks'));
    const obj = join(vault, 'disks', id, 'blocks', '1');
    const sealed = await readFile(obj);
    sealed[sealed.length >> 1] ^= 0x40;
    await writeFile(obj, sealed);
    const restore = (to: string, ...more: string[]) =>
      ferry(['restore', '--vault', vault, '--machine', 'm', '--item', 'vol', '--to', to, ...more], { env });
    const expected = Buffer.concat([data.subarray(0, 2 * MiB), Buffer.alloc(2 * MiB), data.subarray(4 * MiB)]);

    let r = await restore(join(dir, 'out.img'));
    t.is(r.code, 1);
    t.regex(r.stderr, new RegExp(`^ferry: object disks/${id}/blocks/1: .*nothing was restored \\(--salvage`));
    t.false(existsSync(join(dir, 'out.img')), 'no image, not even a partial one');

    r = await restore(join(dir, 'out.img'), '--salvage');
    t.is(r.code, 3, r.stderr);
    t.regex(r.stderr, /warning: bytes 2097152-4194303 of the volume could not be read \(object .*\): written as zeros/);
    t.true((await readFile(join(dir, 'out.img'))).equals(expected));

    r = await restore(join(dir, 'out.vhd'), '--format', 'vhd', '--salvage');
    t.is(r.code, 3, r.stderr);
    await must('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', join(dir, 'out.vhd'), join(dir, 'vhd.raw')]);
    t.true((await readFile(join(dir, 'vhd.raw'))).equals(expected));

    // --verify-first: the damage is found before the device is touched
    const before = randomBytes(6 * MiB);
    await withNewLoop(join(dir, 'first.img'), before, async (dev) => {
      r = await restore(dev, '--verify-first');
      t.is(r.code, 1);
      t.regex(r.stderr, new RegExp(`^ferry: object disks/${id}/blocks/1 cannot be read \\(.*\\), so point 1 of m/vol cannot be read whole; nothing was written`));
      t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    });
    t.true((await readFile(join(dir, 'first.img'))).equals(before), 'the device is untouched');

    await withNewLoop(join(dir, 'dev.img'), randomBytes(6 * MiB), async (dev) => {
      r = await restore(dev);
      t.is(r.code, 1);
      t.true(r.stderr.includes(`; ${dev} holds the volume only up to there (--salvage`), r.stderr);
      r = await restore(dev, '--salvage');
      t.is(r.code, 3, r.stderr);
    });
    t.true((await readFile(join(dir, 'dev.img'))).equals(expected), 'the device gets zeros there too, not its old bytes');
  });
});
