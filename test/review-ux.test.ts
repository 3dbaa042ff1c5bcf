// Found by an administrator's walk through the CLI (2026-12-07): a relative
// --to with a folder in it, --if-exists copy over a file of the user's that
// bears the copy's name, and --path naming a file with glob characters.
import test from 'ava';
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { mkdir, readFile, readdir, utimes, writeFile } from 'node:fs/promises';
import { HOST_TAG } from '../format/fsio.js';
import { join } from 'node:path';
import { backedUp, ferry, must, withTmp } from './helpers/exec.js';

const env = { FERRY_PASSPHRASE: 'ux review passphrase, long enough' };


test('a relative --to with folders in it is taken from the working folder (files and tar)', async (t) => {
  await withTmp(async (dir) => {
    const { vault, src } = await backedUp(dir, env, async (s) => {
      await mkdir(join(s, 'd'));
      await writeFile(join(s, 'd', 'f'), 'hello');
    });
    const work = join(dir, 'work');
    await mkdir(join(work, 'r1'), { recursive: true });
    await mkdir(join(work, 'tt'));
    for (const to of ['r1/x', './r2', 'r1/../r3']) {
      const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', to], { env, cwd: work });
      t.is(r.code, 0, `${to}: ${r.stderr}`);
      t.is(await readFile(join(work, to, src, 'd', 'f'), 'utf8'), 'hello', to);
    }
    const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', 'tt/a.tar'], { env, cwd: work });
    t.is(r.code, 0, r.stderr);
    const listing = (await must('tar', ['tf', join(work, 'tt', 'a.tar')])).toString();
    t.true(listing.includes(`.${src}/d/f`), listing);
  });
});

test('--if-exists copy never writes over a file of the user that bears the copy name: .2, .3 ... instead; run again, nothing more', async (t) => {
  await withTmp(async (dir) => {
    const { vault, src } = await backedUp(dir, env, async (s) => writeFile(join(s, 'b.conf'), 'from the backup'));
    const out = join(dir, 'out');
    const restore = () => ferry(['restore', '--vault', vault, '--item', 'it', '--to', out, '--if-exists', 'copy'], { env });
    t.is((await restore()).code, 0);
    const here = join(out, src);
    await writeFile(join(here, 'b.conf'), 'edited here');
    await writeFile(join(here, 'b.conf.ferry-restored-1'), 'my own notes');
    await mkdir(join(here, 'b.conf.ferry-restored-1.2'));
    const r = await restore();
    t.is(r.code, 0, r.stderr);
    t.is(await readFile(join(here, 'b.conf'), 'utf8'), 'edited here');
    t.is(await readFile(join(here, 'b.conf.ferry-restored-1'), 'utf8'), 'my own notes', 'the user file is kept');
    t.deepEqual(await readdir(join(here, 'b.conf.ferry-restored-1.2')), [], 'and so is the folder');
    t.is(await readFile(join(here, 'b.conf.ferry-restored-1.3'), 'utf8'), 'from the backup');
    const again = await restore();
    t.is(again.code, 0, again.stderr);
    t.false(existsSync(join(here, 'b.conf.ferry-restored-1.4')), 'the copy made before is found, not made again');
    t.regex(again.stdout.toString() + again.stderr, /already equal/);
  });
});

test('--path naming a file whose name holds glob characters restores that file alone', async (t) => {
  await withTmp(async (dir) => {
    const { vault, src } = await backedUp(dir, env, async (s) => {
      await writeFile(join(s, '[br]acket'), 'the one');
      await writeFile(join(s, 'racket'), 'not this');
    });
    const out = join(dir, 'out');
    const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', out, '--path', join(src, '[br]acket')], { env });
    t.is(r.code, 0, r.stderr);
    t.deepEqual((await readdir(join(out, src))).sort(), ['[br]acket']);
    // a pattern that names no entry stays a glob
    const out2 = join(dir, 'out2');
    const g = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', out2, '--path', join(src, '[xr]acket')], { env });
    t.is(g.code, 0, g.stderr);
    t.deepEqual(await readdir(join(out2, src)), ['racket']);
  });
});

