// Found by a reviewer's walk through the CLI: an option left without its
// value swallowed the next option; --quiet hid the listing itself of points
// and key list; a stale lock removed was called a warning (exit 0, none in
// --json); an interrupted command printed no JSON document; a vault.json
// without "format" was said to have one that "is undefined"; and check
// missed an item whose definition is gone.
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FERRY, ferry, withTmp, type Result } from './helpers/exec.js';
import { openVault } from '../vault/vault.js';

const PASSPHRASE = 'cli ux review passphrase, long enough';
const env = { FERRY_PASSPHRASE: PASSPHRASE };

async function ok(args: string[], cwd?: string): Promise<Result> {
  const r = await ferry(args, { env, cwd });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}

/** A vault in `dir` holding a small tree as item m/it (seeded onto d1 and imported). */
async function backedUp(dir: string): Promise<{ vault: string; disk: string }> {
  const vault = join(dir, 'vault');
  const src = join(dir, 'src');
  const disk = join(dir, 'd1');
  await mkdir(join(src, 'a'), { recursive: true });
  await writeFile(join(src, 'a', 'f1'), randomBytes(200_000));
  await writeFile(join(src, 'hello.txt'), 'hello\n');
  await ok(['init', vault, '--kdf-log-n', '12', '-q']);
  await ok(['seed', '--vault', vault, '--item', 'it', '--machine', 'm', '--kind', 'files', '--disk', disk, src, '-q']);
  await ok(['import', '--vault', vault, disk, '-q']);
  return { vault, disk };
}

/** stderr is exactly one line, and it is `line`. */
function oneLine(t: ExecutionContext, stderr: string, line: string | RegExp): void {
  t.true(stderr.endsWith('\n') && stderr.indexOf('\n') === stderr.length - 1, `one line: ${JSON.stringify(stderr)}`);
  if (typeof line === 'string') t.is(stderr, line + '\n');
  else t.regex(stderr.trimEnd(), line);
}

test('an option given no value does not take the next option as its value: usage error, exit 2, one line naming it', async (t) => {
  await withTmp(async (dir) => {
    await mkdir(join(dir, 'src'));
    const seed = await ferry(['seed', '--vault', 'v1', '--item', 'q', '--kind', 'files', '--disk', '--disk-capacity', '3M', 'src'], { env, cwd: dir });
    t.is(seed.code, 2, seed.stderr);
    oneLine(t, seed.stderr, 'ferry: option --disk needs a value (got --disk-capacity)');
    t.false(existsSync(join(dir, '--disk-capacity')), 'no folder named after the option');
    t.is(seed.stdout.length, 0);

    const r1 = await ferry(['restore', '--vault', '--item', 'home', '--to', 'x'], { env, cwd: dir });
    t.is(r1.code, 2, r1.stderr);
    oneLine(t, r1.stderr, 'ferry: option --vault needs a value (got --item)');

    const r2 = await ferry(['restore', '--vault', 'v1', '--item', 'home', '--to', '--path', '/x'], { env, cwd: dir });
    t.is(r2.code, 2, r2.stderr);
    oneLine(t, r2.stderr, 'ferry: option --to needs a value (got --path)');

    // one of the command's short flags is no value either; under --json, the usage document
    const r3 = await ferry(['key', 'list', '--vault', '-q', '--json'], { env, cwd: dir });
    t.is(r3.code, 2, r3.stderr);
    t.deepEqual(JSON.parse(r3.stdout.toString()), { error: { code: 'USAGE', message: 'option --vault needs a value (got -q)' } });
    oneLine(t, r3.stderr, 'ferry: option --vault needs a value (got -q)');
    t.false(existsSync(join(dir, '-q')));
  });
});

