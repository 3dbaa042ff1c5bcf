// More of the descriptor-anchored restore (restore/anchor.ts), found by a review: what
// the other tests do not reach. Many folders (more than the 2048 descriptors a
// restore keeps open, so it closes and reopens them on the way) with their
// metadata; the target itself and folders on the way changed by another user
// mid-run after such a close; a low descriptor limit; a restore as a user
// other than root (the helpers then reach /proc/<pid>/fd of a non-root
// process); and what warnings name.
import test from 'ava';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, linkSync, lstatSync, mkdirSync, readdirSync, renameSync, rmdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { VolumeReader } from '../format/volume/index.js';
import { backup } from './helpers/volume.js';
import { restoreFiles } from '../restore/files.js';
import { snapshotTree, diffSnapshots } from './helpers/tree.js';

const DIST = join(fileURLToPath(import.meta.url), '..', '..');

async function withTmp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-anchor-more-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function sh(cmd: string, args: string[], input?: Buffer | string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: out, stderr: err }));
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

async function mustSh(script: Buffer | string): Promise<void> {
  const r = await sh('sh', ['-e', '-s'], script);
  if (r.code !== 0) throw new Error(`sh failed: ${r.stderr}`);
}

const total = (reader: VolumeReader) => [...reader.entries()].length;

// ---------------------------------------------------------------- many folders (trims), metadata right

test('more folders than descriptors kept open: files, hard links across folders, modes, ns times and xattrs of files and folders are right after the closes', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    const N = 2100;
    mkdirSync(src);
    const touch: string[] = [];
    const xattrs: string[] = [];
    for (let i = 0; i < N; i++) {
      const d = join(src, `d${String(i).padStart(4, '0')}`);
      mkdirSync(d);
      writeFileSync(join(d, 'f'), `file ${i}\n`);
      chmodSync(join(d, 'f'), 0o640 + (i % 8));
      if (i % 20 === 0) {
        touch.push(`touch -h -d @1600000000.${String(100000001 + i)} '${join(d, 'f')}'`);
        xattrs.push(`# file: ${join(d, 'f')}\nuser.f="${i}"\n`);
      }
      if (i % 5 === 0) xattrs.push(`# file: ${d}\nuser.dir="${i}"\n`);
    }
    // hard links whose first member was restored several closes earlier
    for (let i = 0; i < N; i += 400) writeFileSync(join(src, `d${String(i).padStart(4, '0')}`, 'shared'), `shared ${i}\n`);
    for (let i = 0; i < N; i += 400) {
      linkSync(join(src, `d${String(i).padStart(4, '0')}`, 'shared'), join(src, `d${String(N - 1 - i).padStart(4, '0')}`, `link-${i}`));
    }
    await mustSh(Buffer.from(`setfattr --restore=- <<'EOF'\n${xattrs.join('\n')}\nEOF\n`));
    // folders' modes and ns times last (their contents are complete)
    for (let i = 0; i < N; i++) {
      const d = join(src, `d${String(i).padStart(4, '0')}`);
      chmodSync(d, 0o750 + (i % 8));
      if (i % 20 === 3) touch.push(`touch -h -d @1500000000.${String(200000003 + i)} '${d}'`);
    }
    touch.push(`touch -h -d @1400000000.987654321 '${src}'`);
    await mustSh(touch.join('\n') + '\n');
    let tb = Date.now();
    const reader = await backup(src);
    t.log(`backup ${Date.now() - tb} ms`);
    tb = Date.now();
    const before = await snapshotTree(src);
    t.log(`before snapshot ${Date.now() - tb} ms`);
    // an existing target: every file under a temporary name, renamed (a new target writes at the names; the other tests cover it)
    const t0 = Date.now();
    for (const fresh of [false]) {
      const to = join(dir, fresh ? 'new' : 'existing');
      if (!fresh) {
        await mkdir(to);
        await writeFile(join(to, 'keep'), 'mine\n');
      }
      const warnings: string[] = [];
      const r = await restoreFiles(reader, { to, onWarning: (w) => warnings.push(w.message) });
      t.deepEqual(warnings, [], `fresh=${fresh}`);
      t.is(r.failed, 0);
      const t1 = Date.now();
      t.deepEqual(diffSnapshots(before, await snapshotTree(join(to, src))), [], `fresh=${fresh}`);
      t.log(`restore ${t1 - t0} ms, snapshot ${Date.now() - t1} ms`);
    }
    reader.close();
  });
});

// ---------------------------------------------------------------- the target itself, swapped after a close

