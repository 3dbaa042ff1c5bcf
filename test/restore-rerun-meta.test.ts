// A restore into folders that already exist, killed after a file was renamed
// into place and before its metadata, then run again: the file found with the
// backup's bytes gets its times and xattrs (it used to keep the restore's
// time and no xattrs, and the rerun said "already equal").
import test from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FERRY, ferry, must, withTmp } from './helpers/exec.js';

const env = { FERRY_PASSPHRASE: 'rerun metadata passphrase, long enough' };

async function ok(args: string[]): Promise<void> {
  const r = await ferry(args, { env });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
}

/** Runs a restore and kills it (-9) as soon as `watch` exists; false when it finished first. */
function restoreKilledAt(args: string[], watch: string, stateDir: string): Promise<boolean> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [FERRY, ...args], { env: { ...process.env, ...env, FERRY_STATE_DIR: stateDir }, stdio: 'ignore' });
    let killed = false;
    const poll = setInterval(() => {
      stat(watch).then(() => {
        if (!killed) {
          killed = true;
          p.kill('SIGKILL');
        }
      }, () => {});
    }, 1);
    p.on('exit', () => {
      clearInterval(poll);
      resolve(killed);
    });
  });
}

test('a file placed by a killed restore into an existing folder gets its times and xattrs from the rerun', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'sub'), { recursive: true });
    // large files: the restore puts each in place long before it sets the metadata that needs a name
    const names = ['a.bin', 'b.bin', 'c.bin', 'sub/d.bin'];
    for (const n of names) {
      await writeFile(join(src, n), randomBytes(12 * 1024 * 1024));
      await must('setfattr', ['-n', 'user.k', '-v', `v-${n}`, join(src, n)]);
      await must('touch', ['-d', '@1577836800.123456789', join(src, n)]);
    }
    const vault = join(dir, 'vault');
    const disk = join(dir, 'disk');
    await ok(['init', vault, '--kdf-log-n', '12']);
    await ok(['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk', disk, src]);
    await ok(['import', '--vault', vault, disk]);
    const stateDir = join(dir, 'state');
    let tried = 0;
    for (const [label, to, first] of [
      ['existing --to', join(dir, 'kr'), (to: string) => join(to, src, 'a.bin')],
      ['existing --to, a folder it made', join(dir, 'kr2'), (to: string) => join(to, src, 'sub', 'd.bin')],
    ] as const) {
      await mkdir(to);
      await writeFile(join(to, 'keep'), 'the user\'s own');
      // the folders down to src exist already: files go into folders the restore did not make
      if (label === 'existing --to') await mkdir(join(to, src), { recursive: true });
      const args = ['restore', '--vault', vault, '--item', 'x', '--machine', 'm', '--to', to];
      if (!(await restoreKilledAt(args, first(to), stateDir))) continue; // finished before the kill: nothing to show
      tried++;
      const r = await ferry(args, { env: { ...env, FERRY_STATE_DIR: stateDir } });
      t.is(r.code, 0, `${label}: ${r.stderr}`);
      for (const n of names) {
        const got = await stat(join(to, src, n), { bigint: true });
        t.is(got.mtimeNs, 1577836800123456789n, `${label}: ${n} mtime`);
        const x = await must('getfattr', ['--only-values', '-n', 'user.k', join(to, src, n)]);
        t.is(x.toString(), `v-${n}`, `${label}: ${n} xattr`);
      }
    }
    t.true(tried > 0, 'no run was killed in time');
  });
});
