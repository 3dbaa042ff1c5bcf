// From an administrator's walk through system-state seeds and the error
// paths of seed/import/restore (2026-12-07, second pass). Each test failed
// on the code as reviewed.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, readdir, rename, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HOST_TAG } from '../format/fsio.js';
import { FERRY, ferry, withTmp } from './helpers/exec.js';

const env = { FERRY_PASSPHRASE: 'dec07b review passphrase, long enough' };
const staged = async (tmp: string) => (await readdir(tmp)).filter((n) => n.startsWith('ferry-system-state-'));

test.serial('an interrupted system-state seed leaves no staging folder (the command outputs) in TMPDIR', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    const tmp = join(dir, 'tmp');
    await mkdir(tmp);
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    const child = spawn(process.execPath, [FERRY, 'seed', '--vault', vault, '--item', 'ss', '--kind', 'system-state', '--disk', join(dir, 'd1')], {
      env: { ...process.env, ...env, TMPDIR: tmp },
      stdio: 'ignore',
    });
    const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    // Ctrl-C once the collection has begun (its staging folder is there)
    const t0 = Date.now();
    while ((await staged(tmp)).length === 0 && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 10));
    t.true((await staged(tmp)).length > 0, 'the collection started');
    child.kill('SIGINT');
    const code = await done;
    t.is(code, 130);
    t.deepEqual(await staged(tmp), [], 'the staging folder goes with the interrupted seed');
  });
});

test.serial('a staging folder a killed system-state seed left is removed by the next seed', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    const tmp = join(dir, 'tmp');
    await mkdir(tmp);
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    // what a kill -9 leaves: the folder of a process that is gone, untouched for a while
    const gone = spawnSync('true').pid;
    const left = join(tmp, `ferry-system-state-${HOST_TAG}-${gone}-AbC123`);
    await mkdir(join(left, 'ferry-system-state'), { recursive: true });
    await writeFile(join(left, 'ferry-system-state', 'dpkg-selections.txt'), 'bash\tinstall\n');
    const old = new Date(Date.now() - 3600_000);
    await utimes(join(left, 'ferry-system-state', 'dpkg-selections.txt'), old, old);
    await utimes(join(left, 'ferry-system-state'), old, old);
    await utimes(left, old, old);
    const r = await ferry(['seed', '--vault', vault, '--item', 'ss', '--kind', 'system-state', '--disk', join(dir, 'd1')], { env: { ...env, TMPDIR: tmp } });
    t.is(r.code, 0, r.stderr);
    t.deepEqual(await staged(tmp), [], 'the leftover is swept, and this run leaves none');
  });
});

test('a restore whose disk head or catalog object is missing says that nothing was restored and what to do', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v');
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'a'), 'hello');
    for (const args of [
      ['init', vault, '--kdf-log-n', '12'],
      ['seed', '--vault', vault, '--item', 'it', '--kind', 'files', '--disk', join(dir, 'd1'), src],
      ['import', '--vault', vault, join(dir, 'd1')],
    ]) {
      const r = await ferry(args, { env });
      t.is(r.code, 0, `ferry ${args.join(' ')}: ${r.stderr}`);
    }
    // a small backup: its superblock and catalog are in block 0 of its one disk
    const [id] = await readdir(join(vault, 'disks'));
    // (and the disk's head, read before it)
    for (const name of ['blocks/0', 'head']) {
      const object = join(vault, 'disks', id, name);
      await rename(object, join(dir, 'away'));
      for (const to of [join(dir, 'out'), join(dir, 'out.tar')]) {
        const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', to], { env });
        t.is(r.code, 1, r.stderr);
        const lines = r.stderr.trim().split('\n');
        t.is(lines.length, 1, r.stderr);
        t.true(lines[0].includes(`disks/${id}/${name}`), r.stderr);
        t.regex(lines[0], /nothing was restored/, 'says what became of the restore');
        t.regex(lines[0], /ferry check --read-data|copy of the vault/, 'says what to do');
      }
      t.deepEqual((await readdir(dir)).sort(), ['away', 'd1', 'src', 'v'], 'nothing half-made at --to');
      await rename(join(dir, 'away'), object);
    }
    const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', join(dir, 'out')], { env });
    t.is(r.code, 0, r.stderr);
  });
});
