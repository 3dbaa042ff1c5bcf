// Review of 9651a11 (security.*/trusted.* xattrs through the writer's
// descriptor and the helper's 'X' op) and 16b5da2 (the journal of folders a
// restore makes, restore/journal.ts). Each test failed on the code as
// reviewed (the names say how) and passes since the fixes that followed.
// Needs root (setpriv, setfattr of security.*).
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, chownSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { backup, xattrsOf, mustSync as must, restoreCollect as restore } from './helpers/volume.js';
import { withTmp } from './helpers/exec.js';
import { FolderJournal } from '../restore/journal.js';

const DIST = join(fileURLToPath(import.meta.url), '..', '..');
const u = (p: string) => pathToFileURL(join(DIST, p)).href;
/** A uid with no passwd entry (a container's arbitrary uid). */
const NO_PASSWD_UID = 12345;

/**
 * Backs up `src` and restores it to `to` in a node child (`prefix`: the
 * command before node, `env`: its whole environment); what it printed.
 */
function childRestore(prefix: string[], env: NodeJS.ProcessEnv, src: string, to: string, dir: string): Promise<{ code: number | null; out: string; err: string }> {
  const script = join(dir, 'child.mjs');
  writeFileSync(script, `
import { walk } from '${u('source/files.js')}';
import { MemDisk } from '${u('format/memdisk.js')}';
import { writeVolume, VolumeReader } from '${u('format/volume/index.js')}';
import { restoreFiles } from '${u('restore/files.js')}';
const disk = new MemDisk(2040 * 1024 ** 3);
await writeVolume(disk, walk([${JSON.stringify(src)}]), {});
const reader = await VolumeReader.open(disk);
const warnings = [];
const t0 = Date.now();
const r = await restoreFiles(reader, { to: ${JSON.stringify(to)}, onWarning: (w) => warnings.push(w.code + ': ' + w.message) });
const ms = Date.now() - t0;
reader.close();
console.log(JSON.stringify({ r, warnings, ms }));
`);
  chmodSync(script, 0o644);
  return new Promise((resolve) => {
    const c = spawn(prefix[0] ?? process.execPath, [...prefix.slice(1), ...(prefix.length ? [process.execPath] : []), script], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    c.on('close', (code) => resolve({ code, out, err }));
  });
}

// ---------------------------------------------------------------- 1. a process per file (writer.ts setXattrsThroughFd)

test('PERF: 300 files with security.capability in a folder others can write are restored without a process spawned per file (setXattrsThroughFd runs spawnSync setfattr for each)', async (t) => {
  await withTmp(async (dir) => {
    chmodSync(dir, 0o755);
    const src = join(dir, 'src');
    mkdirSync(src);
    const N = 300;
    const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex').toString('base64');
    const doc: string[] = [];
    for (let i = 0; i < N; i++) {
      writeFileSync(join(src, `f${String(i).padStart(3, '0')}`), `file ${i}\n`);
      doc.push(`# file: ${join(src, `f${String(i).padStart(3, '0')}`)}\nsecurity.capability=0s${cap}\n`);
    }
    must('setfattr', ['--restore=-'], doc.join('\n') + '\n');
    const to = join(dir, 'to');
    mkdirSync(join(to, src), { recursive: true });
    chmodSync(join(to, src), 0o777); // a home folder, say: its user can write it
    // setfattr and perl as seen by the restore: count how often each runs
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    const log = join(dir, 'spawns.log');
    for (const tool of ['setfattr', 'perl']) {
      const real = must('sh', ['-c', `command -v ${tool}`]).trim();
      writeFileSync(join(bin, tool), `#!/bin/sh\necho ${tool} >> '${log}'\nexec '${real}' "$@"\n`, { mode: 0o755 });
    }
    const env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, FERRY_STATE_DIR: join(dir, 'state') };
    const { code, out, err } = await childRestore([], env, src, to, dir);
    t.is(code, 0, err);
    const { r, warnings, ms } = JSON.parse(out);
    t.deepEqual(warnings, []);
    t.is(r.failed, 0);
    const last = `f${String(N - 1).padStart(3, '0')}`;
    t.is(xattrsOf(join(to, src, last)), xattrsOf(join(src, last)));
    const spawns = readFileSync(log, 'utf8').split('\n').filter(Boolean);
    t.log(`${spawns.length} setfattr/perl processes for ${N} files, ${ms} ms`);
    t.true(spawns.length <= 10, `${spawns.length} setfattr/perl processes for ${N} files (one per file: a fork of the whole restore each)`);
  });
});

// ---------------------------------------------------------------- 2. stateDir() throws where the user has no home

