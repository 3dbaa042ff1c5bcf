// source/dirscan.ts: a folder listed and its entries lstat'd by the addon.
// What it reports must be what Node's readdir and lstat report, and a walk
// through it must give the same entries as a walk without the addon.
import test from 'ava';
import { spawn } from 'node:child_process';
import { lstat, mkdir, readdir, rename, symlink, utimes, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { decodeScan, scanDir, walkStat, type Scanned } from '../source/dirscan.js';
import { walk, type Entry } from '../source/files.js';
import { makeTree } from './helpers/tree.js';
import { ROOT, run, withTmp } from './helpers/exec.js';

const linux = process.platform === 'linux';

(linux ? test : test.skip)('scanDir lists a folder sorted by name bytes, each entry with the lstat Node gives', async (t) => {
  await withTmp(async (dir) => {
    await makeTree(dir, { hugeSparse: 0 });
    const folders = [Buffer.from(dir)];
    let checked = 0;
    while (folders.length) {
      const f = folders.pop()!;
      const scanned = await scanDir(f);
      if (!scanned || 'errno' in scanned) return t.fail(`scanDir gave ${JSON.stringify(scanned)} for ${f}: is native/ built?`);
      const names = (await readdir(f, { encoding: 'buffer' })).sort(Buffer.compare);
      t.is(scanned.count, names.length, `${f}`);
      for (let i = 0; i < scanned.count; i++) {
        t.true(scanned.name(i).equals(names[i]), `name ${i} of ${f}`);
        const p = Buffer.concat([f, Buffer.from('/'), names[i]]);
        const st = await lstat(p, { bigint: true });
        t.deepEqual(scanned.stat(i), walkStat(st), `${p}`);
        if (st.isDirectory()) folders.push(p);
        checked++;
      }
    }
    t.true(checked > 40, `${checked} entries compared`);
  });
});

(linux ? test : test.skip)('scanDir: a time beyond 64-bit nanoseconds is left to lstat; a missing path, a file or a symlink gives its errno', async (t) => {
  await withTmp(async (dir) => {
    await writeFile(join(dir, 'a'), 'a');
    await writeFile(join(dir, 'far'), 'far');
    await mkdir(join(dir, 'sub'));
    await symlink('sub', join(dir, 'link'));
    // year 2400: seconds * 1e9 overflows int64
    const far = new Date('2400-01-01T00:00:00Z');
    await utimes(join(dir, 'far'), far, far);
    const st = await lstat(join(dir, 'far'), { bigint: true });
    t.true(st.mtimeNs > 2n ** 63n - 1n, 'the file system kept the far time');
    const scanned = (await scanDir(Buffer.from(dir))) as Scanned;
    t.is(scanned.count, 4);
    t.not(scanned.stat(0), null);
    t.is(scanned.stat(1), null, 'far: the caller lstats it itself');
    const self = await lstat(dir, { bigint: true });
    t.is(scanned.dev, self.dev);
    t.is(scanned.ino, self.ino);
    const { ENOENT, ENOTDIR, ELOOP } = osConstants.errno;
    t.deepEqual(await scanDir(Buffer.from(join(dir, 'missing'))), { errno: ENOENT });
    t.deepEqual(await scanDir(Buffer.from(join(dir, 'a'))), { errno: ENOTDIR });
    // (O_DIRECTORY | O_NOFOLLOW on a symlink: ENOTDIR on Linux, ELOOP on some others)
    const link = await scanDir(Buffer.from(join(dir, 'link')));
    t.true(!!link && 'errno' in link && [ENOTDIR, ELOOP].includes(link.errno), `a symlink is not followed: ${JSON.stringify(link)}`);
    // with a filter: only the names kept are in the reply (and stat'd)
    const kept = (await scanDir(Buffer.from(dir), (n) => n.toString() !== 'far')) as Scanned;
    t.deepEqual(Array.from({ length: kept.count }, (_, i) => kept.name(i).toString()), ['a', 'link', 'sub']);
    t.deepEqual(kept.stat(0), walkStat(await lstat(join(dir, 'a'), { bigint: true })));
  });
});

test("decodeScan: inode, device and rdev come back signed, as Node's bigint stats give them", (t) => {
  // one entry, "x", with an inode number of 2^63 + 3 (overlayfs with xino gives such numbers)
  const b = Buffer.alloc(24 + 8 * 8 + 7 * 8 + 1);
  b.writeDoubleLE(1, 0);
  b.writeBigInt64LE(-5n, 8);
  b.writeBigInt64LE(BigInt.asIntN(64, 2n ** 63n + 9n), 16);
  const num = [0, 1, 0, 0o100644, 0, 0, 1, 3];
  num.forEach((v, i) => b.writeDoubleLE(v, 24 + i * 8));
  const big = [8n, BigInt.asIntN(64, 2n ** 63n + 3n), BigInt.asIntN(64, 2n ** 64n - 1n), 0n, 1n, 2n, 3n];
  big.forEach((v, i) => b.writeBigInt64LE(v, 24 + 64 + i * 8));
  b.write('x', 24 + 64 + 56);
  const s = decodeScan(b);
  t.is(s.count, 1);
  t.is(s.dev, -5n);
  t.is(s.ino, -(2n ** 63n) + 9n);
  t.is(s.name(0).toString(), 'x');
  const st = s.stat(0)!;
  t.is(st.ino, -(2n ** 63n) + 3n);
  t.is(st.dev, -1n);
  t.is(st.size, 3);
  t.is(st.mtimeNs, 2n);
});

(linux ? test : test.skip)('a folder replaced by a symlink after it was listed is not followed: stored empty, with a warning', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'zdir'), { recursive: true });
    await writeFile(join(src, 'zdir', 'mine'), 'mine');
    await mkdir(join(dir, 'elsewhere'));
    await writeFile(join(dir, 'elsewhere', 'SECRET'), 'not in the source');
    // more entries before zdir than the walk reads ahead (4000), so zdir is listed before the swap and opened after it
    for (let i = 0; i < 5000; i++) await writeFile(join(src, `f${String(i).padStart(4, '0')}`), '');
    const warnings: { code: string; message: string }[] = [];
    const seen: Entry[] = [];
    let swapped = false;
    for await (const e of walk([src], { xattrs: false, onWarning: (w) => warnings.push(w) })) {
      seen.push(e);
      if (!swapped && e.type === 'file') {
        swapped = true;
        await rename(join(src, 'zdir'), join(dir, 'zdir-was'));
        await symlink('../elsewhere', join(src, 'zdir'));
      }
    }
    const under = seen.filter((e) => e.path.toString().startsWith(join(src, 'zdir') + '/'));
    t.deepEqual(under.map((e) => e.path.toString()), [], 'nothing from elsewhere, nothing under zdir');
    // (the walk runs ahead of this loop: it may open zdir between the rename and the symlink, and find it gone)
    t.true(warnings.some((w) => ['SOURCE_CHANGED', 'SOURCE_VANISHED'].includes(w.code) && w.message.includes('zdir')), JSON.stringify(warnings));
  });
});

