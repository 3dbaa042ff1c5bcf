// One `vhd merge` at a time per child and per parent: a second run while one
// holds the lock is refused (exit 11) and writes nothing; a lock its process
// left when it died is broken.
import test from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '../format/errors.js';
import { HOST_TAG, lockFile } from '../format/fsio.js';
import { FERRY, ferry, fileHash, must, withTmp } from './helpers/exec.js';

const MiB = 1024 * 1024;

async function chain(dir: string): Promise<{ base: string; child: string; expected: Buffer }> {
  const raw = join(dir, 'a.raw');
  await writeFile(raw, randomBytes(40 * MiB));
  const base = join(dir, 'base.vhd');
  const child = join(dir, 'child.vhd');
  await must(FERRY, ['vhd', 'create', base, '--from', raw]);
  await must(FERRY, ['vhd', 'create', child, '--parent', base]);
  for (let i = 0; i < 20; i++) await must('qemu-io', ['-f', 'vpc', '-c', `write -P ${i + 1} ${i * 2 + 1}M 700k`, child]);
  const expected = (await ferry(['vhd', 'cat', child])).stdout;
  return { base, child, expected };
}

test('a merge while another holds the lock of its child or parent exits 11 and leaves the parent as it was', async (t) => {
  await withTmp(async (dir) => {
    const c = await chain(dir);
    const before = await fileHash(c.base);
    for (const locked of [`${c.child}.ferry-lock`, `${c.base}.ferry-lock`]) {
      // held by a live process of this host: the test runner's parent
      await writeFile(locked, JSON.stringify({ host: HOST_TAG, hostname: 'h', pid: process.ppid, task: 'vhd merge of x', started: '2026-01-01T00:00:00Z' }));
      const r = await ferry(['vhd', 'merge', c.child]);
      t.is(r.code, 11, r.stderr);
      t.regex(r.stderr, new RegExp(`ferry-lock: process ${process.ppid} holds this lock \\(vhd merge of x, since 2026-01-01T00:00:00Z\\); wait for it to finish`));
      t.is(await fileHash(c.base), before);
      // left by a process that is gone: broken, and the merge goes on
      await writeFile(locked, JSON.stringify({ host: HOST_TAG, pid: 4194305, task: 'vhd merge of x' }));
    }
    // a merge that died holding the lock: check names it and says how to finish
    await writeFile(`${c.base}.ferry-lock`, JSON.stringify({ host: HOST_TAG, pid: 4194305, task: `vhd merge of ${c.child} into it` }));
    const check = await ferry(['vhd', 'check', c.base]);
    t.is(check.code, 1);
    t.regex(check.stdout.toString(), new RegExp(`error: VHD_MERGE_UNFINISHED: .*a merge of ${c.child} was interrupted .*run ferry vhd merge ${c.child} again to finish it`));
    const r = await ferry(['vhd', 'merge', c.child]);
    t.is(r.code, 0, r.stderr);
    t.true((await ferry(['vhd', 'cat', c.base])).stdout.equals(c.expected));
    t.is((await ferry(['vhd', 'check', c.base])).code, 0);
    t.deepEqual((await readdir(dir)).filter((n) => n.includes('ferry-')), [], 'no lock or journal left');
  });
});

test('two merges of one child started together: one merges, the other is refused or finds the work done; the parent reads as the chain did', async (t) => {
  await withTmp(async (dir) => {
    const c = await chain(dir);
    const run = () =>
      new Promise<number>((resolve) => {
        const p = spawn(process.execPath, [FERRY, 'vhd', 'merge', c.child], { stdio: 'ignore' });
        p.on('exit', (code) => resolve(code ?? -1));
      });
    const codes = await Promise.all([run(), run(), run()]);
    t.true(codes.every((x) => x === 0 || x === 11), codes.join(' '));
    t.true(codes.includes(0));
    t.true((await ferry(['vhd', 'cat', c.base])).stdout.equals(c.expected));
    t.is((await ferry(['vhd', 'check', c.base])).code, 0);
  });
});

test('lockFile: taken once, refused while held, released for the next', async (t) => {
  await withTmp(async (dir) => {
    const path = join(dir, 'x.ferry-lock');
    const release = lockFile(path, 'task one');
    t.like(JSON.parse(await readFile(path, 'utf8')), { pid: process.pid, task: 'task one', host: HOST_TAG });
    const err = t.throws(() => lockFile(path, 'task two')) as FerryError;
    t.is(err.code, 'LOCKED');
    t.is(err.exitCode, 11);
    release();
    const again = lockFile(path, 'task two');
    t.like(JSON.parse(await readFile(path, 'utf8')), { task: 'task two' });
    again();
    t.deepEqual(await readdir(dir), []);
    // another host's lock is never broken: that host's processes cannot be seen from here
    await writeFile(path, JSON.stringify({ host: 'ffffffff', hostname: 'elsewhere', pid: 4194305, task: 'vhd merge of y' }));
    const foreign = t.throws(() => lockFile(path, 'task three')) as FerryError;
    t.regex(foreign.message, /process 4194305 on elsewhere holds this lock .*remove the lock file if that process is gone/);
  });
});
