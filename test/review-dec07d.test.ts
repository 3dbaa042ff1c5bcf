// From a reviewer's walk through the CLI (2026-12-07, eighth stop): names
// with control characters printed as they are, restored files put inside a
// vault, system state restored over the running system unasked, and a
// folder of the user's replaced under overwrite without a word.
import test from 'ava';
import { existsSync, symlinkSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { printable } from '../format/printable.js';
import { backedUp, ferry, run, withTmp } from './helpers/exec.js';

const env = { FERRY_PASSPHRASE: 'dec07d review passphrase, long enough' };


test('printable escapes control characters, bytes that are not UTF-8 and the backslash, and keeps printable UTF-8', (t) => {
  t.is(printable(Buffer.from('/srv/a b/ü日本.txt')), '/srv/a b/ü日本.txt');
  t.is(printable(Buffer.from('evil\nferry: done')), 'evil\\nferry: done');
  t.is(printable(Buffer.from('\x1b[31mred\tx\\y\x7f')), '\\e[31mred\\tx\\\\y\\x7f');
  t.is(printable(Buffer.from([0x2f, 0xff, 0x41, 0xc3, 0xa9, 0xe2, 0x82])), '/\\xffAé\\xe2\\x82'); // a cut sequence at the end
  t.is(printable(Buffer.from([0xc0, 0xaf, 0xed, 0xa0, 0x80])), '\\xc0\\xaf\\xed\\xa0\\x80'); // overlong, surrogate
  t.is(printable(Buffer.from([0xc2, 0x85])), '\\xc2\\x85'); // a C1 control (NEL)
});

test('a source name with a newline shows in the warning as one escaped line', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    const missing = join(dir, 'gone\nferry: done');
    const r = await ferry(['seed', '--vault', vault, '--item', 'it', '--kind', 'files', '--disk', join(dir, 'd1'), missing, '--quiet'], { env });
    const lines = r.stderr.split('\n').filter((l) => l.length > 0);
    t.true(lines.some((l) => l.includes('gone\\nferry: done')), r.stderr);
    t.false(lines.some((l) => l.startsWith('ferry: done')), r.stderr);
  });
});

test('restore --to inside a vault (through a symlink too) is refused before anything is written', async (t) => {
  await withTmp(async (dir) => {
    const { vault } = await backedUp(dir, env, async (s) => writeFile(join(s, 'f'), 'x'));
    const before = (await readdir(vault)).sort();
    symlinkSync(vault, join(dir, 'link'));
    for (const to of [join(vault, 'restored'), join(dir, 'link', 'sub', 'deeper'), vault]) {
      const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', to], { env });
      t.is(r.code, 2, r.stderr);
      t.regex(r.stderr, /is inside the vault .*name a place outside it/);
    }
    t.deepEqual((await readdir(vault)).sort(), before);
    t.is((await ferry(['check', '--vault', vault], { env })).code, 0);
  });
});

test('a system-state restore needs --to: nothing is put over the running system unasked', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    const seed = await ferry(['seed', '--vault', vault, '--item', 'sys', '--kind', 'system-state', '--disk', join(dir, 'd1'), '--quiet'], { env });
    t.true(seed.code === 0 || seed.code === 3, seed.stderr);
    t.is((await ferry(['import', '--vault', vault, join(dir, 'd1'), '--quiet'], { env })).code, 0);
    const existed = existsSync('/ferry-system-state');
    const r = await ferry(['restore', '--vault', vault, '--item', 'sys'], { env });
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, /restoring system state needs --to/);
    t.is(existsSync('/ferry-system-state'), existed);
    const ok = await ferry(['restore', '--vault', vault, '--item', 'sys', '--to', join(dir, 'out'), '--quiet'], { env });
    t.true(ok.code === 0 || ok.code === 3, ok.stderr);
    t.true(existsSync(join(dir, 'out', 'ferry-system-state')));
  });
});

test('overwrite of a folder of the user\'s where the backup has a file says so, naming it, and exits 3; an empty one goes unsaid', async (t) => {
  await withTmp(async (dir) => {
    const { vault, src } = await backedUp(dir, env, async (s) => {
      await writeFile(join(s, 'f'), 'the file');
      await writeFile(join(s, 'g'), 'another');
    });
    const out = join(dir, 'out');
    const at = (n: string) => join(out, src, n);
    await mkdir(join(at('f'), 'keep'), { recursive: true });
    await writeFile(join(at('f'), 'keep', 'data'), 'precious');
    await mkdir(at('g'), { recursive: true }); // empty
    const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', out, '--if-exists', 'overwrite'], { env });
    t.is(r.code, 3, r.stderr);
    t.is(await readFile(at('f'), 'utf8'), 'the file');
    t.is(await readFile(at('g'), 'utf8'), 'another');
    const warned = r.stderr.split('\n').filter((l) => l.includes('where the backup has a file'));
    t.is(warned.length, 1, r.stderr);
    t.true(warned[0].includes(`${at('f')} was a folder of 1 entry`), r.stderr);
  });
});

