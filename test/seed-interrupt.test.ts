// A seed stopped with Ctrl-C lists what it wrote in its disks' manifests, so
// the next run keeps it (a kill -9 keeps what the last checkpoint listed).
import test from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FERRY, ferry, run, withTmp } from './helpers/exec.js';
import { withLoop } from './helpers/mounts.js';
import { compareTrees } from './helpers/tree.js';

const env = { FERRY_PASSPHRASE: 'a passphrase of sixteen+ characters' };

test('a seed interrupted by SIGINT keeps what it wrote: the next run reuses it and the restore is equal', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    const src = join(dir, 'src');
    const disk = join(dir, 'd1');
    await mkdir(src);
    // random (so sealing stays slow enough to be caught midway), far below a checkpoint's 256 MiB
    for (let i = 0; i < 12; i++) await writeFile(join(src, `f${i}`), randomBytes(8 * 1024 * 1024));
    t.is((await ferry(['init', vault, '--kdf-log-n', '12', '--quiet'], { env })).code, 0);
    const args = ['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', disk, src];

    const child = spawn(process.execPath, [FERRY, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    // stop it once a few blocks are on the disk
    const blocks = async () => {
      const top = join(disk, 'disks');
      if (!existsSync(top)) return 0;
      const [id] = await readdir(top);
      return id ? (await readdir(join(top, id, 'blocks')).catch(() => [])).filter((n) => /^\d+$/.test(n)).length : 0;
    };
    let done = false;
    exited.then(() => (done = true));
    while (!done && (await blocks()) < 6) await new Promise((r) => setTimeout(r, 20));
    t.false(done, 'the seed ended before it could be interrupted');
    child.kill('SIGINT');
    t.is(await exited, 130, stderr);

    const m = JSON.parse(await readFile(join(disk, 'FERRY-SEED.json'), 'utf8'));
    t.false(m.complete);
    t.true(m.objects.length >= 6, `${m.objects.length} objects listed`);

    const again = await ferry([...args, '--json'], { env });
    t.is(again.code, 0, again.stderr.toString());
    const r = JSON.parse(again.stdout.toString());
    t.true(r.resumed);
    t.true(r.kept >= m.objects.length - 1, `kept ${r.kept} of the ${m.objects.length} listed`);

    t.is((await ferry(['import', '--vault', vault, disk, '--quiet'], { env })).code, 0);
    const out = join(dir, 'out');
    const back = await ferry(['restore', '--vault', vault, '--item', 'x', '--to', out, '--quiet'], { env });
    t.is(back.code, 0, back.stderr.toString());
    t.deepEqual(await compareTrees(src, join(out, src)), []);
  });
});

test('a second seed onto a disk that a seed is writing is LOCKED (exit 11), and the first one ends as if alone', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    const src = join(dir, 'src');
    const disk = join(dir, 'd1');
    await mkdir(src);
    for (let i = 0; i < 10; i++) await writeFile(join(src, `f${i}`), randomBytes(8 * 1024 * 1024));
    t.is((await ferry(['init', vault, '--kdf-log-n', '12', '--quiet'], { env })).code, 0);
    const args = ['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', disk, src, '--quiet'];
    const first = spawn(process.execPath, [FERRY, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let firstErr = '';
    first.stderr.on('data', (d) => (firstErr += d));
    const firstDone = new Promise<number | null>((r) => first.on('exit', (code) => r(code)));
    while (!existsSync(join(disk, '.ferry-seed-lock'))) await new Promise((r) => setTimeout(r, 10));
    const second = await ferry(args, { env });
    t.is(second.code, 11, second.stderr.toString());
    t.regex(second.stderr.toString(), /\.ferry-seed-lock: process \d+ holds this lock \(ferry seed of [^)]*\/x/);
    t.is(await firstDone, 0, firstErr);
    t.false(existsSync(join(disk, '.ferry-seed-lock')), 'released');
    t.is((await ferry(['import', '--vault', vault, disk, '--quiet'], { env })).code, 0);
  });
});

const rootTest = process.getuid?.() === 0 ? test.serial : test.skip;

rootTest('a seed onto an exFAT disk (no hard links, as USB drives come) locks it, imports and restores equal', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 3; i++) await writeFile(join(src, `f${i}`), randomBytes(1024 * 1024 + i));
    t.is((await ferry(['init', vault, '--kdf-log-n', '12', '--quiet'], { env })).code, 0);
    const img = join(dir, 'usb.img');
    await writeFile(img, Buffer.alloc(0));
    await run('truncate', ['-s', '64M', img]);
    t.is((await run('mkfs.exfat', [img])).code, 0);
    const mnt = join(dir, 'usb');
    await mkdir(mnt);
    await withLoop(img, async (dev) => {
      t.is((await run('mount.exfat-fuse', [dev, mnt])).code, 0);
      try {
        t.not((await run('ln', [img, join(mnt, 'link-test')])).code, 0, 'exFAT has no hard links');
        const r = await ferry(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', mnt, src], { env });
        t.is(r.code, 0, r.stderr.toString());
        t.false(existsSync(join(mnt, '.ferry-seed-lock')));
        t.is((await ferry(['import', '--vault', vault, mnt, '--quiet'], { env })).code, 0);
      } finally {
        await run('fusermount', ['-u', mnt]);
      }
    });
    const out = join(dir, 'out');
    t.is((await ferry(['restore', '--vault', vault, '--item', 'x', '--to', out, '--quiet'], { env })).code, 0);
    t.deepEqual(await compareTrees(src, join(out, src)), []);
  });
});
