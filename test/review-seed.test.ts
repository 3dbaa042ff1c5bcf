// Review of seed / import / volume and archive restores (2026-12-06): each
// test fails because of a bug found in review and passes once it is fixed.
// Several need root (mknod, losetup, mount): they are skipped without it.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ferry, ferryOk, must, run, withTmp } from './helpers/exec.js';
import { withLoop, withMount, withTmpfs } from './helpers/mounts.js';

const PASS = 'review seed passphrase, long enough';
const env = { FERRY_PASSPHRASE: PASS };
const ok = (args: string[]) => ferryOk(args, env);
const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
const rootTest = isRoot ? test.serial : test.skip;

async function initVault(dir: string): Promise<string> {
  const v = join(dir, 'vault');
  await ok(['init', v, '--kdf-log-n', '12']);
  return v;
}

/** Seeds `source` as item `item` onto one disk and imports it. */
async function seedAndImport(dir: string, vault: string, item: string, kind: 'files' | 'volume', source: string): Promise<void> {
  const disk = join(dir, `disk-${item}`);
  await ok(['seed', '--vault', vault, '--item', item, '--kind', kind, '--machine', 'm', '--disk', disk, source]);
  await ok(['import', '--vault', vault, disk]);
}

/** A small volume image with data in it (random at the start, zeros after). */
async function volumeImage(path: string, size = 8 * MiB): Promise<Buffer> {
  const b = Buffer.alloc(size);
  randomBytes(MiB).copy(b, 0);
  randomBytes(64 * 1024).copy(b, 5 * MiB);
  await writeFile(path, b);
  return b;
}

/** A folder src holding one small file, seeded and imported as a files item. */
async function smallTree(dir: string, vault: string, item: string): Promise<string> {
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'a'), 'a\n');
  await seedAndImport(dir, vault, item, 'files', src);
  return src;
}

rootTest('restore --format vhd --to a block device does not replace the device node with a regular file', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const img = join(dir, 'vol.img');
    await volumeImage(img);
    await seedAndImport(dir, vault, 'vol', 'volume', img);
    // A block device node (a loop minor nobody uses: opening it fails, replacing it does not).
    const node = join(dir, 'blockdev');
    await must('mknod', [node, 'b', '7', '250']);
    await ferry(['restore', '--vault', vault, '--item', 'vol', '--machine', 'm', '--format', 'vhd', '--to', node], { env });
    // Either refused or written to the device: the device node must still be there.
    t.true((await lstat(node)).isBlockDevice(), 'the block device node was replaced by a regular file');
  });
});

rootTest('restore --format raw onto a device smaller than the volume is refused before anything is written', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const img = join(dir, 'vol.img');
    await volumeImage(img, 8 * MiB);
    await seedAndImport(dir, vault, 'vol', 'volume', img);
    const backing = join(dir, 'small.img');
    const before = Buffer.alloc(4 * MiB, 0x5a);
    await writeFile(backing, before);
    await withLoop(backing, async (dev) => {
      const r = await ferry(['restore', '--vault', vault, '--item', 'vol', '--machine', 'm', '--to', dev], { env });
      t.not(r.code, 0);
      t.regex(r.stderr, new RegExp(dev.replace(/\//g, '\\/')), 'the error names the device');
      t.regex(r.stderr, /^ferry: [^\n]*\n$/, 'one line');
    });
    t.true((await readFile(backing)).equals(before), 'the smaller device was written over before the restore failed');
  });
});

rootTest('restore --format raw onto a mounted device is refused', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const img = join(dir, 'vol.img');
    await volumeImage(img, 8 * MiB);
    await seedAndImport(dir, vault, 'vol', 'volume', img);
    const backing = join(dir, 'mounted.img');
    await must('truncate', ['-s', '16M', backing]);
    await must('mkfs.ext4', ['-q', '-F', backing]);
    await withLoop(backing, async (dev) => {
      await withMount([dev], join(dir, 'mnt'), async (mnt) => {
        await writeFile(join(mnt, 'precious'), 'in use\n');
        const r = await ferry(['restore', '--vault', vault, '--item', 'vol', '--machine', 'm', '--to', dev], { env });
        t.not(r.code, 0, 'a restore over a mounted file system went ahead');
      });
    });
  });
});