test('a restore that could make no folder at all (a read-only target) leaves no journal behind', async (t) => {
  await withTmp(async (dir) => {
    const { vault } = await backedUp(dir, env, async (s) => writeFile(join(s, 'f'), 'x'));
    const ro = join(dir, 'ro');
    const state = join(dir, 'state');
    await mkdir(ro);
    t.is((await run('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', ro])).code, 0);
    try {
      const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', ro], { env: { ...env, FERRY_STATE_DIR: state } });
      t.is(r.code, 1, r.stderr);
      t.deepEqual(await readdir(join(state, 'restores')), []);
      // one line says it, no warning per entry before it
      t.deepEqual(r.stderr.trim().split('\n'), [`ferry: cannot restore to ${ro}: its file system is read-only; mount it read-write, or name another --to`]);
    } finally {
      await run('umount', [ro]);
    }
  });
});

test('copy run again over a file that differs, whose copy a run before wrote: counted and named as such, not as equal', async (t) => {
  await withTmp(async (dir) => {
    const { vault, src } = await backedUp(dir, env, async (s) => {
      await writeFile(join(s, 'hello.txt'), 'hello\n');
      await writeFile(join(s, 'same.txt'), 'same\n');
    });
    const out = join(dir, 'out');
    const args = ['restore', '--vault', vault, '--item', 'it', '--to', out, '--json'];
    t.is((await ferry(args, { env })).code, 0);
    await writeFile(join(out, src, 'hello.txt'), 'changed\n');
    const second = JSON.parse((await ferry(args, { env })).stdout.toString()) as { copies: number };
    t.is(second.copies, 1);
    await writeFile(join(out, src, 'hello.txt'), 'changed again\n');
    const third = await ferry([...args.slice(0, -1), '--verbose'], { env });
    t.is(third.code, 0, third.stderr);
    t.regex(third.stdout.toString() + third.stderr, /hello\.txt differs from the backup: its copy hello\.txt\.ferry-restored-1, written by a run before, is there already/);
    t.regex(third.stdout.toString() + third.stderr, /skipped \(\d+ already equal, 1 with the backup's copy beside it already\)/);
    const json = JSON.parse((await ferry(args, { env })).stdout.toString()) as { copiesFound: number; unchanged: number; skipped: number };
    t.is(json.copiesFound, 1);
    t.is(json.skipped, json.unchanged + 1);
    t.is(await readFile(join(out, src, 'hello.txt'), 'utf8'), 'changed again\n');
  });
});

test('a --to that cannot be a folder says what it is: a symlink to nothing, a device, a file; --salvage on a files item is a usage error', async (t) => {
  await withTmp(async (dir) => {
    const { vault } = await backedUp(dir, env, async (s) => writeFile(join(s, 'f'), 'x'));
    symlinkSync('/nonexistent/x', join(dir, 'dang'));
    await writeFile(join(dir, 'afile'), 'x');
    for (const [to, why] of [[join(dir, 'dang'), 'it is a symlink to /nonexistent/x, which is not there'], ['/dev/null', 'it is a character device, not a folder'], [join(dir, 'afile'), 'it is a file, not a folder']]) {
      const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', to], { env });
      t.is(r.code, 1, r.stderr);
      t.is(r.stderr.trim(), `ferry: cannot restore to ${to}: ${why}; give --to a folder that exists or can be made`);
    }
    const s = await ferry(['restore', '--vault', vault, '--item', 'it', '--to', join(dir, 'out'), '--salvage'], { env });
    t.is(s.code, 2, s.stderr);
    t.regex(s.stderr, /--salvage is for volumes/);
    t.false(existsSync(join(dir, 'out')));
  });
});

test('a FERRY-SEED.json whose machine, item, kind, time or sources were edited stops the import, naming what differs; nothing is imported', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'f'), 'x');
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    const disk = join(dir, 'd1');
    t.is((await ferry(['seed', '--vault', vault, '--item', 'it', '--kind', 'files', '--disk', disk, src, '--quiet'], { env })).code, 0);
    const file = join(disk, 'FERRY-SEED.json');
    const original = await readFile(file, 'utf8');
    const edits: [string, (m: Record<string, unknown>) => void][] = [
      ['machine', (m) => (m.machine = 'evil')],
      ['item', (m) => (m.item = 'other')],
      ['kind', (m) => (m.kind = 'volume')],
      ['time', (m) => ((m.params as { time: string }).time = '2001-01-01T00:00:00.000Z')],
      ['sources', (m) => (m.sources = ['/etc'])],
    ];
    for (const [what, edit] of edits) {
      const m = JSON.parse(original) as Record<string, unknown>;
      edit(m);
      await writeFile(file, JSON.stringify(m, null, 2));
      const r = await ferry(['import', '--vault', vault, disk], { env });
      t.is(r.code, 1, `${what}: ${r.stderr}`);
      t.regex(r.stderr, new RegExp(`says ${what} .*the seed's sealed record .*nothing was imported from it`), what);
      t.is((await ferry(['points', '--vault', vault, '--json'], { env })).stdout.toString().includes('"seq"'), false);
    }
    await writeFile(file, original);
    t.is((await ferry(['import', '--vault', vault, disk, '--quiet'], { env })).code, 0);
  });
});