(linux ? test : test.skip)('an excluded mount that never answers is not touched: the walk ends', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'hung'), { recursive: true });
    await mkdir(join(src, 'ok'));
    await writeFile(join(src, 'ok', 'f'), 'f');
    // a FUSE mount with no server answering: any lstat of it waits until the mount is gone
    const fuse = spawn('python3', ['-c', HUNG_FUSE, join(src, 'hung')], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const ready = await new Promise<string>((resolve) => fuse.stdout.once('data', (d: Buffer) => resolve(d.toString())));
      t.regex(ready, /mounted/);
      const script = `
        const { walk } = await import(${JSON.stringify(join(ROOT, 'dist', 'source', 'files.js'))});
        for await (const e of walk([process.argv[1]], { xattrs: false, excludes: [process.argv[1] + '/hung'] })) if (!e.implicit) console.log(e.type, e.path.toString());
      `;
      const r = await run('timeout', ['20', process.execPath, '--input-type=module', '-e', script, src]);
      t.is(r.code, 0, `the walk did not end (exit ${r.code}): ${r.stderr}`);
      t.deepEqual(r.stdout.toString().trim().split('\n'), [`dir ${src}`, `dir ${src}/ok`, `file ${src}/ok/f`]);
    } finally {
      fuse.kill('SIGKILL'); // its /dev/fuse closes: waiting calls fail and the mount can go
      await run('umount', ['-l', join(src, 'hung')]);
    }
  });
});