rootTest('a tar restore that runs out of room leaves no cut-short archive under the name given', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 12; i++) await writeFile(join(src, `f${i}`), randomBytes(150 * 1024));
    await seedAndImport(dir, vault, 'tree', 'files', src);
    // Room for the staging copy (1.8 MiB) but not for it and the archive too.
    await withTmpfs(join(dir, 'tmpfs'), '3m', async (mnt) => {
      const to = join(mnt, 'tree.tar');
      const r = await ferry(['restore', '--vault', vault, '--item', 'tree', '--machine', 'm', '--format', 'tar', '--to', to], { env });
      if (r.code === 0) {
        // Staged elsewhere: then the archive is whole.
        const list = (await must('tar', ['-tf', to])).toString();
        t.is(list.split('\n').filter((l) => /\/f[0-9]+$/.test(l)).length, 12);
        return;
      }
      t.is(r.code, 1, r.stderr);
      t.false(existsSync(to), 'a truncated archive is left at --to');
      t.deepEqual(await readdir(mnt), [], 'nothing is left behind on the target');
    });
  });
});

test('a tar restore to a file that exists keeps it under the default --if-exists copy', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = await smallTree(dir, vault, 'tree');
    const to = join(dir, 'archive.tar');
    await writeFile(to, 'an archive the admin keeps\n');
    await ferry(['restore', '--vault', vault, '--item', 'tree', '--machine', 'm', '--format', 'tar', '--to', to], { env });
    t.is(await readFile(to, 'utf8'), 'an archive the admin keeps\n', '--if-exists copy (the default) replaced an existing file');
  });
});

test('a volume restore to a file that exists keeps it under the default --if-exists copy', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const img = join(dir, 'vol.img');
    await volumeImage(img, 2 * MiB);
    await seedAndImport(dir, vault, 'vol', 'volume', img);
    const to = join(dir, 'other.img');
    await writeFile(to, 'another image the admin keeps\n');
    await ferry(['restore', '--vault', vault, '--item', 'vol', '--machine', 'm', '--to', to], { env });
    t.is(await readFile(to, 'utf8'), 'another image the admin keeps\n', '--if-exists copy (the default) replaced an existing file');
  });
});

test('a volume seed of an empty or too large image fails before it claims the disk, naming the source', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const disk = join(dir, 'disk');
    for (const [name, size] of [['empty.img', '0'], ['huge.img', '3T']] as const) {
      const bad = join(dir, name);
      await must('truncate', ['-s', size, bad]);
      const r = await ferry(['seed', '--vault', vault, '--item', 'vol', '--kind', 'volume', '--machine', 'm', '--disk', disk, bad], { env });
      t.not(r.code, 0);
      t.regex(r.stderr, new RegExp(name.replace('.', '\\.')), `the error names the source (${name})`);
    }
    // The disk is still usable for a good seed.
    const img = join(dir, 'vol.img');
    await volumeImage(img, 2 * MiB);
    const r = await ferry(['seed', '--vault', vault, '--item', 'vol', '--kind', 'volume', '--machine', 'm', '--disk', disk, img], { env });
    t.is(r.code, 0, `the disk was left unusable by the failed seed: ${r.stderr}`);
  });
});

test('a volume image whose size is not a multiple of 512 restores to its own size', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const img = join(dir, 'odd.img');
    const data = randomBytes(1000 + 3 * 512);
    await writeFile(img, data);
    await seedAndImport(dir, vault, 'odd', 'volume', img);
    const out = join(dir, 'out.img');
    await ok(['restore', '--vault', vault, '--item', 'odd', '--machine', 'm', '--to', out]);
    t.is((await stat(out)).size, data.length);
    t.true((await readFile(out)).equals(data));
  });
});

