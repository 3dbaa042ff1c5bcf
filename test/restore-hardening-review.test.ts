// Review of the restore hardening (a6605b8, 282322f): xattrs of security.* /
// trusted.* in folders others can write set on the very entry (a new file by
// the writer through its descriptor, an equal file by the helper's 'x' op,
// folders, symlinks and nodes by its 'X' op), owners
// and modes of an existing equal file set through its descriptor, the
// open-file limit, a restore as a user other than root. Needs root (setcap,
// runuser, python3 for a writable mapping).
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { VolumeReader } from '../format/volume/index.js';
import { backup, xattrsOf, mustSync as must, restoreCollect as restore } from './helpers/volume.js';
import { withTmp } from './helpers/exec.js';
import type { VolumeEntry } from '../format/volume/catalog.js';
import { snapshotTree, diffSnapshots } from './helpers/tree.js';

const DIST = join(fileURLToPath(import.meta.url), '..', '..');
const NOBODY = Number(spawnSync('id', ['-u', 'nobody']).stdout.toString().trim());

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

test('a file with security.capability (setcap) restores with the same xattrs into a new target, an existing 0777 folder, and under overwrite when already equal there (a fresh copy in a folder others can write)', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    mkdirSync(src);
    writeFileSync(join(src, 'ping'), 'a program\n');
    chmodSync(join(src, 'ping'), 0o755);
    must('setcap', ['cap_net_raw+ep', join(src, 'ping')]);
    writeFileSync(join(src, 'plain'), 'no caps\n');
    must('setfattr', ['-n', 'user.note', '-v', 'hello', join(src, 'plain')]);
    const want = xattrsOf(join(src, 'ping'));
    t.regex(want, /security\.capability=0x/);
    const reader = await backup(src);

    // (a) a new target
    const a = join(dir, 'a');
    const ra = await restore(reader, { to: a });
    t.deepEqual(ra.warnings, []);
    t.is(xattrsOf(join(a, src, 'ping')), want, '(a) new target');

    // (b) an existing folder others can write: the helper's 'x' op
    const b = join(dir, 'b');
    mkdirSync(join(b, src), { recursive: true });
    chmodSync(join(b, src), 0o777);
    const rb = await restore(reader, { to: b });
    t.deepEqual(rb.warnings, []);
    t.is(xattrsOf(join(b, src, 'ping')), want, '(b) 0777 folder');
    t.is(xattrsOf(join(b, src, 'plain')), xattrsOf(join(src, 'plain')));

    // (c) the same file already there and equal, without its caps, mode 0644, in a folder others can write:
    // overwrite writes a fresh copy (whoever made that file may still hold it open for writing)
    const c = join(dir, 'c');
    mkdirSync(join(c, src), { recursive: true });
    chmodSync(join(c, src), 0o777);
    writeFileSync(join(c, src, 'ping'), 'a program\n', { mode: 0o644 });
    const ino = lstatSync(join(c, src, 'ping')).ino;
    const rc = await restore(reader, { to: c, ifExists: 'overwrite' });
    t.deepEqual(rc.warnings, []);
    t.not(lstatSync(join(c, src, 'ping')).ino, ino, 'a fresh copy');
    t.is(lstatSync(join(c, src, 'ping')).mode & 0o7777, 0o755);
    t.is(xattrsOf(join(c, src, 'ping')), want, '(c) overwrite, equal, folder others can write');

    // (d) the same in a folder only root can write: left in place, caps set through its descriptor
    const d = join(dir, 'd');
    mkdirSync(join(d, src), { recursive: true });
    chmodSync(join(d, src), 0o755);
    writeFileSync(join(d, src, 'ping'), 'a program\n', { mode: 0o644 });
    const dino = lstatSync(join(d, src, 'ping')).ino;
    const rd = await restore(reader, { to: d, ifExists: 'overwrite' });
    t.deepEqual(rd.warnings, []);
    t.true(rd.r.unchanged >= 1);
    t.is(lstatSync(join(d, src, 'ping')).ino, dino, 'left in place');
    t.is(lstatSync(join(d, src, 'ping')).mode & 0o7777, 0o755);
    t.is(xattrsOf(join(d, src, 'ping')), want, '(d) overwrite, equal, root-only folder');
    reader.close();
  });
});

