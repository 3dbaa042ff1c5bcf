// What a writer does once its vault lock was broken (--break-lock by another
// process) or on Ctrl-C: it stops before its next write, never writing over
// what the other did; interrupted, it releases the lock.
import test from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { FERRY, ferry, withTmp } from './helpers/exec.js';

const env = { FERRY_PASSPHRASE: 'import lock passphrase, long enough' };
const MiB = 1024 * 1024;

async function rawFile(path: string, mib: number): Promise<void> {
  const fh = await open(path, 'w');
  for (let i = 0; i < mib; i += 8) await fh.write(randomBytes(8 * MiB));
  await fh.close();
}

test('a vhd import whose lock another process broke stops before the head: exit 1, LOCK_LOST, no disk', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    for (const n of ['big', 'small']) {
      await rawFile(join(dir, `${n}.raw`), n === 'big' ? 384 : 8);
      t.is((await ferry(['vhd', 'create', join(dir, `${n}.vhd`), '--from', join(dir, `${n}.raw`)], { env })).code, 0);
    }
    const a = spawn(process.execPath, [FERRY, 'vhd', 'import', '--vault', vault, join(dir, 'big.vhd')], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    a.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number>((r) => a.on('exit', (code) => r(code ?? -1)));
    // stopped as soon as it holds the lock and has begun storing blocks
    for (;;) {
      const blocks = await readdir(join(vault, 'disks')).catch(() => []);
      if (blocks.length > 0) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    a.kill('SIGSTOP');
    try {
      const b = await ferry(['vhd', 'import', '--vault', vault, '--break-lock', join(dir, 'small.vhd')], { env });
      t.is(b.code, 0, b.stderr);
      t.regex(b.stderr, /break|broke/i);
    } finally {
      a.kill('SIGCONT');
    }
    const code = await exited;
    t.is(code, 1, stderr);
    t.regex(stderr, /the writer lock on .* was taken over by another process .*; stopping before writing more/);
    // only the small disk has a head: the big one never became a disk
    const heads = [];
    for (const id of await readdir(join(vault, 'disks'))) {
      if (await stat(join(vault, 'disks', id, 'head')).then(() => true, () => false)) heads.push(id);
    }
    t.is(heads.length, 1);
    const list = await ferry(['vhd', 'list', '--json', '--vault', vault], { env });
    t.is(JSON.parse(list.stdout.toString()).length, 1);
  });
});

test('Ctrl-C on a vhd import releases the writer lock: the next command finds none to break', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    await rawFile(join(dir, 'big.raw'), 384);
    t.is((await ferry(['vhd', 'create', join(dir, 'big.vhd'), '--from', join(dir, 'big.raw')], { env })).code, 0);
    const a = spawn(process.execPath, [FERRY, 'vhd', 'import', '--vault', vault, join(dir, 'big.vhd')], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    a.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number>((r) => a.on('exit', (code) => r(code ?? -1)));
    for (;;) {
      if ((await readdir(join(vault, 'disks')).catch(() => [])).length > 0) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    a.kill('SIGINT');
    t.is(await exited, 130, stderr);
    t.is(stderr, 'ferry: interrupted (SIGINT); run the same command again to go on\n');
    t.false(await stat(join(vault, 'locks', 'writer')).then(() => true, () => false), 'no lock left');
    const next = await ferry(['vhd', 'import', '--vault', vault, join(dir, 'big.vhd')], { env });
    t.is(next.code, 0, next.stderr);
    t.notRegex(next.stderr, /stale/);
  });
});

test('a key add paused while another broke its lock and added a key does not write over the new slot', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    const a = spawn(process.execPath, [FERRY, 'key', 'add', '--vault', vault], { env: { ...process.env, ...env, FERRY_NEW_PASSPHRASE: 'holder A passphrase 0000' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    a.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number>((r) => a.on('exit', (code) => r(code ?? -1)));
    // paused once it holds the lock (it then derives the new slot's key: half a second)
    for (;;) {
      if (await stat(join(vault, 'locks', 'writer')).then(() => true, () => false)) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    a.kill('SIGSTOP');
    try {
      const b = await ferry(['key', 'add', '--vault', vault, '--break-lock', '--kdf-log-n', '12'], { env: { ...env, FERRY_NEW_PASSPHRASE: 'breaker B passphrase 111' } });
      t.is(b.code, 0, b.stderr);
    } finally {
      a.kill('SIGCONT');
    }
    t.is(await exited, 1, stderr);
    t.regex(stderr, /lock|changed since this command read it/);
    // B's passphrase opens the vault; A's was not added
    t.is((await ferry(['key', 'list', '--vault', vault], { env: { FERRY_PASSPHRASE: 'breaker B passphrase 111' } })).code, 0);
    t.is((await ferry(['key', 'list', '--vault', vault], { env: { FERRY_PASSPHRASE: 'holder A passphrase 0000' } })).code, 12);
  });
});
