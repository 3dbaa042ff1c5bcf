// A full disk while writing a VHD or an image: one line naming the file and
// what to do, exit 1, nothing left at the target (or, for a merge, how to
// finish it); --json gives one error document.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ferry, withTmp } from './helpers/exec.js';
import { withTmpfs } from './helpers/mounts.js';

const isRoot = process.getuid?.() === 0;
const rootTest = isRoot ? test.serial : test.skip;

rootTest('vhd create and export on a full disk name the file and the next step', async (t) => {
  await withTmp(async (dir) => {
    const raw = join(dir, 'a.raw');
    await writeFile(raw, randomBytes(24 * 1024 * 1024));
    const vhd = join(dir, 'a.vhd');
    t.is((await ferry(['vhd', 'create', vhd, '--from', raw])).code, 0);
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    await withTmpfs(mnt, '8m', async () => {
      const v = join(dir, 'V');
      const env = { FERRY_PASSPHRASE: 'disk full passphrase, long enough' };
      t.is((await ferry(['init', v, '--kdf-log-n', '12'], { env })).code, 0);
      const id = (await ferry(['vhd', 'import', '--vault', v, vhd], { env })).stdout.toString().trim();
      for (const [args, to] of [
        [['vhd', 'export', '--vault', v, '--disk', id, '--to', join(mnt, 'e.vhd')], join(mnt, 'e.vhd')],
        [['vhd', 'create', join(mnt, 'b.vhd'), '--from', raw], join(mnt, 'b.vhd')],
        [['vhd', 'export', vhd, '--type', 'raw', '--to', join(mnt, 'c.raw')], join(mnt, 'c.raw')],
        [['vhd', 'export', vhd, '--type', 'fixed', '--to', join(mnt, 'd.vhd')], join(mnt, 'd.vhd')],
      ] as const) {
        const r = await ferry([...args, '--json'], { env });
        t.is(r.code, 1, r.stderr);
        t.is(r.stderr, `ferry: no room left on the disk of ${to}: free space there or write it elsewhere; nothing was written at ${to}\n`);
        t.is(JSON.parse(r.stdout.toString()).error.code, 'DISK_FULL');
        t.deepEqual(await readdir(mnt), [], 'no partial file, no temporary');
      }
    });
  });
});

rootTest('a system-state seed with a full TMPDIR names the folder and TMPDIR', async (t) => {
  await withTmp(async (dir) => {
    const env = { FERRY_PASSPHRASE: 'disk full passphrase, long enough' };
    const v = join(dir, 'V');
    t.is((await ferry(['init', v, '--kdf-log-n', '12'], { env })).code, 0);
    const mnt = join(dir, 'tmp');
    await mkdir(mnt);
    await withTmpfs(mnt, '64k', async () => {
      const r = await ferry(['seed', '--vault', v, '--item', 'ss', '--kind', 'system-state', '--disk', join(dir, 'd1')], { env: { ...env, TMPDIR: mnt } });
      t.is(r.code, 1, r.stderr);
      t.is(r.stderr, `ferry: no room left in ${mnt} for the command outputs (package lists, disk layout) ferry collects there; free some space there or point TMPDIR at a folder with more room, then run the same command again\n`);
      t.deepEqual(await readdir(mnt), []);
    });
  });
});