test('restore --path that matches nothing in the point is not reported as a success', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = await smallTree(dir, vault, 'tree');
    const r = await ferry(['restore', '--vault', vault, '--item', 'tree', '--machine', 'm', '--path', join(dir, 'no-such-path'), '--to', join(dir, 'out')], { env });
    t.not(r.code, 0, `exit 0 for a --path that matches nothing: ${r.stdout}`);
    t.regex(r.stderr, /no-such-path/);
  });
});

rootTest('a volume restore that fills the target names the target in its one-line error', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const img = join(dir, 'vol.img');
    const b = Buffer.alloc(8 * MiB);
    randomBytes(6 * MiB).copy(b);
    await writeFile(img, b);
    await seedAndImport(dir, vault, 'vol', 'volume', img);
    await withTmpfs(join(dir, 'tmpfs'), '2m', async (mnt) => {
      const to = join(mnt, 'vol.img');
      const r = await ferry(['restore', '--vault', vault, '--item', 'vol', '--machine', 'm', '--to', to], { env });
      t.is(r.code, 1);
      t.regex(r.stderr, /^ferry: [^\n]*\n$/);
      t.regex(r.stderr, /vol\.img/, `the error does not name the target: ${r.stderr}`);
      t.deepEqual(await readdir(mnt), []);
    });
  });
});

test('a seed of an item the vault holds as another kind is refused before anything is written to the disks', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = await smallTree(dir, vault, 'data');
    const img = join(dir, 'vol.img');
    await volumeImage(img, 2 * MiB);
    const disk = join(dir, 'disk-vol');
    const r = await ferry(['seed', '--vault', vault, '--item', 'data', '--kind', 'volume', '--machine', 'm', '--disk', disk, img], { env });
    // Today the seed succeeds; the disks are shipped and only the import, after
    // copying every object into the vault, says "item m/data exists as kind files".
    t.not(r.code, 0, 'the seed of another kind under an existing item name was written');
    t.regex(r.stderr, /data/);
    t.false(existsSync(join(disk, 'FERRY-SEED.json')));
  });
});

test('a seed whose only source does not exist fails instead of writing a complete, empty seed', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const disk = join(dir, 'disk');
    const r = await ferry(['seed', '--vault', vault, '--item', 'typo', '--kind', 'files', '--machine', 'm', '--disk', disk, join(dir, 'no-such-source')], { env });
    t.not(r.code, 0);
    t.not(r.code, 3, 'exit 3 ("done with warnings") for a seed that backed up nothing');
    // The disk is not left holding a complete seed that a corrected run then refuses.
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'a'), 'a\n');
    const again = await ferry(['seed', '--vault', vault, '--item', 'typo', '--kind', 'files', '--machine', 'm', '--disk', disk, src], { env });
    t.is(again.code, 0, again.stderr);
  });
});

test.serial('an import stopped with SIGKILL and run again leaves no temporaries in the vault', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 6; i++) await writeFile(join(src, `r${i}`), randomBytes(16 * MiB));
    const disk = join(dir, 'disk');
    await ok(['seed', '--vault', vault, '--item', 'big', '--kind', 'files', '--machine', 'm', '--disk', disk, src]);
    const temps = async (): Promise<string[]> => {
      const out = await run('find', [vault, '-name', '.ferry-tmp-*']);
      return out.stdout.toString().split('\n').filter(Boolean);
    };
    const { spawn } = await import('node:child_process');
    const { FERRY } = await import('./helpers/exec.js');
    for (let attempt = 0; attempt < 10 && (await temps()).length === 0; attempt++) {
      const child = spawn(process.execPath, [FERRY, 'import', '--vault', vault, disk], { env: { ...process.env, ...env }, stdio: 'ignore' });
      const done = new Promise((r) => child.on('close', r));
      for (let i = 0; i < 4000 && child.exitCode === null; i++) {
        if ((await temps()).length > 0) break;
        await new Promise((r) => setTimeout(r, 1));
      }
      child.kill('SIGKILL');
      await done;
    }
    t.true((await temps()).length > 0, 'the test could not stop an import while it wrote an object');
    await ok(['import', '--vault', vault, disk]);
    t.deepEqual(await temps(), [], 'temporaries of the stopped import stay in the vault for good');
  });
});