test('a value that starts with -- is taken when given as --opt=--value; a lone - and a negative number are values', async (t) => {
  await withTmp(async (dir) => {
    const { vault } = await backedUp(dir);
    // --to=--out: a folder of that name, as asked
    const r = await ferry(['restore', '--vault', vault, '--item', 'it', '--machine', 'm', '--to=--out', '-q'], { env, cwd: dir });
    t.is(r.code, 0, r.stderr);
    t.true(existsSync(join(dir, '--out')));
    // taken as the item's name (and refused as one): not a missing value
    const lone = await ferry(['points', '--vault', vault, '--item', '-'], { env, cwd: dir });
    t.is(lone.code, 2);
    oneLine(t, lone.stderr, 'ferry: --item "-" is not valid: use letters, digits and . _ - @ + (up to 128)');
    const neg = await ferry(['vhd', 'cat', '--vault', vault, '--disk', 'x', '--offset', '-1'], { env, cwd: dir });
    t.is(neg.code, 2, neg.stderr);
    t.false(neg.stderr.includes('needs a value'), neg.stderr);
  });
});

test('--quiet keeps the listing asked for (points, key list, vhd info) and drops the summaries', async (t) => {
  await withTmp(async (dir) => {
    const { vault } = await backedUp(dir);
    const points = await ok(['points', '--vault', vault, '-q']);
    const lines = points.stdout.toString().trimEnd().split('\n');
    t.is(lines.length, 2, points.stdout.toString());
    t.is(lines[0], 'seq\ttime\tmachine\titem\tkind\tsource\tsize');
    t.regex(lines[1], /^1\t\S+\tm\tit\tfiles\tseed\t/);
    t.is(points.stderr, '');

    const keys = await ok(['key', 'list', '--vault', vault, '-q']);
    t.regex(keys.stdout.toString(), /^\* [0-9a-f]{16} {2}created \S+ {2}scrypt N=2\^12 r=8 p=\d+\n$/);
    t.false(keys.stdout.toString().includes('key slot'), 'the count is a summary: left out');
    // without -q, the count too
    t.regex((await ok(['key', 'list', '--vault', vault])).stdout.toString(), /^vault [0-9a-f]{32}: 1 key slot\n\* /);

    // with no points, the "no recovery points" line is a summary: nothing
    const none = await ok(['points', '--vault', vault, '--item', 'nothing', '-q']);
    t.is(none.stdout.toString(), '');

    const vhd = join(dir, 'a.vhd');
    await ok(['vhd', 'create', vhd, '--size', '10M', '-q']);
    const info = await ok(['vhd', 'info', vhd, '-q']);
    t.regex(info.stdout.toString(), /^\S*a\.vhd\n {2}type dynamic, virtual size \d+ bytes/);
  });
});

/** A pid no process has now (a child that has exited). */
async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((r) => child.on('exit', r));
  return child.pid!;
}

/** Leaves the vault's writer lock as a `kill -9` of a ferry on this host does: held by a process that is gone. */
async function leaveStaleLock(vault: string, pid: number): Promise<void> {
  const w = await openVault(vault, { passphrase: PASSPHRASE, writable: true, command: 'import', lock: { pid, refreshMs: 0 } });
  const lock = await readFile(join(vault, 'locks', 'writer'));
  await w.close();
  await writeFile(join(vault, 'locks', 'writer'), lock);
}

