// The real CLI (node bin/ferry) for init and key: exit codes, one-line
// errors, passphrase sources, and "a wrong passphrase writes nothing".
import test from 'ava';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openVault } from '../vault/vault.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FERRY = join(ROOT, 'bin/ferry');
const P1 = 'correct horse battery staple';
const P2 = 'another long enough passphrase';
const FAST = ['--kdf-log-n', '10'];

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function ferry(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const fullEnv: NodeJS.ProcessEnv = { ...process.env, FERRY_PASSPHRASE: undefined, FERRY_NEW_PASSPHRASE: undefined, ...env };
    for (const k of Object.keys(fullEnv)) if (fullEnv[k] === undefined) delete fullEnv[k];
    // stdin is not a terminal here: ferry must never wait for a prompt.
    const child = spawn(process.execPath, [FERRY, ...args], { env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const made: string[] = [];
test.after.always(async () => {
  await Promise.all(made.map((d) => fs.rm(d, { recursive: true, force: true })));
});

async function tempDir(label: string): Promise<string> {
  const d = await fs.mkdtemp(join(tmpdir(), `ferry-cli-${label}-`));
  made.push(d);
  return d;
}

/** Every entry under dir with its type, size, mtime and content hash. */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string) => {
    const abs = join(dir, rel);
    const st = await fs.lstat(abs);
    if (st.isDirectory()) {
      out.push(`${rel}/ ${st.mtimeMs}`);
      for (const e of (await fs.readdir(abs)).sort()) await walk(join(rel, e));
    } else {
      const h = createHash('sha256').update(await fs.readFile(abs)).digest('hex');
      out.push(`${rel} ${st.size} ${st.mtimeMs} ${h}`);
    }
  };
  await walk('.');
  return out;
}

async function newVault(label: string): Promise<{ dir: string; id: string }> {
  const dir = join(await tempDir(label), 'vault');
  const r = await ferry(['init', dir, '--json', ...FAST], { FERRY_PASSPHRASE: P1 });
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  return { dir, id: JSON.parse(r.stdout).vault.id };
}

function oneLine(t: import('ava').ExecutionContext, stderr: string): void {
  t.is(stderr.trimEnd().split('\n').length, 1, `one line: ${stderr}`);
  t.regex(stderr, /^ferry: /);
  t.notRegex(stderr, /at .*\.js:\d+/, 'no stack trace');
}

test('init creates the vault and prints its id; --json is one document', async (t) => {
  const base = await tempDir('init');
  const dir = join(base, 'new/vault');
  // The real default KDF cost, once.
  const r = await ferry(['init', dir], { FERRY_PASSPHRASE: P1 });
  t.is(r.code, 0, r.stderr);
  const m = /created vault ([0-9a-f]{32}) at (.*)/.exec(r.stdout);
  t.truthy(m, r.stdout);
  const cfg = JSON.parse(await fs.readFile(join(dir, 'vault.json'), 'utf8'));
  t.is(cfg.id, m![1]);
  t.deepEqual([cfg.keys[0].kdf.N, cfg.keys[0].kdf.r, cfg.keys[0].kdf.p], [2 ** 15, 8, 6]);

  const j = await ferry(['init', join(base, 'other'), '--json', ...FAST, '--compression', 'deflate', '--level', '5'], { FERRY_PASSPHRASE: P1 });
  t.is(j.code, 0, j.stderr);
  const doc = JSON.parse(j.stdout);
  t.regex(doc.vault.id, /^[0-9a-f]{32}$/);
  t.deepEqual(doc.vault.defaults, { codec: 'deflate', level: 5 });
  t.is(doc.vault.keys.length, 1);
});

test('init refuses a non-empty directory, an existing vault and a short passphrase', async (t) => {
  const base = await tempDir('refuse');
  await fs.writeFile(join(base, 'precious.txt'), 'do not touch');
  const before = await snapshot(base);
  const r = await ferry(['init', base, ...FAST], { FERRY_PASSPHRASE: P1 });
  t.is(r.code, 1);
  oneLine(t, r.stderr);
  t.regex(r.stderr, /not empty and is not a vault/);
  t.deepEqual(await snapshot(base), before);

  const { dir } = await newVault('twice');
  const snap = await snapshot(dir);
  const again = await ferry(['init', dir, ...FAST], { FERRY_PASSPHRASE: P1 });
  t.is(again.code, 1);
  t.regex(again.stderr, /already a ferry vault/);
  t.deepEqual(await snapshot(dir), snap);
  // the folder is judged before a passphrase is asked for (none given here: no prompt, no "no passphrase")
  const noPass = await ferry(['init', dir, ...FAST], {});
  t.is(noPass.code, 1);
  t.regex(noPass.stderr, /already a ferry vault/);

  const short = await ferry(['init', join(base, 'x'), ...FAST], { FERRY_PASSPHRASE: 'only 15 chars!!' });
  t.is(short.code, 2);
  t.regex(short.stderr, /at least 16/);
  await t.throwsAsync(fs.stat(join(base, 'x')));

  const badCodec = await ferry(['init', join(base, 'y'), '--compression', 'lz4'], { FERRY_PASSPHRASE: P1 });
  t.is(badCodec.code, 2);
});

test('wrong passphrase: exit 12, one line, nothing written', async (t) => {
  const { dir } = await newVault('wrong');
  const fresh = join(await tempDir('wrong-new'), 'p');
  await fs.writeFile(fresh, P2 + '\n');
  const slot = JSON.parse(await fs.readFile(join(dir, 'vault.json'), 'utf8')).keys[0].id;
  // Let mtimes tick, so a rewrite would show even with identical bytes.
  await new Promise((r) => setTimeout(r, 20));
  const before = await snapshot(dir);
  for (const args of [
    ['key', 'list', '--vault', dir],
    ['key', 'add', '--vault', dir, '--new-passphrase-file', fresh, ...FAST],
    ['key', 'remove', slot, '--vault', dir],
    ['key', 'add', '--vault', dir, '--break-lock', '--new-passphrase-file', fresh, ...FAST],
  ]) {
    const r = await ferry(args, { FERRY_PASSPHRASE: 'this is not the passphrase' });
    t.is(r.code, 12, `${args.join(' ')}: ${r.stderr}`);
    oneLine(t, r.stderr);
    t.regex(r.stderr, /wrong passphrase/);
    t.is(r.stdout, '');
    t.deepEqual(await snapshot(dir), before, `${args.join(' ')} wrote something`);
  }
  const json = await ferry(['key', 'list', '--vault', dir, '--json'], { FERRY_PASSPHRASE: 'this is not the passphrase' });
  t.is(json.code, 12);
  t.is(JSON.parse(json.stdout).error.code, 'WRONG_PASSPHRASE');
});

test('no vault: exit 10 saying to run ferry init; no passphrase: exit 2 saying how to give one', async (t) => {
  const base = await tempDir('none');
  const r = await ferry(['key', 'list', '--vault', join(base, 'nothing')], { FERRY_PASSPHRASE: P1 });
  t.is(r.code, 10);
  oneLine(t, r.stderr);
  t.regex(r.stderr, /run `ferry init /);
  const empty = await ferry(['key', 'list', '--vault', base]);
  t.is(empty.code, 10, 'the missing vault is reported before asking for a passphrase');

  const { dir } = await newVault('nopass');
  const n = await ferry(['key', 'list', '--vault', dir]);
  t.is(n.code, 2);
  oneLine(t, n.stderr);
  t.regex(n.stderr, /FERRY_PASSPHRASE.*--passphrase-file.*--passphrase-command/);
});

test('passphrase from a file (one newline stripped), a command, or the environment; flags beat the environment', async (t) => {
  const { dir } = await newVault('sources');
  const base = await tempDir('pf');
  const ok = async (args: string[], env: Record<string, string> = {}) => {
    const r = await ferry(['key', 'list', '--vault', dir, ...args], env);
    t.is(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
  };
  const fail = async (args: string[], code: number, env: Record<string, string> = {}) => {
    const r = await ferry(['key', 'list', '--vault', dir, ...args], env);
    t.is(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    oneLine(t, r.stderr);
  };
  await fs.writeFile(join(base, 'lf'), P1 + '\n');
  await fs.writeFile(join(base, 'crlf'), P1 + '\r\n');
  await fs.writeFile(join(base, 'bare'), P1);
  await fs.writeFile(join(base, 'two'), P1 + '\n\n');
  await ok(['--passphrase-file', join(base, 'lf')]);
  await ok(['--passphrase-file', join(base, 'crlf')]);
  await ok(['--passphrase-file', join(base, 'bare')]);
  await fail(['--passphrase-file', join(base, 'two')], 12);
  await fail(['--passphrase-file', join(base, 'missing')], 2);
  await ok(['--passphrase-command', `printf '%s\\n' '${P1}'`]);
  await ok(['--passphrase-command', `cat ${join(base, 'lf')}`]);
  await fail(['--passphrase-command', 'exit 3'], 2);
  await fail(['--passphrase-command', 'true'], 2);
  await fail(['--passphrase-file', join(base, 'lf'), '--passphrase-command', 'true'], 2);
  await ok(['--passphrase-file', join(base, 'lf')], { FERRY_PASSPHRASE: 'the wrong one, from the environment' });
  await ok([], { FERRY_PASSPHRASE: P1 });
});

test('key add, list and remove', async (t) => {
  const { dir, id } = await newVault('flow');
  const base = await tempDir('flow-p');
  await fs.writeFile(join(base, 'p2'), P2 + '\n');

  const add = await ferry(['key', 'add', '--vault', dir, '--new-passphrase-file', join(base, 'p2'), '--json', ...FAST], { FERRY_PASSPHRASE: P1 });
  t.is(add.code, 0, add.stderr);
  const added = JSON.parse(add.stdout).added;
  t.regex(added.id, /^[0-9a-f]{16}$/);
  t.deepEqual(added.kdf, { name: 'scrypt', N: 1024, r: 8, p: 1 });

  const list1 = JSON.parse((await ferry(['key', 'list', '--vault', dir, '--json'], { FERRY_PASSPHRASE: P2 })).stdout);
  t.is(list1.vault, id);
  t.is(list1.keys.length, 2);
  const [first, second] = list1.keys;
  t.false(first.current);
  t.true(second.current, 'the new passphrase opens the new slot');
  t.is(second.id, added.id);
  for (const k of list1.keys) t.deepEqual(Object.keys(k).sort(), ['created', 'current', 'id', 'kdf']);

  const human = await ferry(['key', 'list', '--vault', dir], { FERRY_PASSPHRASE: P1 });
  t.regex(human.stdout, new RegExp(`\\* ${first.id}`));
  t.regex(human.stdout, /scrypt N=2\^10 r=8 p=1/);

  // The slot in use cannot go; with the other passphrase it can.
  const inUse = await ferry(['key', 'remove', first.id, '--vault', dir], { FERRY_PASSPHRASE: P1 });
  t.is(inUse.code, 1);
  oneLine(t, inUse.stderr);
  t.regex(inUse.stderr, /unlock with a passphrase that stays/);
  const unknown = await ferry(['key', 'remove', 'ffffffffffffffff', '--vault', dir], { FERRY_PASSPHRASE: P1 });
  t.is(unknown.code, 2);
  const rm = await ferry(['key', 'remove', first.id, '--vault', dir], { FERRY_PASSPHRASE: P2 });
  t.is(rm.code, 0, rm.stderr);
  t.regex(rm.stdout, /removed key slot .*1 left/);
  const gone = await ferry(['key', 'list', '--vault', dir], { FERRY_PASSPHRASE: P1 });
  t.is(gone.code, 12, 'the removed passphrase no longer opens the vault');
  const last = await ferry(['key', 'remove', second.id, '--vault', dir], { FERRY_PASSPHRASE: P2 });
  t.is(last.code, 1);
  t.regex(last.stderr, /only one/);

  // A new passphrase that is too short is refused before anything is written.
  await fs.writeFile(join(base, 'short'), 'short\n');
  const snap = await snapshot(dir);
  const short = await ferry(['key', 'add', '--vault', dir, '--new-passphrase-file', join(base, 'short')], { FERRY_PASSPHRASE: P2 });
  t.is(short.code, 2);
  t.regex(short.stderr, /at least 16/);
  t.deepEqual(await snapshot(dir), snap);
  // Without a new passphrase and no terminal: usage error.
  const none = await ferry(['key', 'add', '--vault', dir], { FERRY_PASSPHRASE: P2 });
  t.is(none.code, 2);
  t.regex(none.stderr, /FERRY_NEW_PASSPHRASE/);
  const env = await ferry(['key', 'add', '--vault', dir, ...FAST], { FERRY_PASSPHRASE: P2, FERRY_NEW_PASSPHRASE: P1 });
  t.is(env.code, 0, env.stderr);
});

test('a locked vault: exit 11 naming the holder; --break-lock goes on with a warning', async (t) => {
  const { dir } = await newVault('locked');
  const base = await tempDir('locked-p');
  await fs.writeFile(join(base, 'p2'), P2);
  const holder = await openVault(dir, { passphrase: P1, writable: true, command: 'backup', lock: { refreshMs: 0 } });
  try {
    const r = await ferry(['key', 'add', '--vault', dir, '--new-passphrase-file', join(base, 'p2'), ...FAST], { FERRY_PASSPHRASE: P1 });
    t.is(r.code, 11, r.stderr);
    oneLine(t, r.stderr);
    t.true(r.stderr.includes(`pid ${process.pid} on ${hostname()}`), r.stderr);
    t.regex(r.stderr, /ferry backup/);
    t.regex(r.stderr, /--break-lock/);
    // Readers are not held back.
    t.is((await ferry(['key', 'list', '--vault', dir], { FERRY_PASSPHRASE: P1 })).code, 0);

    const b = await ferry(['key', 'add', '--vault', dir, '--break-lock', '--new-passphrase-file', join(base, 'p2'), ...FAST], { FERRY_PASSPHRASE: P1 });
    t.is(b.code, 0, b.stderr);
    t.regex(b.stderr, /warning: breaking the lock/);
    await holder.lock.refresh();
    t.true(holder.lock.lost);
  } finally {
    await holder.close();
  }
});

/** Runs ferry on a pseudo-terminal (util-linux `script`), answering each prompt when it appears. */
function ferryOnTty(args: string[], answers: Array<[RegExp, string]>, env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const cmd = [process.execPath, FERRY, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
    const fullEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
    delete fullEnv.FERRY_PASSPHRASE;
    delete fullEnv.FERRY_NEW_PASSPHRASE;
    const child = spawn('script', ['-q', '-e', '-c', cmd, '/dev/null'], { env: fullEnv, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let answered = 0;
    child.stdout.on('data', (c) => {
      stdout += c;
      // Answer only once the prompt is shown: by then ferry has turned echo off.
      while (answered < answers.length && answers[answered][0].test(stdout)) {
        child.stdin.write(answers[answered][1] + '\r');
        answered++;
      }
    });
    child.on('error', reject);
    child.on('close', (code) => {
      child.stdin.destroy();
      resolve({ code, stdout, stderr: '' });
    });
  });
}

// util-linux `script` (Debian's bsdutils, an essential package) gives ferry a terminal.
test('on a terminal: prompts without echo, twice for a new passphrase', async (t) => {
  const base = await tempDir('tty');
  const secret = 'typed at a terminal 42';
  const mismatch = await ferryOnTty(['init', join(base, 'a'), ...FAST], [
    [/passphrase for the new vault/, secret],
    [/again, to confirm/, secret + 'x'],
  ]);
  t.is(mismatch.code, 2, mismatch.stdout);
  t.regex(mismatch.stdout, /differ/);
  await t.throwsAsync(fs.stat(join(base, 'a/vault.json')));

  // too short: said before it is asked for again
  const short = await ferryOnTty(['init', join(base, 's'), ...FAST], [[/passphrase for the new vault/, 'short']]);
  t.is(short.code, 2, short.stdout);
  t.regex(short.stdout, /5 characters; use at least 16/);
  t.false(short.stdout.includes('again, to confirm'), short.stdout);

  const ok = await ferryOnTty(['init', join(base, 'b'), ...FAST], [
    [/passphrase for the new vault/, secret],
    [/again, to confirm/, secret],
  ]);
  t.is(ok.code, 0, ok.stdout);
  t.regex(ok.stdout, /created vault/);
  t.false(ok.stdout.includes(secret), 'the passphrase is not echoed');

  const list = await ferryOnTty(['key', 'list', '--vault', join(base, 'b')], [[/vault passphrase: /, secret]]);
  t.is(list.code, 0, list.stdout);
  t.regex(list.stdout, /1 key slot/);
  t.false(list.stdout.includes(secret));
});

test('--version prints the package version; Ctrl-C stops a command with one line and exit 130', async (t) => {
  const pkg = JSON.parse(await fs.readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const v = await ferry(['--version']);
  t.is(v.code, 0);
  t.is(v.stdout.trim(), pkg.version);

  const base = await tempDir('sigint');
  const dir = join(base, 'vault');
  t.is((await ferry(['init', dir, ...FAST], { FERRY_PASSPHRASE: P1 })).code, 0);
  // a passphrase command that takes its time: ferry waits in it when the signal comes
  // (it leaves a mark when it starts, so the signal comes then however slow the start under load)
  const mark = join(base, 'asked');
  const child = spawn(process.execPath, [FERRY, 'key', 'list', '--vault', dir, '--passphrase-command', `touch '${mark}'; sleep 5; echo '${P1}'`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  child.stdout.resume();
  for (let i = 0; i < 300 && !existsSync(mark); i++) await new Promise((r) => setTimeout(r, 50));
  t.true(existsSync(mark), 'the passphrase command ran');
  child.kill('SIGINT');
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  t.is(code, 130);
  t.is(stderr.trim(), 'ferry: interrupted (SIGINT); run the same command again to go on');
});

test('key add refuses a passphrase that already opens a slot, and changes nothing', async (t) => {
  const { dir } = await newVault('dup');
  const base = await tempDir('dup-p');
  await fs.writeFile(join(base, 'same'), P1 + '\n');
  const before = await fs.readFile(join(dir, 'vault.json'));
  const r = await ferry(['key', 'add', '--vault', dir, '--new-passphrase-file', join(base, 'same'), ...FAST], { FERRY_PASSPHRASE: P1 });
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /^ferry: that passphrase already opens key slot [0-9a-f]{16} of .*; nothing changed\n$/);
  t.true((await fs.readFile(join(dir, 'vault.json'))).equals(before));
});

test('--json, --quiet and --verbose go before the command too; a usage error that commander finds prints the error document under --json', async (t) => {
  const { dir } = await newVault('globals');
  const before = await ferry(['--json', 'key', 'list', '--vault', dir], { FERRY_PASSPHRASE: P1 });
  t.is(before.code, 0, before.stderr);
  t.is(JSON.parse(before.stdout).keys.length, 1);
  const quiet = await ferry(['-q', 'key', 'list', '--vault', dir], { FERRY_PASSPHRASE: P1 });
  t.is(quiet.code, 0, quiet.stderr);
  // quiet keeps the listing asked for, not the summary line
  t.regex(quiet.stdout.toString(), /^\* [0-9a-f]{16}  created \S+  scrypt N=2\^\d+ r=\d+ p=\d+\n$/);
  t.false(quiet.stdout.toString().includes('key slot'));
  const bad = await ferry(['key', 'list', '--vault', dir, '--json', '--bogus'], { FERRY_PASSPHRASE: P1 });
  t.is(bad.code, 2);
  t.deepEqual(JSON.parse(bad.stdout), { error: { code: 'USAGE', message: "unknown option '--bogus'" } });
  oneLine(t, bad.stderr);
});