/** A files item of one small file, seeded and imported: enough for tar restores. */


test('restore --format tar to a file name with a colon (a time in it) writes a local archive', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    await smallTree(dir, vault, 'tree');
    // Relative, as typed in a shell: a colon before any slash.
    const to = 'tree-2026-12-06T10:00.tar';
    const r = await ferry(['restore', '--vault', vault, '--item', 'tree', '--machine', 'm', '--format', 'tar', '--to', to], { env, cwd: dir });
    // tar takes "host:file" for a remote archive unless told --force-local.
    t.is(r.code, 0, r.stderr);
    const list = (await must('tar', ['--force-local', '-tf', join(dir, to)])).toString();
    t.regex(list, /\/a\n/);
  });
});

test('restore --format tar --to - either writes the archive to stdout or refuses', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    await smallTree(dir, vault, 'tree');
    const r = await ferry(['restore', '--vault', vault, '--item', 'tree', '--machine', 'm', '--format', 'tar', '--to', '-', '--quiet'], { env, cwd: dir });
    if (r.code !== 0) {
      t.pass('refused');
      return;
    }
    // Exit 0 says the archive was written: it must be somewhere.
    t.true(r.stdout.length >= 1024, `exit 0, yet stdout holds ${r.stdout.length} bytes and no archive was written anywhere`);
    const list = (await run('tar', ['-tf', '-'], { input: r.stdout })).stdout.toString();
    t.regex(list, /\/a\n/);
  });
});

test('the import progress bar on a terminal counts bytes or objects as what they are', async (t) => {
  if ((await run('sh', ['-c', 'command -v script'])).code !== 0) {
    t.pass('no script(1) to give ferry a terminal');
    return;
  }
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 4; i++) await writeFile(join(src, `r${i}`), randomBytes(6 * MiB));
    const disk = join(dir, 'disk');
    await ok(['seed', '--vault', vault, '--item', 'big', '--kind', 'files', '--machine', 'm', '--disk', disk, src]);
    const objects = JSON.parse(await readFile(join(disk, 'FERRY-SEED.json'), 'utf8')).objects.length as number;
    const { FERRY } = await import('./helpers/exec.js');
    const cmd = `'${process.execPath}' '${FERRY}' import --vault '${vault}' '${disk}'`;
    const r = await run('script', ['-qec', cmd, '/dev/null'], { env });
    const out = r.stdout.toString();
    t.is(r.code, 0, out);
    // Today: "import [███░░] 37% 36 B/97 B 66.29834254143645 B/s": objects shown as bytes, a raw float rate.
    t.notRegex(out, new RegExp(`/${objects} B `), `the object count (${objects}) is shown as a size in bytes`);
    t.notRegex(out, /\d\.\d{4,} B\/s/, 'a rate printed as a raw float');
  });
});

/** Starts a ferry command, sends SIGINT once `ready()` holds (or it ends), and waits for it. */
async function interruptWhen(args: string[], ready: () => Promise<boolean>): Promise<number | null> {
  const { spawn } = await import('node:child_process');
  const { FERRY } = await import('./helpers/exec.js');
  const child = spawn(process.execPath, [FERRY, ...args], { env: { ...process.env, ...env }, stdio: 'ignore' });
  const done = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  for (let i = 0; i < 20000 && child.exitCode === null; i++) {
    if (await ready()) break;
    await new Promise((r) => setTimeout(r, 1));
  }
  child.kill('SIGINT');
  return done;
}

test.serial('a volume restore stopped with Ctrl-C and run again leaves no temporary beside the image', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const img = join(dir, 'vol.img');
    await writeFile(img, randomBytes(96 * MiB));
    await seedAndImport(dir, vault, 'vol', 'volume', img);
    const outDir = join(dir, 'out');
    await mkdir(outDir);
    const to = join(outDir, 'vol.img');
    const args = ['restore', '--vault', vault, '--item', 'vol', '--machine', 'm', '--to', to];
    const code = await interruptWhen(args, async () => (await readdir(outDir)).some((n) => n.includes('.ferry-tmp-')));
    t.is(code, 130, 'the restore ended before it could be stopped');
    await ok(args);
    t.deepEqual(await readdir(outDir), ['vol.img'], 'the stopped run left its temporary image for good');
  });
});