test('the target itself swapped for a symlink by another user mid-run: nothing lands outside after the descriptors are closed and reopened', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    const N = 2300;
    for (let i = 0; i < N; i++) {
      mkdirSync(join(src, `d${i}`), { recursive: true });
      writeFileSync(join(src, `d${i}`, 'f'), `file ${i}\n`);
    }
    const reader = await backup(src);
    // an existing folder in a place another user can write (/home/alice/restore-here, say)
    const to = join(dir, 'home', 'restore-here');
    await mkdir(to, { recursive: true });
    await chmod(join(dir, 'home'), 0o777);
    await writeFile(join(to, 'old'), 'x\n');
    // what that user prepares: the same path under a folder of their choice
    const outside = join(dir, 'outside');
    await mkdir(join(outside, src), { recursive: true });
    let swapped = false;
    await restoreFiles(reader, {
      to,
      ifExists: 'overwrite',
      onWarning: () => {},
      onProgress: (p) => {
        if (swapped || p.files < 1000) return;
        swapped = true;
        renameSync(to, `${to}.real`);
        symlinkSync(outside, to);
      },
    });
    t.true(swapped);
    t.deepEqual(readdirSync(join(outside, src)).slice(0, 5), [], 'entries were written through the swapped target');
    reader.close();
  });
});

// ---------------------------------------------------------------- a folder on the way gone while metadata is set

test('a folder on the way renamed by its owner while folders get their metadata: the restore ends with warnings and sets the other folders', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    const N = 2200;
    for (let i = 0; i < N; i++) mkdirSync(join(src, 'u', 'd', `s${i}`, 't'), { recursive: true });
    mkdirSync(join(src, 'u', 'e'));
    chmodSync(join(src, 'u', 'e'), 0o751);
    await mustSh(`touch -h -d @1500000000.123456789 '${join(src, 'u', 'e')}'\n`);
    const want = lstatSync(join(src, 'u', 'e'), { bigint: true });
    const reader = await backup(src);
    const count = total(reader);
    // u exists in the target and is another user's (a home folder): they may rename what is in it
    const to = join(dir, 'target');
    const u = join(to, src, 'u');
    await mkdir(u, { recursive: true });
    await chmod(u, 0o777);
    let moved = false;
    const warnings: string[] = [];
    const run = restoreFiles(reader, {
      to,
      onWarning: (w) => warnings.push(w.message),
      onProgress: (p) => {
        // the last entry of the first pass is done: the user moves their folder d away
        if (moved || p.files < count) return;
        moved = true;
        renameSync(join(u, 'd'), join(u, 'd.moved'));
      },
    });
    await t.notThrowsAsync(run, 'one folder gone stops the whole restore');
    t.true(moved);
    const st = lstatSync(join(u, 'e'), { bigint: true });
    t.is((st.mode & 0o7777n).toString(8), '751', 'the mode of another folder');
    t.is(st.mtimeNs, want.mtimeNs, 'the times of another folder');
    reader.close();
  });
});

// ---------------------------------------------------------------- warnings name entries, not descriptors

test('a warning about a folder removed meanwhile names the folder in its path field, not a /proc descriptor name', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    mkdirSync(join(src, 'u', 'empty'), { recursive: true });
    writeFileSync(join(src, 'u', 'f'), 'f\n');
    const reader = await backup(src);
    const count = total(reader);
    const to = join(dir, 'target');
    const u = join(to, src, 'u');
    await mkdir(u, { recursive: true });
    await chmod(u, 0o777);
    let removed = false;
    const warnings: { message: string; path?: string }[] = [];
    await restoreFiles(reader, {
      to,
      onWarning: (w) => warnings.push({ message: w.message, path: w.path?.toString() }),
      onProgress: (p) => {
        if (removed || p.files < count) return;
        removed = true;
        rmdirSync(join(u, 'empty')); // its owner removes the empty folder the restore made
      },
    });
    t.true(removed);
    t.true(warnings.length > 0);
    for (const w of warnings) {
      t.false(w.message.includes('/proc/'), w.message);
      t.false((w.path ?? '').startsWith('/proc/'), `path ${w.path} of: ${w.message}`);
    }
    reader.close();
  });
});

// ---------------------------------------------------------------- a subprocess restore (limits, other users)