test('CRASH: a restore into an existing folder by a user with no passwd entry and no $HOME (a container uid) works; journal.ts stateDir() calls os.homedir(), which throws, outside any try', async (t) => {
  await withTmp(async (dir) => {
    chmodSync(dir, 0o755);
    const src = join(dir, 'src');
    mkdirSync(join(src, 'a'), { recursive: true });
    writeFileSync(join(src, 'a', 'f'), 'x\n');
    const to = join(dir, 'to');
    mkdirSync(to);
    writeFileSync(join(to, 'keep'), 'the user\'s\n'); // not empty: no marker, so the journal is used
    for (const p of [src, join(src, 'a'), join(src, 'a', 'f'), to, join(to, 'keep')]) chownSync(p, NO_PASSWD_UID, NO_PASSWD_UID);
    t.is(spawnSync('getent', ['passwd', String(NO_PASSWD_UID)]).status, 2, 'the uid has no passwd entry');
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH };
    const { code, out, err } = await childRestore(['setpriv', `--reuid=${NO_PASSWD_UID}`, `--regid=${NO_PASSWD_UID}`, '--clear-groups'], env, src, to, dir);
    t.is(code, 0, `the restore threw: ${err.split('\n').find((l) => /Error/.test(l)) ?? err}`);
    if (code === 0) {
      const { r } = JSON.parse(out);
      t.is(r.failed, 0);
      t.is(readFileSync(join(to, src, 'a', 'f'), 'utf8'), 'x\n');
    }
  });
});

// ---------------------------------------------------------------- 3. a complete --path run leaves its journal

test('JOURNAL: a --path restore that completes leaves its journal, and a later --if-exists skip run of the same path changes a folder the user has changed since', async (t) => {
  await withTmp(async (dir) => {
    const state = join(dir, 'state');
    const src = join(dir, 'src');
    mkdirSync(join(src, 'a', 'sub'), { recursive: true });
    writeFileSync(join(src, 'a', 'sub', 'f'), 'x\n');
    writeFileSync(join(src, 'other'), 'y\n');
    chmodSync(join(src, 'a', 'sub'), 0o750);
    const reader = await backup(src);
    const to = join(dir, 'out');
    mkdirSync(to);
    writeFileSync(join(to, 'keep'), 'the user\'s\n'); // an existing folder: no marker
    const paths = [join(src, 'a')];
    const first = await restore(reader, { to, paths, stateDir: state });
    t.deepEqual(first.warnings, []);
    t.is(first.r.failed, 0);
    const sub = join(to, src, 'a', 'sub');
    t.is(lstatSync(sub).mode & 0o7777, 0o750, 'the first run put everything selected in place');
    // later, the user makes the folder their own way
    chmodSync(sub, 0o700);
    const again = await restore(reader, { to, paths, ifExists: 'skip', stateDir: state });
    t.deepEqual(again.warnings, []);
    t.is((lstatSync(sub).mode & 0o7777).toString(8), '700', 'a run under skip, after a complete run, changed a folder the user changed');
    reader.close();
  });
});

// ---------------------------------------------------------------- 4. a record cut short

/** A folder made at `p` (under the journal's target) and its stat, as restore gives them to the journal. */
function folder(p: Buffer) {
  mkdirSync(p, { recursive: true });
  return lstatSync(p);
}

function journalFiles(state: string): string[] {
  return readdirSync(join(state, 'restores')).map((n) => join(state, 'restores', n));
}

test('JOURNAL: after a record cut short (a power cut, or a short write on a full disk), the next run\'s first record is not lost by being glued to it', async (t) => {
  await withTmp(async (dir) => {
    const state = join(dir, 'state');
    const to = Buffer.from(join(dir, 'out'));
    const at = (p: string) => Buffer.concat([to, Buffer.from(p)]);
    const [a, c] = [at('/a'), at('/c')];
    const [sa, sc] = [folder(a), folder(c)];
    const vol = 'ab'.repeat(16);
    const j1 = FolderJournal.open(vol, to, state).journal!;
    t.truthy(j1);
    t.true(j1.add(a, sa));
    j1.close();
    const [f1] = journalFiles(state);
    appendFileSync(f1, '2049 12 /b/half-writ'); // the last record of a run stopped by a power cut: no NUL
    const j2 = FolderJournal.open(vol, to, state).journal!;
    t.true(j2.made(a, sa));
    t.true(j2.add(c, sc)); // the next run, stopped too
    j2.close();
    const j3 = FolderJournal.open(vol, to, state).journal!;
    t.true(j3.made(a, sa));
    t.true(j3.made(c, sc), 'the record of /c was glued to the cut one');
  });
});

// ---------------------------------------------------------------- 5. two runs at once

