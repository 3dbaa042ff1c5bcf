// Review of the restore hardening (a6605b8, 282322f): the helper's 'x' op
// (xattrs of security.* / trusted.* set on the inode the writer wrote), owners
// and modes of an existing equal file set through its descriptor, the
// open-file limit, a restore as a user other than root. Needs root (setcap,
// runuser, python3 for a writable mapping).
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { walk } from '../source/files.js';
import { MemDisk } from '../format/memdisk.js';
import { writeVolume, VolumeReader } from '../format/volume/index.js';
import { restoreFiles, type RestoreOptions } from '../restore/files.js';
import type { VolumeEntry } from '../format/volume/catalog.js';
import { snapshotTree, diffSnapshots } from './helpers/tree.js';

const GiB = 1024 ** 3;
const DIST = join(fileURLToPath(import.meta.url), '..', '..');
const NOBODY = Number(spawnSync('id', ['-u', 'nobody']).stdout.toString().trim());

async function withTmp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-hardening-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function backup(src: string): Promise<VolumeReader> {
  const disk = new MemDisk(2040 * GiB);
  await writeVolume(disk, walk([src]), {});
  return VolumeReader.open(disk);
}

function must(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { input: input ?? '' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout.toString();
}

/** Every xattr of `p` (not following a symlink), hex values, without the "# file" line. */
function xattrsOf(p: string): string {
  const r = spawnSync('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', '--', p]);
  return r.stdout.toString().split('\n').filter((l) => l && !l.startsWith('# file')).sort().join('\n');
}

async function restore(reader: VolumeReader, opts: RestoreOptions) {
  const warnings: string[] = [];
  const r = await restoreFiles(reader, { ...opts, onWarning: (w) => warnings.push(`${w.code}: ${w.message}`) });
  return { r, warnings };
}

/** A reader whose entries have `patch` applied (to put values in a backup the kernel would refuse at the source). */
function patched(reader: VolumeReader, patch: (e: VolumeEntry) => VolumeEntry): VolumeReader {
  return new Proxy(reader, {
    get(target, prop) {
      if (prop === 'entries') {
        return function* (opts?: { under?: Buffer | string }) {
          for (const e of target.entries(opts)) yield patch(e);
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

// ---------------------------------------------------------------- 1. security.capability, three ways


// ---------------------------------------------------------------- 2. the 'x' op with every kind of value



// ---------------------------------------------------------------- 3. an inode number is not the file


// ---------------------------------------------------------------- 4. an equal file another user still has mapped for writing

test('SECURITY: --if-exists overwrite on an equal file another user made and still has mapped writable in a folder they can write: it must not become root\'s setuid program they can change', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    mkdirSync(src);
    const content = Buffer.alloc(4096, 0x41);
    writeFileSync(join(src, 'tool'), content);
    chmodSync(join(src, 'tool'), 0o4755); // root's setuid program, backed up from a folder its user can write
    const reader = await backup(src);
    const to = join(dir, 'to');
    const home = join(to, src);
    mkdirSync(home, { recursive: true });
    chmodSync(home, 0o777);
    chmodSync(dir, 0o755);
    const tool = join(home, 'tool');
    writeFileSync(tool, content, { mode: 0o644 });
    chownSync(tool, NOBODY, NOBODY);
    const py = join(dir, 'map.py');
    writeFileSync(py, "import mmap, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\nm = mmap.mmap(fd, 0)\nprint('ready', flush=True)\nsys.stdin.readline()\nm[0:4] = b'PWND'\nm.flush()\nprint('done', flush=True)\n");
    chmodSync(py, 0o644);
    const child = spawn('runuser', ['-u', 'nobody', '--', '/usr/bin/python3', py, tool], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    const saw = (s: string) => new Promise<void>((resolve) => {
      const check = () => (out.includes(s) ? resolve() : undefined);
      child.stdout.on('data', (d) => ((out += d), check()));
      check();
    });
    await saw('ready');
    const { r, warnings } = await restore(reader, { to, ifExists: 'overwrite' });
    t.log(r, warnings);
    child.stdin.write('go\n');
    await saw('done');
    await new Promise((res) => child.on('close', res));
    const st = lstatSync(tool);
    const now = readFileSync(tool);
    t.log(`uid ${st.uid} mode ${(st.mode & 0o7777).toString(8)} starts ${now.subarray(0, 4)}`);
    t.false(st.uid === 0 && (st.mode & 0o4000) !== 0 && !now.equals(content), 'a root setuid program whose content another user changed after the restore');
    reader.close();
  });
});

// ---------------------------------------------------------------- 5. a folder's xattrs still go by name


// ---------------------------------------------------------------- 6. as a user other than root, with xattrs

/** Runs a restore of `src` to `to` in a node child (`prefix`: the command before node); its result and warnings. */
function childRestore(prefix: string[], src: string, to: string, dir: string): Promise<{ code: number | null; out: string; err: string }> {
  const script = join(dir, 'child.mjs');
  const u = (p: string) => pathToFileURL(join(DIST, p)).href;
  writeFileSync(script, `
import { readFileSync } from 'node:fs';
import { walk } from '${u('source/files.js')}';
import { MemDisk } from '${u('format/memdisk.js')}';
import { writeVolume, VolumeReader } from '${u('format/volume/index.js')}';
import { restoreFiles } from '${u('restore/files.js')}';
const limit = /^Max open files.*$/m.exec(readFileSync('/proc/self/limits', 'utf8'))[0];
const disk = new MemDisk(2040 * 1024 ** 3);
await writeVolume(disk, walk([${JSON.stringify(src)}]), {});
const reader = await VolumeReader.open(disk);
const warnings = [];
const r = await restoreFiles(reader, { to: ${JSON.stringify(to)}, ifExists: 'overwrite', onWarning: (w) => warnings.push(w.code + ': ' + w.message) });
reader.close();
console.log(JSON.stringify({ limit, r, warnings }));
`);
  chmodSync(script, 0o644);
  return new Promise((resolve) => {
    const c = spawn(prefix[0], [...prefix.slice(1), process.execPath, script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    c.on('close', (code) => resolve({ code, out, err }));
  });
}

test('a restore as nobody into its own folder restores user.* xattrs of files and folders (the helpers reach its /proc/<pid>/fd)', async (t) => {
  await withTmp(async (dir) => {
    chmodSync(dir, 0o755);
    const src = join(dir, 'src');
    mkdirSync(join(src, 'd1', 'd2'), { recursive: true });
    for (const [f, v] of [['a', 'one'], ['d1/b', 'two'], ['d1/d2/c', '']] as const) {
      writeFileSync(join(src, f), `${f}\n`);
      must('setfattr', ['-n', 'user.v', ...(v ? ['-v', v] : []), join(src, f)]);
    }
    must('setfattr', ['-n', 'user.dir', '-v', '0x00ff', join(src, 'd1')]);
    must('chown', ['-R', `${NOBODY}:${NOBODY}`, src]);
    const to = join(dir, 'to');
    mkdirSync(to);
    chownSync(to, NOBODY, NOBODY);
    const { code, out, err } = await childRestore(['runuser', '-u', 'nobody', '--'], src, to, dir);
    t.is(code, 0, err);
    const { r, warnings } = JSON.parse(out);
    t.deepEqual(warnings, []);
    t.is(r.failed, 0);
    t.deepEqual(diffSnapshots(await snapshotTree(src), await snapshotTree(join(to, src))), []);
  });
});

// ---------------------------------------------------------------- 7. a low open-file limit