const SCRIPT = (dist: string) => `
import { walk } from '${dist}/source/files.js';
import { MemDisk } from '${dist}/format/memdisk.js';
import { writeVolume, VolumeReader } from '${dist}/format/volume/index.js';
import { restoreFiles } from '${dist}/restore/files.js';
const [src, ...tos] = process.argv.slice(2);
const disk = new MemDisk(2040 * 1024 ** 3);
await writeVolume(disk, walk([src]), {});
const reader = await VolumeReader.open(disk);
const out = [];
for (const to of tos) {
  const warnings = [];
  const r = await restoreFiles(reader, { to, onWarning: (w) => warnings.push(w.message) });
  out.push({ to, failed: r.failed, restored: r.restored, warnings: warnings.length, first: warnings.slice(0, 3) });
}
reader.close();
console.log(JSON.stringify(out));
`;

async function writeScript(dir: string): Promise<string> {
  const p = join(dir, 'run.mjs');
  await writeFile(p, SCRIPT(DIST));
  await chmod(p, 0o644);
  return p;
}

test('with a descriptor limit of 1024 (hard), a restore of 1200 folders fails nothing', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    for (let i = 0; i < 1200; i++) {
      mkdirSync(join(src, `d${i}`), { recursive: true });
      writeFileSync(join(src, `d${i}`, 'f'), `file ${i}\n`);
    }
    const script = await writeScript(dir);
    const r = await sh('bash', ['-c', 'ulimit -n 1024 && exec "$0" "$@"', process.execPath, script, src, join(dir, 'out')]);
    t.is(r.code, 0, r.stderr);
    const [res] = JSON.parse(r.stdout);
    t.is(res.failed, 0, JSON.stringify(res.first));
    t.is(res.warnings, 0, JSON.stringify(res.first));
  });
});

test('a restore as a user other than root: xattrs, ACLs, ns times of files and folders, fifos, hard links and non-UTF-8 names, into a new and an existing target', async (t) => {
  await withTmp(async (dir) => {
    await chmod(dir, 0o755);
    const src = join(dir, 'src');
    // built as root with independent tools, then given to nobody
    const nb = (s: string) => Buffer.from(s, 'latin1');
    await mustSh(Buffer.concat([
      nb(`cd '${dir}'\nmkdir -p src/a src/b\n`),
      nb(`printf 'one\\n' > src/a/file1\nsetfattr -n user.x -v 1 src/a/file1\ntouch -h -d @1600000000.123456789 src/a/file1\n`),
      nb(`ln src/a/file1 src/b/hard\n`),
      nb(`printf 'acl\\n' > src/a/acl\nsetfacl -m u:1:r src/a/acl\ntouch -h -d @1600000001.000000001 src/a/acl\n`),
      nb(`d=$(printf 'src/a/d\\377')\nmkdir "$d"\nprintf 'in\\n' > "$d/in"\nsetfattr -n user.d -v 2 "$d"\n`),
      nb(`f=$(printf 'src/a/caf\\351')\nprintf 'x\\n' > "$f"\nsetfattr -n user.n -v 3 "$f"\ntouch -h -d @1600000002.999999999 "$f"\n`),
      nb(`p=$(printf 'src/b/p\\376')\nmkfifo "$p"\nchmod 640 "$p"\ntouch -h -d @1600000003.000000007 "$p"\n`),
      nb(`ln -s 'file1' src/a/sl\ntouch -h -d @1600000004.000000011 src/a/sl\n`),
      nb(`chown -R nobody:nogroup src\n`),
      nb(`touch -h -d @1500000000.111111111 "$d" src/a src/b\nsetfattr -n user.top -v 4 src/a\ntouch -h -d @1500000000.222222222 src/a src\n`),
    ]));
    const before = await snapshotTree(src);
    // an existing target (not new: temporary names, renames) owned by nobody
    const existing = join(dir, 'existing');
    await mkdir(existing);
    await writeFile(join(existing, 'keep'), 'k\n');
    const runAs = join(dir, 'run');
    await mkdir(runAs);
    chownSync(existing, 65534, 65534);
    chownSync(join(existing, 'keep'), 65534, 65534);
    chownSync(runAs, 65534, 65534);
    const script = await writeScript(dir);
    const r = await sh('runuser', ['-u', 'nobody', '--', process.execPath, script, src, join(runAs, 'new'), existing]);
    t.is(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as { to: string; failed: number; warnings: number; first: string[] }[];
    for (const x of res) {
      t.is(x.failed, 0, JSON.stringify(x.first));
      t.is(x.warnings, 0, JSON.stringify(x.first));
      t.deepEqual(diffSnapshots(before, await snapshotTree(join(x.to, src))), [], x.to);
    }
    t.false(existsSync(join(runAs, 'new', '.ferry-restore-unfinished')));
  });
});