test('a killed tar restore: its partial archive beside --to goes at the next run, also when that run writes a copy beside it', async (t) => {
  await withTmp(async (dir) => {
    const { vault } = await backedUp(dir, env, async (s) => writeFile(join(s, 'f'), 'data'));
    const out = join(dir, 'out');
    await mkdir(out);
    await writeFile(join(out, 'a.tar'), 'not this backup'); // so the run writes a.tar.ferry-restored-1
    // what a run killed while tar wrote leaves: its temporary archive, its pid gone, untouched for a minute
    const dead = spawnSync('true').pid!;
    const partial = join(out, `a.tar.ferry-tmp-${HOST_TAG}-${dead}`);
    await writeFile(partial, Buffer.alloc(1 << 20));
    const old = new Date(Date.now() - 60_000);
    await utimes(partial, old, old);
    const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', join(out, 'a.tar')], { env });
    t.is(r.code, 0, r.stderr);
    t.false(existsSync(partial), 'the dead run\'s partial archive is gone');
    t.true(existsSync(join(out, 'a.tar.ferry-restored-1')));
    t.is(await readFile(join(out, 'a.tar'), 'utf8'), 'not this backup');
  });
});

test('a TMPDIR that cannot hold a folder (missing, or a file) is one line naming it and TMPDIR, not a stack trace; the same command with a good one goes on', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'a'), 'a\n');
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    const notDir = join(dir, 'plain-file');
    await writeFile(notDir, '');
    for (const tmp of [join(dir, 'no-such-folder'), notDir]) {
      const r = await ferry(['seed', '--vault', vault, '--item', 'it', '--kind', 'files', '--disk', join(dir, 'd1'), src], { env: { ...env, TMPDIR: tmp } });
      t.is(r.code, 1, r.stderr);
      t.regex(r.stderr, new RegExp(`^ferry: cannot make a temporary folder in ${tmp} \\((ENOENT|ENOTDIR)\\): .*point TMPDIR at a folder this user may write, then run the same command again\\n$`));
    }
    const ok = await ferry(['seed', '--vault', vault, '--item', 'it', '--kind', 'files', '--disk', join(dir, 'd1'), src], { env });
    t.is(ok.code, 0, ok.stderr);
    t.is((await ferry(['import', '--vault', vault, join(dir, 'd1')], { env })).code, 0);
  });
});

test('files, links and folders dated after 2262 (ext4 keeps times to 2446) are seeded and restored with their times, not a crash', async (t) => {
  await withTmp(async (dir) => {
    const { vault, src } = await backedUp(dir, env, async (s) => {
      await mkdir(join(s, 'later'));
      await writeFile(join(s, 'later', 'f'), 'from the future\n');
      await must('ln', ['-s', 'f', join(s, 'later', 'l')]);
      await must('touch', ['-h', '-d', '2300-01-01 00:00:00.123456789 UTC', join(s, 'later', 'f')]);
      await must('touch', ['-h', '-d', '2446-05-01 12:00:00.000000007 UTC', join(s, 'later', 'l')]);
      await must('touch', ['-h', '-d', '2262-04-11 23:47:16.854775808 UTC', join(s, 'later')]);
    });
    const out = join(dir, 'out');
    const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', out], { env });
    t.is(r.code, 0, r.stderr);
    const times = async (root: string) => (await must('sh', ['-c', `cd "${root}" && stat -c '%n %y %s' later later/f later/l`])).toString();
    t.is(await times(join(out, src)), await times(src));
    t.regex(await times(src), /later\/f 2300-01-01 00:00:00\.123456789/);
  });
});

test('a mistyped option is named as unknown, with the option meant, before any required one is missed (exit 2)', async (t) => {
  for (const [args, want] of [
    [['points', '--vualt', '/nonexistent'], /^ferry: unknown option '--vualt' \(did you mean --vault\?\)\n$/],
    [['restore', '--vault', '/nonexistent', '--itme', 'a'], /^ferry: unknown option '--itme' \(did you mean --item\?\)\n$/],
    [['restor', '--vault', '/nonexistent'], /^ferry: unknown command 'restor' \(did you mean restore\?\)\n$/],
    [['restore', '--vault', '/nonexistent'], /^ferry: required option '--item <name>' not specified\n$/],
  ] as const) {
    const r = await ferry([...args]);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr.toString(), want);
  }
});