// ---------------------------------------------------------------- 2. through the writer's descriptor, with every kind of value

test("xattrs set through the writer's descriptor in a 0777 folder: ACLs beside security.*/trusted.*, empty values (also last), values with NUL bytes, 60 xattrs, odd name bytes", async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    mkdirSync(src);
    const files: string[] = [];
    const mk = (name: string, cmds: string[][]) => {
      const p = join(src, name);
      writeFileSync(p, `${name}\n`);
      for (const c of cmds) must(c[0], [...c.slice(1), p]);
      files.push(name);
    };
    // capability first, then an ACL, then an empty value last
    mk('acl-caps', [['setcap', 'cap_net_raw+ep'], ['setfacl', '-m', 'u:nobody:rwx,m::rwx'], ['setfattr', '-n', 'user.zempty']]);
    mk('empty-last', [['setfattr', '-n', 'trusted.t', '-v', '0x00'], ['setfattr', '-n', 'security.empty']]);
    mk('nul-values', [['setfattr', '-n', 'trusted.nul', '-v', '0x610062000000'], ['setfattr', '-n', 'user.nul', '-v', '0x00ff00'], ['setfattr', '-n', 'security.x', '-v', '0x0000']]);
    mk('many', [['setfattr', '-n', 'security.one', '-v', 'v'], ...Array.from({ length: 60 }, (_, i) => ['setfattr', '-n', `user.k${i}`, '-v', `0x${Buffer.from(`v${i}`).toString('hex')}00`])]);
    mk('odd-names', [['setfattr', '-n', 'trusted.a b=c', '-v', 'x'], ['setfattr', '-n', 'user.\\303\\251t\\303\\251', '-v', 'y']]);
    const reader = await backup(src);
    const to = join(dir, 'to');
    mkdirSync(join(to, src), { recursive: true });
    chmodSync(join(to, src), 0o777);
    const { r, warnings } = await restore(reader, { to });
    t.deepEqual(warnings, []);
    t.is(r.failed, 0);
    for (const f of files) t.is(xattrsOf(join(to, src, f)), xattrsOf(join(src, f)), f);
    t.is(must('getfacl', ['-c', '--', join(to, src, 'acl-caps')]), must('getfacl', ['-c', '--', join(src, 'acl-caps')]));
    reader.close();
  });
});

test("xattrs set through the writer's descriptor: a value the kernel refuses as a RESTORE_META warning naming the file, and the other files' xattrs still go on", async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    mkdirSync(src);
    writeFileSync(join(src, 'bad'), 'x\n');
    writeFileSync(join(src, 'good'), 'y\n');
    must('setcap', ['cap_net_raw+ep', join(src, 'good')]);
    const reader = patched(await backup(src), (e) =>
      e.path.toString().endsWith('/bad') ? { ...e, xattrs: [{ name: 'security.capability', value: Buffer.from('0102', 'hex') }] } : e);
    const to = join(dir, 'to');
    mkdirSync(join(to, src), { recursive: true });
    chmodSync(join(to, src), 0o777);
    const { warnings } = await restore(reader, { to });
    t.is(warnings.length, 1, warnings.join('\n'));
    // (the addon's writer names the attribute; setfattr, without the addon, says only why)
    t.regex(warnings[0] ?? '', /RESTORE_META: .*\/bad: cannot set the extended attributes: (security\.capability: EINVAL: invalid argument, fsetxattr|Invalid argument)$/);
    t.is(xattrsOf(join(to, src, 'good')), xattrsOf(join(src, 'good')));
    reader.close();
  });
});