/** Mounts a FUSE file system at argv[1] whose server never answers (raw mount(2) on /dev/fuse). */
const HUNG_FUSE = `
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open('/dev/fuse', os.O_RDWR)
opts = f'fd={fd},rootmode=40000,user_id=0,group_id=0'.encode()
if libc.mount(b'ferry-test-hung', sys.argv[1].encode(), b'fuse', 0, opts) != 0:
    print('mount failed', os.strerror(ctypes.get_errno()), flush=True); sys.exit(1)
print('mounted', flush=True)
time.sleep(600)
`;

/** Each entry's fields; the folders above the source (/tmp changes as other tests run) left out. */
function summary(es: Entry[]): string[] {
  return es.filter((e) => !e.implicit).map((e) =>
    [e.path.toString('hex'), e.type, e.mode, e.uid, e.gid, e.atimeNs, e.mtimeNs, e.ctimeNs, e.size, e.ino, e.dev, e.nlink, e.rdev, e.target?.toString('hex') ?? '-',
      e.xattrs.map((x) => `${x.name}=${Buffer.from(x.value).toString('hex')}`).join(',')].join(' '));
}

(linux ? test : test.skip)('a walk through the addon gives the entries of a walk without it (FERRY_NATIVE=0, or an addon from older sources)', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await makeTree(src, { hugeSparse: 0 });
    const far = new Date('2400-01-01T00:00:00Z');
    await writeFile(join(src, 'far'), 'far');
    await utimes(join(src, 'far'), far, far);
    await writeFile(join(src, 'left-out.skip'), 'x');
    await mkdir(join(src, 'a', 'b'), { recursive: true });
    await writeFile(join(src, 'a', 'b', 'gone.txt'), 'x');
    await writeFile(join(src, 'a', 'b', 'kept.txt'), 'x');
    // a first walk: reading a folder or a symlink sets its atime (once, under relatime)
    for await (const e of walk([src])) void e;
    // an unanchored pattern (every folder filtered before its lstat: two calls each), and an
    // anchored one (only the folders where it can match: one call elsewhere)
    for (const [excludes, gone] of [
      [['*.skip'], /\.skip$/],
      [[join(src, 'a', 'b', 'gone.txt'), join(src, '[l]eft-out.skip')], /left-out\.skip$|gone\.txt$/],
    ] as const) {
      const here: Entry[] = [];
      for await (const e of walk([src], { excludes: [...excludes] })) here.push(e);
      const leftIn = here.filter((e) => gone.test(e.path.toString())).map((e) => e.path.toString());
      t.deepEqual(leftIn, [], `left out by ${excludes.join(' ')}`);
      t.true(here.some((e) => e.path.toString().endsWith('kept.txt')));
      // without the addon, and with an addon whose scanFolder refuses its arguments (built from older sources)
      for (const [label, env, prelude] of [
        ['FERRY_NATIVE=0', { FERRY_NATIVE: '0' }, ''],
        ['an older addon', {}, `(await import('node:module')).createRequire(import.meta.url)(${JSON.stringify(join(ROOT, 'native', 'index.cjs'))}).scanFolder = () => { throw new TypeError('scanDir(path: Buffer, callback)'); };`],
      ] as const) {
        const script = `
          ${prelude}
          const { walk } = await import(${JSON.stringify(join(ROOT, 'dist', 'source', 'files.js'))});
          const out = [];
          for await (const e of walk([${JSON.stringify(src)}], { excludes: ${JSON.stringify(excludes)} })) out.push(e);
          process.stdout.write(JSON.stringify(out, (k, v) => (typeof v === 'bigint' ? v.toString() : v && v.type === 'Buffer' ? Buffer.from(v.data).toString('hex') : v)));
        `;
        const r = await run(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, ...env } });
        t.is(r.code, 0, `${label}: ${r.stderr}`);
        const there = (JSON.parse(r.stdout.toString()) as Record<string, unknown>[]).map((e) => ({
          ...e,
          path: Buffer.from(e.path as string, 'hex'),
          target: e.target === null ? null : Buffer.from(e.target as string, 'hex'),
          xattrs: (e.xattrs as { name: string; value: string }[]).map((x) => ({ name: x.name, value: Buffer.from(x.value, 'hex') })),
        })) as unknown as Entry[];
        t.deepEqual(summary(here), summary(there), `${label}, excludes ${excludes.join(' ')}`);
      }
      t.true(here.length > 40);
    }
  });
});