test('a stale lock of a process that is gone is removed with a note, not a warning: exit 0, and in --json under notes', async (t) => {
  await withTmp(async (dir) => {
    const { vault, disk } = await backedUp(dir);
    const pid = await deadPid();
    await leaveStaleLock(vault, pid);
    const r = await ferry(['import', '--vault', vault, disk, '-v'], { env });
    t.is(r.code, 0, r.stderr);
    t.regex(r.stderr, new RegExp(`^ferry: note: removed a stale lock on \\S+: pid ${pid} on \\S+ since \\S+ \\(ferry import\\) is no longer running\\n`));
    t.false(r.stderr.includes('warning'), r.stderr);
    t.false(existsSync(join(vault, 'locks', 'writer')), 'and released after');

    await leaveStaleLock(vault, pid);
    const j = await ferry(['import', '--vault', vault, disk, '--json'], { env });
    t.is(j.code, 0, j.stderr);
    const doc = JSON.parse(j.stdout.toString());
    t.is(doc.notes?.length, 1, j.stdout.toString());
    t.regex(doc.notes[0].message, new RegExp(`^removed a stale lock on \\S+: pid ${pid} .* is no longer running$`));
    t.is(doc.imported.length, 1, 'the document is the import\'s own');
    t.false(j.stderr.includes('warning'), j.stderr);

    // --quiet: no note (it is no warning)
    await leaveStaleLock(vault, pid);
    const q = await ferry(['import', '--vault', vault, disk, '-q'], { env });
    t.is(q.code, 0, q.stderr);
    t.is(q.stderr, '');
  });
});

/** Starts `ferry args`, waits until `started()` says it is working, sends `sig`; its exit code and output. */
async function interrupt(args: string[], started: () => boolean, sig: NodeJS.Signals): Promise<{ code: number | null; stdout: string; stderr: string; early: boolean }> {
  const child = spawn(process.execPath, [FERRY, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const closed = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  let done = false;
  void closed.then(() => (done = true));
  try {
    while (!done && !started()) await new Promise((r) => setTimeout(r, 10));
    const early = done;
    if (!done) child.kill(sig);
    return { code: await closed, stdout, stderr, early };
  } finally {
    if (!done) child.kill('SIGKILL');
  }
}

test('--json: a command interrupted midway (SIGINT, SIGTERM) prints one JSON document, the INTERRUPTED error', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'vault');
    const src = join(dir, 'src');
    const disk = join(dir, 'd1');
    await mkdir(src);
    // random, so that sealing it takes a while
    for (let i = 0; i < 24; i++) await writeFile(join(src, `f${i}`), randomBytes(8 * 1024 * 1024));
    await ok(['init', vault, '--kdf-log-n', '12', '-q']);
    const args = ['seed', '--vault', vault, '--item', 'x', '--kind', 'files', '--disk', disk, src, '--json'];
    // the seed's blocks on the disk so far
    const blocks = (): number => {
      const top = join(disk, 'disks');
      try {
        const [id] = readdirSync(top);
        return id === undefined ? 0 : readdirSync(join(top, id, 'blocks')).filter((b) => /^\d+$/.test(b)).length;
      } catch {
        return 0;
      }
    };
    // (the second run resumes the first: working once it has written blocks of its own)
    for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
      const before = blocks();
      const r = await interrupt(args, () => blocks() >= before + 2, sig);
      t.false(r.early, `the seed ended before it could be interrupted: ${r.stderr}`);
      t.is(r.code, code, r.stderr);
      oneLine(t, r.stderr, `ferry: interrupted (${sig}); run the same command again to go on`);
      t.deepEqual(JSON.parse(r.stdout), { error: { code: 'INTERRUPTED', signal: sig, message: `interrupted (${sig}); run the same command again to go on` } });
    }
  });
});