test('JOURNAL: two restores of one backup into one place at once: the one that completes removes the journal the other still writes to, and what the other made is forgotten when it is stopped', async (t) => {
  await withTmp(async (dir) => {
    const state = join(dir, 'state');
    const to = Buffer.from(join(dir, 'out'));
    const at = (p: string) => Buffer.concat([to, Buffer.from(p)]);
    const [x, y] = [at('/x'), at('/y')];
    const [sx, sy] = [folder(x), folder(y)];
    const vol = 'cd'.repeat(16);
    const a = FolderJournal.open(vol, to, state).journal!; // run A: the whole backup
    const b = FolderJournal.open(vol, to, state).journal!; // run B, started beside it
    t.true(b.add(x, sx));
    a.finish(true); // A ends with everything it saw in place
    t.true(b.add(y, sy)); // B goes on making folders, then is stopped
    b.close();
    const c = FolderJournal.open(vol, to, state).journal!; // B run again
    t.true(c.made(x, sx), 'folder x, made by B, is forgotten');
    t.true(c.made(y, sy), 'folder y, made by B after A finished, is forgotten');
  });
});

test('JOURNAL: a folder its user put in place of one the restore made is not taken for it (device and inode recorded)', async (t) => {
  await withTmp(async (dir) => {
    const state = join(dir, 'state');
    const to = Buffer.from(join(dir, 'out'));
    const x = Buffer.concat([to, Buffer.from('/x')]);
    const vol = '12'.repeat(16);
    const sx = folder(x);
    const j = FolderJournal.open(vol, to, state).journal!;
    t.true(j.add(x, sx));
    j.close();
    mkdirSync(join(dir, 'keep')); // (made while x exists: it cannot have x's inode number)
    rmSync(x, { recursive: true });
    renameSync(join(dir, 'keep'), x);
    t.false(FolderJournal.open(vol, to, state).journal!.made(x, lstatSync(x)));
  });
});

// ---------------------------------------------------------------- 6. keyed by the spelling of --to

test('JOURNAL: keyed by the folder, not by how --to is spelled: through a symlink to it, or relative in a folder whose name is UTF-8, a stopped run\'s journal is found', async (t) => {
  await withTmp(async (dir) => {
    const state = join(dir, 'state');
    const vol = 'ef'.repeat(16);
    // (a) --to /…/link, then --to /…/real (the same folder)
    const real = join(dir, 'real');
    mkdirSync(real);
    symlinkSync(real, join(dir, 'link'));
    const viaLink = FolderJournal.open(vol, Buffer.from(join(dir, 'link')), state).journal!;
    t.true(viaLink.add(Buffer.from(join(dir, 'link', 'a')), folder(Buffer.from(join(real, 'a')))));
    viaLink.close();
    t.true(FolderJournal.open(vol, Buffer.from(real), state).journal!.made(Buffer.from(join(real, 'a')), lstatSync(join(real, 'a'))), 'through a symlink');
    // (b) cd /…/café && ferry restore --to out, then --to /…/café/out
    const cafe = join(dir, 'café');
    mkdirSync(join(cafe, 'out', 'a'), { recursive: true });
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', `
import { FolderJournal } from '${u('restore/journal.js')}';
import { lstatSync } from 'node:fs';
const j = FolderJournal.open(${JSON.stringify(vol)}, Buffer.from('out'), ${JSON.stringify(state)}).journal;
console.log(j.add(Buffer.from('out/a'), lstatSync('out/a')) ? 'added' : 'not added');
j.close();
`], { cwd: cafe });
    t.is(r.stdout.toString().trim(), 'added', r.stderr.toString());
    t.true(FolderJournal.open(vol, Buffer.from(join(cafe, 'out')), state).journal!.made(Buffer.from(join(cafe, 'out', 'a')), lstatSync(join(cafe, 'out', 'a'))), 'relative in a UTF-8 named folder');
  });
});

test('JOURNAL: a folder announced but not yet recorded (a kill between mkdir and its record) counts only as mkdir left it; one not made does not count', async (t) => {
  await withTmp(async (dir) => {
    const state = join(dir, 'state');
    const to = Buffer.from(join(dir, 'out'));
    const at = (p: string) => Buffer.concat([to, Buffer.from(p)]);
    const [x, y] = [at('/x'), at('/y')];
    mkdirSync(to);
    const vol = '34'.repeat(16);
    const j = FolderJournal.open(vol, to, state).journal!;
    t.true(j.about(x));
    mkdirSync(x, { mode: 0o700 }); // killed here, before add()
    mkdirSync(y, { mode: 0o700 }); // a folder that was there: mkdir failed
    t.true(j.about(y));
    t.true(j.notMade(y));
    j.close();
    const again = FolderJournal.open(vol, to, state).journal!;
    t.true(again.made(x, lstatSync(x)), 'announced, and as mkdir leaves a folder');
    t.false(again.made(y, lstatSync(y)), 'announced, then not made');
    chmodSync(x, 0o755);
    t.false(FolderJournal.open(vol, to, state).journal!.made(x, lstatSync(x)), 'announced, but not as mkdir leaves a folder');
  });
});
