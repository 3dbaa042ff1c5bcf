// Seed inputs that are the seed's own places: a disk folder inside the
// source is not backed up, a disk inside the vault and a read-only disk are
// refused up front with one line; sizes under 1 KiB print as whole bytes.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatSize } from '../format/errors.js';
import { ferry, withTmp } from './helpers/exec.js';

const env = { FERRY_PASSPHRASE: 'seed inputs passphrase, long enough' };

async function ok(args: string[]): Promise<string> {
  const r = await ferry(args, { env });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout.toString();
}

test('a seed disk inside the source (and the vault) is not part of the backup', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    const vault = join(src, 'vault');
    await mkdir(src);
    await writeFile(join(src, 'a.txt'), 'a');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const disk = join(src, 'disk1');
    await ok(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk', disk, src]);
    await ok(['import', '--vault', vault, disk]);
    const to = join(dir, 'out');
    await ok(['restore', '--vault', vault, '--item', 'x', '--machine', 'm', '--to', to]);
    t.deepEqual((await readdir(join(to, src))).sort(), ['a.txt']);
  });
});

test('a seed disk inside the vault, or on a read-only mount, is refused before anything is written', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    await mkdir(join(dir, 'src'));
    let r = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', join(vault, 'd'), join(dir, 'src')], { env });
    t.is(r.code, 2);
    t.is(r.stderr, `ferry: --disk ${join(vault, 'd')} is inside the vault ${vault}: a seed disk must be a folder of its own, outside any vault; name another folder\n`);
    const ro = join(dir, 'ro');
    await mkdir(join(ro));
    t.is(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', ro]).status, 0);
    try {
      await mkdir(join(ro, 'd'));
      t.is(spawnSync('mount', ['-o', 'remount,ro', ro]).status, 0);
      r = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', join(ro, 'd'), join(dir, 'src')], { env });
      t.is(r.code, 1);
      t.regex(r.stderr, /^ferry: seed disk .*\/ro\/d cannot be used: its file system is read-only; mount it read-write\n$/);
    } finally {
      spawnSync('umount', ['-l', ro]);
    }
  });
});

test('formatSize prints whole bytes under 1 KiB', (t) => {
  t.is(formatSize(24.896265560165975), '25 B');
  t.is(formatSize(0), '0 B');
  t.is(formatSize(1536), '1.5 KiB');
});

test('a seed of relative paths records them absolute (points, item definition), as its manifests do', async (t) => {
  await withTmp(async (dir) => {
    await mkdir(join(dir, 'src', 'sub'), { recursive: true });
    await writeFile(join(dir, 'src', 'sub', 'f'), 'f');
    const vault = join(dir, 'vault');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const r = await ferry(['seed', '--vault', 'vault', '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk', 'd1', 'src', 'src/sub/'], { env, cwd: dir });
    t.is(r.code, 0, r.stderr);
    await ok(['import', '--vault', vault, join(dir, 'd1')]);
    const points = JSON.parse(await ok(['points', '--json', '--vault', vault]));
    t.deepEqual(points[0].sources, [join(dir, 'src'), join(dir, 'src', 'sub') + '/']);
  });
});