test.serial('a tar restore stopped with Ctrl-C and run again leaves no staging folder beside the archive', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 400; i++) await writeFile(join(src, `f${i}`), randomBytes(64 * 1024));
    await seedAndImport(dir, vault, 'tree', 'files', src);
    const outDir = join(dir, 'out');
    await mkdir(outDir);
    const to = join(outDir, 'tree.tar');
    const args = ['restore', '--vault', vault, '--item', 'tree', '--machine', 'm', '--format', 'tar', '--to', to];
    const code = await interruptWhen(args, async () => (await readdir(outDir)).some((n) => n.startsWith('.ferry-restore-')));
    t.is(code, 130, 'the restore ended before it could be stopped');
    await ok(args);
    t.deepEqual(await readdir(outDir), ['tree.tar'], 'the stopped run left its staging copy for good');
  });
});

rootTest('ferry init takes a freshly made ext4 file system (only lost+found in it)', async (t) => {
  await withTmp(async (dir) => {
    const img = join(dir, 'fs.img');
    await must('truncate', ['-s', '16M', img]);
    await must('mkfs.ext4', ['-q', '-F', img]);
    await withMount(['-o', 'loop', img], join(dir, 'mnt'), async (mnt) => {
      const r = await ferry(['init', mnt, '--kdf-log-n', '12'], { env });
      t.is(r.code, 0, r.stderr);
      t.true(existsSync(join(mnt, 'vault.json')));
    });
  });
});

test('ferry points lists the undamaged points when one point object is damaged, and names the damaged one', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const a = join(dir, 'a');
    await mkdir(a);
    await writeFile(join(a, 'x'), 'x\n');
    await seedAndImport(dir, vault, 'good', 'files', a);
    await seedAndImport(dir, vault, 'bad', 'files', a);
    const p = join(vault, 'items', 'm', 'bad', 'points', '00000001');
    const b = await readFile(p);
    b[b.length - 5] ^= 0xff;
    await writeFile(p, b);
    const r = await ferry(['points', '--vault', vault], { env });
    // Today: exit 1 and nothing listed at all.
    t.regex(r.stdout.toString(), /\tm\tgood\tfiles\tseed\t/, `the undamaged point is not listed: ${r.stderr}`);
    t.regex(r.stderr, /items\/m\/bad\/points\/00000001/);
    t.not(r.code, 0);
  });
});

test('a tar restore with entries that could not be restored does not put ferry\'s own marker into the archive', async (t) => {
  await withTmp(async (dir) => {
    const vault = await initVault(dir);
    const src = join(dir, 'src');
    await mkdir(src);
    for (let i = 0; i < 4; i++) await writeFile(join(src, `r${i}`), randomBytes(3 * MiB));
    await seedAndImport(dir, vault, 'tree', 'files', src);
    // Damage one data block in the vault (not the first, which holds the superblock, nor the last, the catalog's).
    const disks = await readdir(join(vault, 'disks'));
    t.is(disks.length, 1);
    const blocks = (await readdir(join(vault, 'disks', disks[0], 'blocks'))).map(Number).sort((a, b) => a - b);
    const victim = join(vault, 'disks', disks[0], 'blocks', String(blocks[2]));
    const b = await readFile(victim);
    b[300] ^= 0xff;
    await writeFile(victim, b);
    const to = join(dir, 'tree.tar');
    const r = await ferry(['restore', '--vault', vault, '--item', 'tree', '--machine', 'm', '--format', 'tar', '--to', to], { env });
    t.is(r.code, 3, r.stderr);
    const list = (await must('tar', ['-tf', to])).toString();
    t.notRegex(list, /\.ferry-restore-unfinished/, 'the archive carries the restore marker of the staging folder');
    // Nor does the warning send the admin to a staging folder that no longer exists.
    t.notRegex(r.stderr, /\.ferry-restore-[A-Za-z0-9]{6}\/\.ferry-restore-unfinished stays/);
  });
});