test("the helper's 'X' op in a 0777 folder: security.*/trusted.* xattrs beside ACLs and user.* ones on a folder, a symlink, a fifo and a device node; a value the kernel refuses is a warning naming the entry", async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    mkdirSync(join(src, 'sub'), { recursive: true });
    writeFileSync(join(src, 'sub', 'f'), 'x\n');
    must('setfattr', ['-n', 'security.lbl', '-v', '0x00ff00', join(src, 'sub')]);
    must('setfattr', ['-n', 'user.note', '-v', 'folder', join(src, 'sub')]);
    must('setfacl', ['-d', '-m', 'u:nobody:rx', join(src, 'sub')]);
    must('ln', ['-s', 'nowhere', join(src, 'link')]);
    must('setfattr', ['-h', '-n', 'trusted.l', '-v', 'symlink', join(src, 'link')]);
    must('mkfifo', [join(src, 'fifo')]);
    must('setfattr', ['-n', 'trusted.f', '-v', '', join(src, 'fifo')]);
    must('mknod', [join(src, 'null2'), 'c', '1', '3']);
    must('setfattr', ['-n', 'security.dev', '-v', 'node', join(src, 'null2')]);
    mkdirSync(join(src, 'badsub'));
    const reader = patched(await backup(src), (e) =>
      e.path.toString().endsWith('/badsub') ? { ...e, xattrs: [{ name: 'security.capability', value: Buffer.from('0102', 'hex') }] } : e);
    const to = join(dir, 'to');
    mkdirSync(join(to, src), { recursive: true });
    chmodSync(join(to, src), 0o777);
    const { r, warnings } = await restore(reader, { to });
    t.is(r.failed, 0);
    t.is(warnings.length, 1, warnings.join('\n'));
    t.regex(warnings[0] ?? '', /RESTORE_META: cannot set the extended attributes of .*\/badsub: Invalid argument$/);
    for (const name of ['sub', 'link', 'fifo', 'null2']) {
      t.regex(xattrsOf(join(src, name)), /^(security|trusted)\./m, name);
      t.is(xattrsOf(join(to, src, name)), xattrsOf(join(src, name)), name);
    }
    t.is(must('getfacl', ['-c', '--', join(to, src, 'sub')]), must('getfacl', ['-c', '--', join(src, 'sub')]));
    reader.close();
  });
});

// ---------------------------------------------------------------- 3. an inode number is not the file

test('SECURITY: the restored file unlinked and its inode number reused by another user\'s program before the xattrs are set: the program must not get the backup\'s capabilities', async (t) => {
  await withTmp(async (dir) => {
    chmodSync(dir, 0o755);
    const src = join(dir, 'src');
    mkdirSync(src);
    writeFileSync(join(src, 'a-prog'), 'the real program\n');
    chmodSync(join(src, 'a-prog'), 0o755);
    must('setcap', ['cap_net_raw,cap_sys_admin+ep', join(src, 'a-prog')]);
    // files after it: the helper sets a-prog's xattrs only once the writer is drained
    // (a large one first: the writer's batch goes out at 4 MiB, so a-prog is in place while the rest is read)
    for (let i = 0; i < 60; i++) writeFileSync(join(src, `z${String(i).padStart(3, '0')}`), Buffer.alloc(i === 0 ? 6 << 20 : 256 << 10, i + 1));
    const total = 1 + 60 + 1;
    const reader = await backup(src);
    const to = join(dir, 'to');
    const home = join(to, src); // a folder another user can write (their home, restored to its place)
    mkdirSync(home, { recursive: true });
    chmodSync(home, 0o777);
    const prog = join(home, 'a-prog');
    // what that user runs: unlink the restored file, create files until one gets its inode number, put it at the name
    const attack = String.raw`
      my ($p, $dir, $ino) = @ARGV; unlink($p) or die "unlink: $!";
      for my $i (1..2000) { my $n = "$dir/.x$i"; open(my $f, '>', $n) or die; print $f "#!/bin/sh\necho mine\n"; close($f);
        if ((stat($n))[1] == $ino) { chmod(0755, $n); rename($n, $p) or die; unlink(glob("$dir/.x*")); print "hit $i"; exit 0 } }
      unlink(glob("$dir/.x*")); print "miss"; exit 0`;
    let outcome = 'not tried';
    const { warnings } = await restore(reader, {
      to,
      onProgress: (pr) => {
        if (outcome !== 'not tried' || pr.files >= total) return; // only while pass 1 still runs (before the xattrs are set)
        const st = lstatSync(prog, { throwIfNoEntry: false });
        if (!st || st.uid !== 0) return; // the writer has not renamed it into place yet
        outcome = spawnSync('runuser', ['-u', 'nobody', '--', 'perl', '-e', attack, prog, home, String(st.ino)]).stdout.toString();
      },
    });
    t.log(outcome, warnings);
    t.not(outcome, 'not tried', 'the attack got its chance');
    if (/^hit/.test(outcome)) {
      // the inode number came back: the program at the name must not have the backup's capabilities
      t.is(lstatSync(prog).uid, NOBODY, "the file at the name is the other user's program");
      t.is(xattrsOf(prog), '', "the other user's program got the backup's security.capability");
    } else {
      // ferry holds the restored file open until its xattrs are set: its inode number cannot come back
      t.is(outcome, 'miss');
      t.false(existsSync(prog));
    }
    reader.close();
  });
});

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