test('a vault.json with no "format" (or no "version") is named as such, never as "undefined"', async (t) => {
  await withTmp(async (dir) => {
    const vault = join(dir, 'v1');
    await ok(['init', vault, '--kdf-log-n', '12', '-q']);
    const good = await readFile(join(vault, 'vault.json'));
    await writeFile(join(vault, 'vault.json'), '{}\n');
    const r = await ferry(['points', '--vault', vault], { env });
    t.is(r.code, 1);
    oneLine(t, r.stderr, `ferry: ${vault}/vault.json is not a ferry vault's config: no "format" field (expected "ferry-vault"); give the vault's own folder, or put back a copy of vault.json saved after the last \`ferry init\` or \`ferry key add|remove\``);
    const j = await ferry(['points', '--vault', vault, '--json'], { env });
    t.is(j.code, 1);
    const doc = JSON.parse(j.stdout.toString());
    t.is(doc.error.code, 'VAULT_CONFIG_BAD');
    t.false(doc.error.message.includes('undefined'), doc.error.message);

    // the format right, no version: damaged (not "a version undefined vault; upgrade ferry")
    await writeFile(join(vault, 'vault.json'), JSON.stringify({ format: 'ferry-vault' }));
    const v = await ferry(['points', '--vault', vault], { env });
    t.is(v.code, 1);
    oneLine(t, v.stderr, /^ferry: \S+\/vault\.json is damaged: no "version" field \(expected 1\); put back a copy of it saved after/);
    t.false(v.stderr.includes('undefined'), v.stderr);

    // another tool's config keeps its message
    await writeFile(join(vault, 'vault.json'), JSON.stringify({ format: 'restic' }));
    oneLine(t, (await ferry(['points', '--vault', vault], { env })).stderr, /is damaged: "format" is "restic", not "ferry-vault"; put back/);

    await writeFile(join(vault, 'vault.json'), good);
    t.is((await ferry(['points', '--vault', vault, '-q'], { env })).code, 0);
  });
});

test('check reports an item whose definition is gone while its points remain: ITEM_MISSING, exit 1', async (t) => {
  await withTmp(async (dir) => {
    const { vault } = await backedUp(dir);
    t.is((await ferry(['check', '--vault', vault], { env })).code, 0);
    await rm(join(vault, 'items', 'm', 'it', 'item'));
    const r = await ferry(['check', '--vault', vault], { env });
    t.is(r.code, 1, r.stderr);
    t.regex(r.stdout.toString(), /: 1 problem in 1 point, /);
    t.is(
      r.stderr,
      'ferry: ITEM_MISSING: item m/it has 1 point but its definition items/m/it/item is missing: its points still restore; put it back from a copy of the vault (same name), else the next import of a seed of m/it writes it again\n',
    );
    const j = await ferry(['check', '--vault', vault, '--json'], { env });
    t.is(j.code, 1);
    const doc = JSON.parse(j.stdout.toString());
    t.deepEqual(doc.problems.map((p: { code: string; object: string }) => [p.code, p.object]), [['ITEM_MISSING', 'items/m/it/item']]);
    // and what the message says: its points still restore
    const back = await ferry(['restore', '--vault', vault, '--item', 'it', '--machine', 'm', '--to', join(dir, 'out'), '-q'], { env });
    t.is(back.code, 0, back.stderr);
  });
});

test('an option of one value given twice with two values is a usage error naming both; the same value twice, and repeatable options, are fine', async (t) => {
  await withTmp(async (dir) => {
    const { vault } = await backedUp(dir);
    const r = await ferry(['points', '--vault', vault, '--vault', join(dir, 'other')], { env });
    t.is(r.code, 2, r.stderr);
    oneLine(t, r.stderr, `ferry: option --vault given twice (${vault} and ${join(dir, 'other')}); give it once`);
    const r2 = await ferry(['restore', '--vault', vault, '--item', 'it', '--item=other', '--to', join(dir, 'o')], { env });
    t.is(r2.code, 2, r2.stderr);
    oneLine(t, r2.stderr, 'ferry: option --item given twice (it and other); give it once');
    t.false(existsSync(join(dir, 'o')));
    t.is((await ferry(['points', '--vault', vault, `--vault=${vault}`], { env })).code, 0);
    const two = await ferry(['restore', '--vault', vault, '--machine', 'm', '--item', 'it', '--to', join(dir, 'p'), '--path', '/nothing-a', '--path', '/nothing-b'], { env });
    t.is(two.code, 1, two.stderr); // both --path taken: neither matches
    t.regex(two.stderr, /nothing-a/);
    t.regex(two.stderr, /nothing-b/);
  });
});
