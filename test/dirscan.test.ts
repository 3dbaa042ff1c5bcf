// source/dirscan.ts: a folder listed and its entries lstat'd by the addon.
// What it reports must be what Node's readdir and lstat report, and a walk
// through it must give the same entries as a walk without the addon.
import test from 'ava';
import { lstat, mkdir, readdir, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { scanDir, walkStat } from '../source/dirscan.js';
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
      if (!scanned) return t.fail(`scanDir gave nothing for ${f}: is native/ built?`);
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

(linux ? test : test.skip)('scanDir: a time beyond 64-bit nanoseconds is left to lstat; a missing or non-folder path gives null', async (t) => {
  await withTmp(async (dir) => {
    await writeFile(join(dir, 'a'), 'a');
    await writeFile(join(dir, 'far'), 'far');
    // year 2400: seconds * 1e9 overflows int64
    const far = new Date('2400-01-01T00:00:00Z');
    await utimes(join(dir, 'far'), far, far);
    const st = await lstat(join(dir, 'far'), { bigint: true });
    t.true(st.mtimeNs > 2n ** 63n - 1n, 'the file system kept the far time');
    const scanned = (await scanDir(Buffer.from(dir)))!;
    t.is(scanned.count, 2);
    t.not(scanned.stat(0), null);
    t.is(scanned.stat(1), null, 'far: the caller lstats it itself');
    t.is(await scanDir(Buffer.from(join(dir, 'missing'))), null);
    t.is(await scanDir(Buffer.from(join(dir, 'a'))), null);
  });
});

/** Each entry's fields; the folders above the source (/tmp changes as other tests run) left out. */
function summary(es: Entry[]): string[] {
  return es.filter((e) => !e.implicit).map((e) =>
    [e.path.toString('hex'), e.type, e.mode, e.uid, e.gid, e.atimeNs, e.mtimeNs, e.ctimeNs, e.size, e.ino, e.dev, e.nlink, e.rdev, e.target?.toString('hex') ?? '-',
      e.xattrs.map((x) => `${x.name}=${Buffer.from(x.value).toString('hex')}`).join(',')].join(' '));
}

(linux ? test : test.skip)('a walk through the addon gives the entries of a walk without it (FERRY_NATIVE=0)', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await makeTree(src, { hugeSparse: 0 });
    const far = new Date('2400-01-01T00:00:00Z');
    await writeFile(join(src, 'far'), 'far');
    await utimes(join(src, 'far'), far, far);
    await writeFile(join(src, 'left-out.skip'), 'x');
    // a first walk: reading a folder or a symlink sets its atime (once, under relatime)
    for await (const e of walk([src])) void e;
    const here: Entry[] = [];
    for await (const e of walk([src], { excludes: ['*.skip'] })) here.push(e);
    t.false(here.some((e) => e.path.toString().endsWith('.skip')));
    const script = `
      const { walk } = await import(${JSON.stringify(join(ROOT, 'dist', 'source', 'files.js'))});
      const out = [];
      for await (const e of walk([${JSON.stringify(src)}], { excludes: ['*.skip'] })) out.push(e);
      process.stdout.write(JSON.stringify(out, (k, v) => (typeof v === 'bigint' ? v.toString() : v && v.type === 'Buffer' ? Buffer.from(v.data).toString('hex') : v)));
    `;
    const r = await run(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, FERRY_NATIVE: '0' } });
    t.is(r.code, 0, r.stderr);
    const there = (JSON.parse(r.stdout.toString()) as Record<string, unknown>[]).map((e) => ({
      ...e,
      path: Buffer.from(e.path as string, 'hex'),
      target: e.target === null ? null : Buffer.from(e.target as string, 'hex'),
      xattrs: (e.xattrs as { name: string; value: string }[]).map((x) => ({ name: x.name, value: Buffer.from(x.value, 'hex') })),
    })) as unknown as Entry[];
    t.true(here.length > 40);
    t.deepEqual(summary(here), summary(there));
  });
});