test("SECURITY (low): a folder swapped for another user's program before folders get their metadata: the folder's security.* xattrs must not land on the program", async (t) => {
  await withTmp(async (dir) => {
    chmodSync(dir, 0o755);
    const src = join(dir, 'src');
    mkdirSync(join(src, 'sub'), { recursive: true });
    writeFileSync(join(src, 'sub', 'f'), 'x\n');
    // (an odd backup: a folder with a capability xattr, or any security.* label)
    must('setfattr', ['-n', 'security.capability', '-v', '0x0100000200200000000000000000000000000000', join(src, 'sub')]);
    const reader = await backup(src);
    const total = [...reader.entries()].length;
    const to = join(dir, 'to');
    const home = join(to, src);
    mkdirSync(home, { recursive: true });
    chmodSync(home, 0o777);
    const sub = join(home, 'sub');
    const swap = `mv '${sub}' '${sub}.moved' && printf '#!/bin/sh\\necho mine\\n' > '${sub}' && chmod 755 '${sub}'`;
    let swapped = '';
    const { warnings } = await restore(reader, {
      to,
      onProgress: (p) => {
        if (swapped || p.files < total) return;
        const r = spawnSync('runuser', ['-u', 'nobody', '--', 'sh', '-c', swap]);
        swapped = r.status === 0 ? 'yes' : `no: ${r.stderr}`;
      },
    });
    t.log(swapped, warnings);
    t.is(swapped, 'yes');
    t.is(lstatSync(sub).uid, NOBODY);
    t.is(xattrsOf(sub), '', "the other user's program got the folder's security.capability by name");
    reader.close();
  });
});

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

test('ulimit -n 256 (soft and hard): 600 folders with files, xattrs and a 0777 folder with a capability restore with nothing failed', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    const doc: string[] = [];
    for (let i = 0; i < 600; i++) {
      const d = join(src, `d${String(i).padStart(3, '0')}`);
      mkdirSync(d, { recursive: true });
      writeFileSync(join(d, 'f'), `file ${i}\n`);
      if (i % 3 === 0) doc.push(`# file: ${join(d, 'f')}\nuser.i="${i}"\n`);
      if (i % 7 === 0) doc.push(`# file: ${d}\nuser.d="${i}"\n`);
    }
    must('setfattr', ['--restore=-'], doc.join('\n') + '\n');
    must('setcap', ['cap_net_raw+ep', join(src, 'd599', 'f')]);
    const to = join(dir, 'to');
    mkdirSync(join(to, src, 'd599'), { recursive: true });
    chmodSync(join(to, src, 'd599'), 0o777);
    const { code, out, err } = await childRestore(['sh', '-c', 'ulimit -n 256 && exec "$@"', 'sh'], src, to, dir);
    t.is(code, 0, err);
    const { limit, r, warnings } = JSON.parse(out);
    t.regex(limit, /\s256\s+256\s/);
    t.deepEqual(warnings, []);
    t.is(r.failed, 0);
    t.deepEqual(diffSnapshots(await snapshotTree(src), await snapshotTree(join(to, src))), []);
  });
});
