// The file-tree walker (source/files), the block reader (source/volume) and
// the system-state collector (source/system-state).
import test from 'ava';
import { mkdtemp, rm, unlink, writeFile, mkdir, lstat, readFile, open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { globMatch, compileChildExcluder, compileGlobs, compileSelectors, walk, parseGetfattr, formatSetfattr, escapeOctal, type Entry } from '../source/files.js';
import { readVolume, volumeSize } from '../source/volume.js';
import { collectSystemState, STATE_FOLDER } from '../source/system-state.js';
import { MemDisk } from '../format/memdisk.js';
import { writeVolume, VolumeReader } from '../format/volume/index.js';
import { makeTree, NAMES, pseudoRandom } from './helpers/tree.js';
import { readBatch, type ReadBatchResult } from '../source/reader.js';
import { nativeAddon } from '../format/native.js';
import { ROOT, run } from './helpers/exec.js';
import { comparable } from './helpers/reads.js';

const MiB = 1024 * 1024;

async function withTmp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-walker-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function collect(it: AsyncIterable<Entry>): Promise<Entry[]> {
  const out: Entry[] = [];
  for await (const e of it) out.push(e);
  return out;
}

test('globs: restic-style matching on whole paths and any suffix of components', (t) => {
  const yes: [string, string][] = [
    ['*.tmp', '/home/a/x.tmp'],
    ['/home/*/x.tmp', '/home/a/x.tmp'],
    ['/home/**', '/home/a/b/c'],
    ['/home/**/c', '/home/c'],
    ['/home/**/c', '/home/a/b/c'],
    ['cache', '/var/lib/cache'],
    ['lib/cache', '/var/lib/cache'],
    ['**/node_modules', '/src/node_modules'],
    ['[a-c]x', '/q/bx'],
    ['[!a-c]x', '/q/dx'],
    ['?.txt', '/é.txt'],
    ['a\\*b', '/a*b'],
    ['*', '/anything'],
  ];
  const no: [string, string][] = [
    ['*.tmp', '/home/a/x.tmp2'],
    ['/home/*/x.tmp', '/home/a/b/x.tmp'],
    ['/home', '/srv/home'],
    ['[a-c]x', '/q/dx'],
    ['[!a-c]x', '/q/ax'],
    ['?.txt', '/ab.txt'],
    ['a\\*b', '/aXb'],
    ['lib/cache', '/var/lib/cache/x'],
  ];
  for (const [p, s] of yes) t.true(globMatch(p, s), `${p} should match ${s}`);
  for (const [p, s] of no) t.false(globMatch(p, s), `${p} should not match ${s}`);
  // non-UTF-8 bytes match "*" and "?" like any other
  t.true(compileGlobs(['bad-*.txt'])(Buffer.concat([Buffer.from('/x/'), NAMES.nonUtf8])));
  t.true(compileGlobs(['/x/bad-??.txt'])(Buffer.concat([Buffer.from('/x/'), NAMES.nonUtf8])));
  // selectors: a directory selects its subtree
  const sel = compileSelectors(['/home/a', '*.log']);
  t.true(sel(Buffer.from('/home/a/deep/file')));
  t.true(sel(Buffer.from('/var/x.log')));
  t.false(sel(Buffer.from('/home/ab')));
});

test('getfattr output parses, and setfattr input escapes, any byte', (t) => {
  const out = Buffer.concat([
    Buffer.from('# file: /t/we\\012ird\\134x '),
    Buffer.from([0xff]),
    Buffer.from('\nuser.a=0sAAEC\nuser.empty=0s\nuser.text="hi"\n\n# file: /t/b\nsystem.posix_acl_access=0x0200\n\n'),
  ]);
  const m = parseGetfattr(out);
  const k = Buffer.concat([Buffer.from('/t/we\nird\\x '), Buffer.from([0xff])]).toString('latin1');
  t.deepEqual(m.get(k), [
    { name: 'user.a', value: Buffer.from([0, 1, 2]) },
    { name: 'user.empty', value: Buffer.alloc(0) },
    { name: 'user.text', value: Buffer.from('hi') },
  ]);
  t.deepEqual(m.get('/t/b'), [{ name: 'system.posix_acl_access', value: Buffer.from([2, 0]) }]);
  t.is(escapeOctal(Buffer.from('a b\n\\=')).toString(), 'a\\040b\\012\\134\\075');
  const doc = formatSetfattr([{ path: Buffer.from(k, 'latin1'), xattrs: [{ name: 'user.a', value: Buffer.from([0, 1, 2]) }] }]);
  t.deepEqual(parseGetfattr(doc).get(k), [{ name: 'user.a', value: Buffer.from([0, 1, 2]) }]);
  // an empty value goes as the name alone (setfattr may set nothing for "name=0s")
  t.is(formatSetfattr([{ path: Buffer.from('/f'), xattrs: [{ name: 'user.e', value: Buffer.alloc(0) }] }]).toString(), '# file: /f\nuser.e\n\n');
});

test('walk: every kind of entry, with its metadata, parents first, ancestors implicit', async (t) => {
  await withTmp(async (dir) => {
    const root = join(dir, 'tree');
    await makeTree(root, { hugeSparse: 64 * MiB });
    const warnings: string[] = [];
    const entries = await collect(walk([root], { onWarning: (w) => warnings.push(w.message) }));
    t.deepEqual(warnings, []);
    const byPath = new Map(entries.map((e) => [e.path.toString('latin1'), e]));
    const get = (rel: string | Buffer) => byPath.get(Buffer.concat([Buffer.from(root + '/'), Buffer.from(rel)]).toString('latin1'))!;

    // ancestors of the source, implicit, then the source itself
    t.is(entries[0].path.toString(), '/');
    t.true(entries[0].implicit);
    t.false(byPath.get(Buffer.from(root).toString('latin1'))!.implicit);
    // parents before children
    const seen = new Set<string>();
    for (const e of entries) {
      const p = e.path.toString('latin1');
      const parent = p === '/' ? null : p.slice(0, p.lastIndexOf('/')) || '/';
      if (parent) t.true(seen.has(parent), `${p} came before its parent`);
      seen.add(p);
    }
    const types = new Set(entries.map((e) => e.type));
    for (const ty of ['file', 'dir', 'symlink', 'hardlink', 'chardev', 'blockdev', 'fifo', 'socket']) t.true(types.has(ty as never), `has a ${ty}`);

    // hard links: later members point at the first
    t.is(get('links/a/orig').type, 'file');
    t.is(get('links/b/link1').type, 'hardlink');
    t.is(get('links/b/link1').target!.toString(), join(root, 'links/a/orig'));
    t.is(get('links/b/c/link2').target!.toString(), join(root, 'links/a/orig'));
    // names and targets as bytes
    t.truthy(get(NAMES.nonUtf8));
    t.truthy(get(NAMES.long));
    t.deepEqual(get('odd-target').target, Buffer.from([0xff, 0xfe, 0x2f, 0x78]));
    t.is(get('dangling').target!.toString(), 'nowhere/at/all');
    // ns times, modes, owners, rdev
    t.is(get('hello.txt').mtimeNs, 1234567891987654321n);
    t.is(get('hello.txt').atimeNs, 1234567890123456789n);
    t.is(get('multi-chunk.bin').atimeNs, -1000000000000000001n);
    t.is(get('setuid').mode, 0o4755);
    t.is(get('mode-000').mode, 0);
    t.is(get('sticky').mode, 0o1777);
    t.is(get('owned').uid, 12345);
    t.is(get('owned').gid, 54321);
    t.is(get('owned-link').uid, 54321);
    const st = await lstat(join(root, 'chardev'), { bigint: true });
    t.is(get('chardev').rdev, st.rdev);
    // xattrs and ACLs
    const names = get('xattrs.txt').xattrs.map((x) => x.name).sort();
    t.deepEqual(names, ['system.posix_acl_access', 'user.binary', 'user.empty', 'user.plain']);
    t.deepEqual(get('xattrs.txt').xattrs.find((x) => x.name === 'user.binary')!.value, Buffer.from('AAEC/wD+', 'base64'));
    t.true(get('acl-dir').xattrs.some((x) => x.name === 'system.posix_acl_default'));
    t.true(get(NAMES.nonUtf8).xattrs.some((x) => x.name === 'user.on-odd-name'));

    // content: sparse files leave their holes out; others come whole
    const read = async (e: Entry) => {
      const pieces: { offset: number; data: Buffer }[] = [];
      for await (const p of e.content!()) pieces.push({ offset: p.offset, data: Buffer.from(p.data) });
      return pieces;
    };
    const huge = await read(get('sparse-huge'));
    t.true(huge.reduce((n, p) => n + p.data.length, 0) <= 4 * MiB, 'only the data of the sparse file is read out');
    // SEEK_DATA/SEEK_HOLE: the holes of a big sparse file are not even read (the 64 MiB file costs its 2 MiB of data)
    let readBytes = 0;
    for await (const e of walk([join(root, 'sparse-huge')], { onProgress: (p) => (readBytes = p.bytes) })) if (e.content) for await (const _ of e.content()) void _;
    t.true(readBytes < 8 * MiB, `read ${readBytes} bytes`);
    t.true(huge[0].data.subarray(0, 4096).equals(pseudoRandom(4096, 11)));
    t.deepEqual(await read(get('sparse-all-hole')), []);
    const zeros = await read(get('zeros-not-sparse.bin'));
    t.is(zeros.reduce((n, p) => n + p.data.length, 0), 256 * 1024, 'allocated zeros are kept');
    const multi = await read(get('multi-chunk.bin'));
    t.true(Buffer.concat(multi.map((p) => p.data)).equals(await readFile(join(root, 'multi-chunk.bin'))));
  });
});

test('walk: excludes skip files and whole subtrees; overlapping sources are walked once', async (t) => {
  await withTmp(async (dir) => {
    await mkdir(join(dir, 'a/cache/deep'), { recursive: true });
    await writeFile(join(dir, 'a/cache/deep/x'), 'x');
    await writeFile(join(dir, 'a/keep.txt'), 'k');
    await writeFile(join(dir, 'a/drop.tmp'), 't');
    await mkdir(join(dir, 'b'));
    await writeFile(join(dir, 'b/y'), 'y');
    const entries = await collect(walk([join(dir, 'a'), join(dir, 'a/cache'), join(dir, 'b') + '/'], { excludes: ['cache', '*.tmp', `${dir}/b/y`] }));
    const rel = entries.filter((e) => !e.implicit).map((e) => e.path.toString().slice(dir.length));
    t.deepEqual(rel, ['/a', '/a/keep.txt', '/b']);
  });
});

test('walk: a file that vanishes is a warning, not a crash, and the run goes on', async (t) => {
  await withTmp(async (dir) => {
    const root = join(dir, 't');
    await mkdir(root);
    await writeFile(join(root, 'a-big'), pseudoRandom(3 * MiB, 1)); // big: read lazily, after we delete it
    await writeFile(join(root, 'b-small'), 'small');
    const warnings: { code: string; message: string }[] = [];
    const onWarning = (w: { code: string; message: string }) => warnings.push(w);
    async function* vanishing() {
      for await (const e of walk([root, join(dir, 'never-there')], { onWarning })) {
        if (e.path.toString().endsWith('a-big')) await unlink(join(root, 'a-big'));
        yield e;
      }
    }
    const disk = new MemDisk(2040 * 1024 ** 3);
    const stats = await writeVolume(disk, vanishing(), { onWarning });
    t.is(stats.skipped, 1);
    t.true(warnings.some((w) => w.code === 'SOURCE_READ' && w.message.includes('a-big')), JSON.stringify(warnings));
    t.true(warnings.some((w) => w.message.includes('never-there')));
    t.is(warnings.filter((w) => w.message.includes('a-big')).length, 1, 'reported once');
    const r = await VolumeReader.open(disk);
    t.is(r.stat(join(root, 'a-big')), null);
    t.is((await r.read(join(root, 'b-small'), 0, 100)).toString(), 'small');
    r.close();
  });
});

test('walk: small files read on reader threads equal the same files read without them', async (t) => {
  await withTmp(async (dir) => {
    const root = join(dir, 't');
    await mkdir(join(root, 'd'), { recursive: true });
    const sizes = [1, 7, 4095, 4096, 4097, 65536, 100_000, MiB - 1, MiB, MiB + 1, 3 * MiB];
    for (let i = 0; i < 300; i++) {
      const size = sizes[i % sizes.length] + (i % 5);
      await writeFile(join(root, 'd', `f${i}`), i % 7 === 0 ? Buffer.alloc(size) : pseudoRandom(size, i));
    }
    const fh = await open(join(root, 'sparse-small'), 'w');
    await fh.write(Buffer.from('tail'), 0, 4, 512 * 1024); // 512 KiB hole, then data
    await fh.close();
    const read = async (readerThreads: number) => {
      const out = new Map<string, string>();
      for await (const e of walk([root], { readerThreads, xattrs: false })) {
        if (!e.content) continue;
        const data = Buffer.alloc(e.size);
        for await (const p of e.content()) {
          p.data.copy(data, p.offset);
          p.release?.();
        }
        out.set(e.path.toString(), createHash('sha256').update(data).digest('hex'));
      }
      return out;
    };
    const threaded = await read(2);
    const plain = await read(0);
    t.is(threaded.size, 301);
    t.deepEqual([...threaded.entries()].sort(), [...plain.entries()].sort());
    for (const [path, sum] of threaded) {
      t.is(sum, createHash('sha256').update(await readFile(path)).digest('hex'), path);
    }
  });
});

// hashChunk: the reader threads hash small files as they read them, and the
// writer takes those sums when their chunk size is its own (else it hashes).
for (const [label, chunkSize, hashChunk] of [
  ['hashed by the writer', MiB, undefined],
  ['hashed by the reader threads', MiB, MiB],
  ['reader threads hashing 64 KiB chunks, several per small file', 64 * 1024, 64 * 1024],
  ['reader threads hashing another chunk size than the volume: not taken', MiB, 4096],
] as const) {
  test(`walk into a volume: the chunk sums of every file are those of its bytes (${label})`, async (t) => {
    await withTmp(async (dir) => {
      const root = join(dir, 't');
      await mkdir(root, { recursive: true });
      const sizes = [1, 4096, 100_000, MiB - 1, MiB, MiB + 1, 2 * MiB + 5];
      for (let i = 0; i < 40; i++) await writeFile(join(root, `f${i}`), pseudoRandom(sizes[i % sizes.length], i));
      const fh = await open(join(root, 'sparse-small'), 'w');
      await fh.write(Buffer.from('tail'), 0, 4, 512 * 1024);
      await fh.close();
      await writeFile(join(root, 'empty'), '');
      const disk = new MemDisk(64 * MiB * 16);
      await writeVolume(disk, walk([root], { readerThreads: 2, xattrs: false, hashChunk }), { chunkSize });
      const reader = await VolumeReader.open(disk);
      let files = 0;
      for (const e of reader.entries()) {
        if (e.type !== 'file') continue;
        files++;
        const data = await readFile(e.path.toString());
        const want: Buffer[] = [];
        for (let off = 0; off < data.length; off += chunkSize) want.push(createHash('sha256').update(data.subarray(off, off + chunkSize)).digest());
        t.true(e.chunks.equals(Buffer.concat(want)), e.path.toString());
      }
      t.is(files, 42);
      reader.close();
    });
  });
}

test('walk: a file that shrinks while read is stored as it is', async (t) => {
  await withTmp(async (dir) => {
    await writeFile(join(dir, 'f'), pseudoRandom(4 * MiB, 2));
    const entries: Entry[] = [];
    for await (const e of walk([join(dir, 'f')])) {
      if (e.type === 'file') {
        const fh = await open(join(dir, 'f'), 'r+');
        await fh.truncate(MiB + 5);
        await fh.close();
      }
      entries.push(e);
    }
    const f = entries.find((e) => e.type === 'file')!;
    let n = 0;
    for await (const p of f.content!()) n += p.data.length;
    t.is(n, MiB + 5);
    t.is(f.size, MiB + 5);
  });
});

test('walk: oneFileSystem does not enter another filesystem', async (t) => {
  await withTmp(async (dir) => {
    await mkdir(join(dir, 'mnt'));
    await writeFile(join(dir, 'here'), 'h');
    const { spawnSync } = await import('node:child_process');
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'ferrytest', join(dir, 'mnt')]);
    if (m.status !== 0) {
      t.pass('cannot mount a tmpfs here; skipped');
      return;
    }
    try {
      await writeFile(join(dir, 'mnt', 'inside'), 'i');
      const one = (await collect(walk([dir], { oneFileSystem: true }))).map((e) => e.path.toString());
      t.true(one.includes(join(dir, 'mnt')), 'the mount point itself is kept');
      t.false(one.includes(join(dir, 'mnt', 'inside')));
      const all = (await collect(walk([dir]))).map((e) => e.path.toString());
      t.true(all.includes(join(dir, 'mnt', 'inside')));
    } finally {
      spawnSync('umount', [join(dir, 'mnt')]);
    }
  });
});

test('readVolume yields only non-zero data, at the right offsets; volumeSize of an image', async (t) => {
  await withTmp(async (dir) => {
    const img = join(dir, 'disk.img');
    const fh = await open(img, 'w');
    const a = pseudoRandom(100_000, 4);
    const b = pseudoRandom(5000, 5);
    await fh.write(a, 0, a.length, 3 * MiB);
    await fh.write(b, 0, b.length, 9 * MiB - 5000);
    await fh.truncate(9 * MiB);
    await fh.close();
    t.is(await volumeSize(img), 9 * MiB);
    const out = Buffer.alloc(9 * MiB);
    let stored = 0;
    for await (const c of readVolume(img)) {
      c.data.copy(out, c.offset);
      stored += c.data.length;
    }
    t.true(out.equals(await readFile(img)));
    t.true(stored <= 4 * 64 * 1024, `only the non-zero grains (${stored} bytes)`);
  });
});

test('collectSystemState: files in place, command outputs under the virtual folder, never fatal', async (t) => {
  await withTmp(async (dir) => {
    const state = await collectSystemState({ tmpDir: dir, timeout: 30 });
    try {
      t.true(state.sources.includes('/etc'));
      const manifest = JSON.parse(await readFile(join(state.staging, 'ferry-system-state', 'MANIFEST.json'), 'utf8'));
      t.is(manifest.format, 'ferry-system-state');
      t.true(manifest.commands.some((c: { file: string }) => c.file === 'lsblk.json'));
      // a tool that is not installed is a note, not an error
      t.true(state.commands.every((c) => ['ok', 'missing', 'failed', 'empty'].includes(c.status)));
      const paths: string[] = [];
      for await (const e of walk(state.sources, { excludes: [...state.excludes, '/etc/**'] })) paths.push(e.path.toString());
      t.true(paths.includes(STATE_FOLDER));
      t.true(paths.includes(`${STATE_FOLDER}/MANIFEST.json`));
      t.false(paths.some((p) => p.startsWith(state.staging)), 'the staging path never shows');
    } finally {
      await state.cleanup();
    }
  });
});

test('reader threads: chunk sums through the addon equal those of node:crypto (FERRY_NATIVE=0)', async (t) => {
  if (process.platform === 'linux') t.is(typeof nativeAddon()?.sha256Chunks, 'function', 'native/ was not built with sha256Chunks: run npm install');
  await withTmp(async (dir) => {
    const sizes = [0, 1, 4095, 4096, 4097, 3 * 4096 + 17];
    const reqs = [];
    for (const [i, n] of sizes.entries()) {
      const p = join(dir, `f${i}`);
      await writeFile(p, pseudoRandom(n, i + 7));
      const st = await lstat(p, { bigint: true });
      reqs.push({ path: Buffer.from(p), length: n, dev: st.dev, ino: st.ino, chunk: 4096 });
    }
    // a file shorter than asked for (it shrank since it was listed): the sums are of what was read
    const short = join(dir, 'short');
    await writeFile(short, pseudoRandom(5000, 99));
    const sst = await lstat(short, { bigint: true });
    reqs.push({ path: Buffer.from(short), length: 9000, dev: sst.dev, ino: sst.ino, chunk: 4096 });
    sizes.push(5000);
    const sums = (res: ReadBatchResult) => res.replies.map((r, i) => Buffer.from(res.buffer, r.hashAt!, Math.ceil(sizes[i] / 4096) * 32).toString('hex'));
    const here = sums(readBatch({ id: 1, reqs }));
    const want = sizes.map((n, i) => {
      const data = pseudoRandom(n, i < sizes.length - 1 ? i + 7 : 99);
      const hs: Buffer[] = [];
      for (let o = 0; o < n; o += 4096) hs.push(createHash('sha256').update(data.subarray(o, o + 4096)).digest());
      return Buffer.concat(hs).toString('hex');
    });
    t.deepEqual(here, want);
    const script = `
      const { readBatch } = await import(${JSON.stringify(join(ROOT, 'dist', 'source', 'reader.js'))});
      const reqs = JSON.parse(process.argv[1]).map((r) => ({ ...r, path: Buffer.from(r.path), dev: BigInt(r.dev), ino: BigInt(r.ino) }));
      const res = readBatch({ id: 1, reqs });
      process.stdout.write(JSON.stringify(res.replies.map((r) => Buffer.from(res.buffer, r.hashAt, Math.ceil(r.got / 4096) * 32).toString('hex'))));
    `;
    const arg = JSON.stringify(reqs.map((r) => ({ ...r, path: r.path.toString(), dev: String(r.dev), ino: String(r.ino) })));
    const r = await run(process.execPath, ['--input-type=module', '-e', script, arg], { env: { FERRY_NATIVE: '0' } });
    t.is(r.code, 0, r.stderr);
    t.deepEqual(JSON.parse(r.stdout.toString()), want);
  });
});

test('compileChildExcluder: which folders need their entries filtered before they are lstat', (t) => {
  const none = compileChildExcluder([]);
  t.false(none(Buffer.from('/etc')));
  const anchored = compileChildExcluder(['/etc/mtab', '/home/*/.cache']);
  t.true(anchored(Buffer.from('/etc')), '/etc/mtab is a child of a depth-1 folder');
  t.true(anchored(Buffer.from('/usr')), '(any depth-1 folder: the check is by depth alone)');
  t.true(anchored(Buffer.from('/home/ann')));
  t.false(anchored(Buffer.from('/')), 'no pattern of depth 1');
  t.true(anchored(Buffer.from('/etc/ssh')), '(depth 2: /home/*/.cache is of depth 3)');
  t.false(anchored(Buffer.from('/etc/ssh/x')));
  t.false(anchored(Buffer.from('/home/ann/.cache')));
  for (const p of ['*.tmp', 'cache', '/home/**/x', 'lib/cache']) t.true(compileChildExcluder([p])(Buffer.from('/a/b/c/d')), p);
  // the property the walk relies on: where it says false, no pattern matches any child
  const pats = ['/etc/mtab', '/home/*/.cache', '/x/y/z/w'];
  const may = compileChildExcluder(pats);
  const ex = compileGlobs(pats);
  for (const folder of ['/', '/etc', '/etc/ssh', '/home', '/home/ann', '/x/y', '/x/y/z']) {
    if (may(Buffer.from(folder))) continue;
    for (const name of ['mtab', '.cache', 'w', 'z', 'y', 'ann']) t.false(ex(Buffer.from(`${folder === '/' ? '' : folder}/${name}`)), `${folder}/${name}`);
  }
});

test('SmallFileReader: the addon on libuv\'s pool and the reader threads give the same data, sums, sizes, changes and errors', async (t) => {
  if (!nativeAddon()?.readFiles) return t.fail('the addon lacks readFiles: npm test builds it');
  const { SmallFileReader } = await import('../source/reader.js');
  const dir = await mkdtemp(join(tmpdir(), 'ferry-reader-'));
  try {
    type Ask = { path: Buffer; length: number; dev: bigint; ino: bigint; mtimeNs?: bigint; chunk?: number };
    const asks: Ask[] = [];
    const listed = async (name: string, data: Buffer, length = data.length, chunk = 4096) => {
      const p = join(dir, name);
      await writeFile(p, data);
      const st = await lstat(p, { bigint: true });
      const a = { path: Buffer.from(p), length, dev: st.dev, ino: st.ino, mtimeNs: st.mtimeNs, chunk: chunk || undefined };
      asks.push(a);
      return a;
    };
    for (const [i, n] of [1, 4095, 4096, 4097, 100_000, MiB].entries()) await listed(`f${i}`, pseudoRandom(n, i));
    await listed('nochunk', pseudoRandom(5000, 50), 5000, 0);
    // a time past 2262: its nanoseconds do not fit 64 bits (ext4 keeps times to 2446)
    await writeFile(join(dir, 'future'), 'later');
    await run('touch', ['-m', '-d', '2300-01-01 00:00:00.123456789 UTC', join(dir, 'future')]);
    const fst = await lstat(join(dir, 'future'), { bigint: true });
    if (fst.mtimeNs <= 2n ** 63n) return t.fail(`the file system keeps no time past 2262 (${fst.mtimeNs})`);
    asks.push({ path: Buffer.from(join(dir, 'future')), length: 5, dev: fst.dev, ino: fst.ino, mtimeNs: fst.mtimeNs, chunk: 4096 });
    await listed('shrank', pseudoRandom(9000, 51), 9000).then(() => writeFile(join(dir, 'shrank'), pseudoRandom(3000, 51)));
    const grew = await listed('grew', pseudoRandom(2000, 52));
    await writeFile(join(dir, 'grew'), pseudoRandom(6000, 52));
    grew.mtimeNs = grew.mtimeNs! - 1n; // (a write in the same tick keeps the time: the size tells too)
    await listed('gone', Buffer.from('x')).then(() => unlink(join(dir, 'gone')));
    await listed('replaced', Buffer.from('old'));
    // saved over by rename: the new inode exists while the old one does (an unlink first could free its number for the new file)
    await writeFile(join(dir, 'replaced.new'), 'new');
    const { rename } = await import('node:fs/promises');
    await rename(join(dir, 'replaced.new'), join(dir, 'replaced'));
    await listed('folder', Buffer.from('y')).then(async () => {
      await unlink(join(dir, 'folder'));
      await mkdir(join(dir, 'folder'));
    });
    await listed('link', Buffer.from('z')).then(async () => {
      await unlink(join(dir, 'link'));
      const { symlink } = await import('node:fs/promises');
      await symlink(join(dir, 'f0'), join(dir, 'link'));
    });
    await listed('fifo', Buffer.from('w')).then(async () => {
      await unlink(join(dir, 'fifo'));
      await run('mkfifo', [join(dir, 'fifo')]);
    });
    asks.push({ path: Buffer.from(join(dir, 'no', 'such')), length: 5, dev: 0n, ino: 0n });
    const readAll = async (native: boolean) => {
      const reader = new SmallFileReader(2, { native });
      try {
        // the same asks many times over, so batches overlap
        const all = await Promise.all(Array.from({ length: 5 }, () => asks.map((a) => reader.read(a.path, a.length, a.dev, a.ino, a.mtimeNs, a.chunk))).flat());
        return all.map((r) => comparable(r));
      } finally {
        await reader.close();
      }
    };
    const native = await readAll(true);
    const threads = await readAll(false);
    t.deepEqual(native, threads);
    const one = native.slice(0, asks.length);
    const by = (name: string) => one[asks.findIndex((a) => a.path.toString().endsWith(`/${name}`))];
    t.is(by('f4').data, pseudoRandom(100_000, 4).toString('hex'));
    t.is(by('f4').hashes!.length, Math.ceil(100_000 / 4096) * 64);
    t.is(by('nochunk').hashes, undefined);
    t.is(by('shrank').data, pseudoRandom(3000, 51).toString('hex'));
    t.is(by('shrank').size, 3000);
    t.is(by('grew').changed, true);
    t.is(by('f0').changed, false);
    t.is(by('future').changed, false, 'a time past 2262 compared whole');
    t.is(by('future').data, Buffer.from('later').toString('hex'));
    t.is(by('gone').code, 'ENOENT');
    t.regex(by('gone').error!, /^ENOENT: no such file or directory, open '.*\/gone'$/);
    t.is(by('replaced').error, 'it was replaced by another file since it was listed; left out');
    t.is(by('folder').error, 'it is now a folder, not the regular file that was listed; left out');
    t.is(by('link').error, 'it is now a symlink, not the regular file that was listed; left out');
    t.is(by('fifo').error, 'it is now a fifo, not the regular file that was listed; left out');
    t.is(one[one.length - 1].code, 'ENOENT');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('readFiles (addon): what it does not write of its uninitialised buffer is zeroed; requests outside their buffers are refused', async (t) => {
  const readFiles = nativeAddon()?.readFiles;
  if (!readFiles) return t.fail('the addon lacks readFiles: npm test builds it');
  const dir = await mkdtemp(join(tmpdir(), 'ferry-readfiles-'));
  try {
    const f = join(dir, 'f');
    await writeFile(f, pseudoRandom(3000, 1));
    const st = await lstat(f, { bigint: true });
    const paths = Buffer.from(`${f}\0${join(dir, 'missing')}\0`);
    // file 1: 5000 bytes asked, 3000 there, chunks of 1024 (5 sum slots, 3 used); file 2: missing
    const room1 = (5000 + 5 * 32 + 7) & ~7;
    const reqs = new BigInt64Array([
      0n, 5000n, st.dev, st.ino, st.mtimeNs / 1_000_000_000n, 1024n, 0n, st.mtimeNs % 1_000_000_000n,
      BigInt(f.length + 1), 100n, 0n, 0n, 0n, 0n, BigInt(room1), -1n,
    ]);
    const out = Buffer.alloc(room1 + 104, 0xa5);
    const replies = new Float64Array(8);
    const call = (q: BigInt64Array, o: Buffer) =>
      new Promise<number | null>((resolve) => readFiles(new Uint8Array(q.buffer), paths, o, new Uint8Array(replies.buffer), resolve));
    t.is(await call(reqs, out), null);
    t.deepEqual([...replies], [0, 3000, 3000, 0, 2, 0, 0, 1]);
    t.true(out.subarray(0, 3000).equals(pseudoRandom(3000, 1)));
    t.true(out.subarray(3000, 5000).equals(Buffer.alloc(2000)), 'the part of the file not read');
    t.true(out.subarray(5000 + 3 * 32, room1).equals(Buffer.alloc(room1 - 5000 - 96)), 'the sums not taken and the padding');
    t.true(out.subarray(room1).equals(Buffer.alloc(104)), 'a failed file\'s room');
    // out of bounds: data past `out`, a path offset past `paths`, a negative length
    for (const [k, v] of [[6, BigInt(out.length)], [0, BigInt(paths.length)], [1, -1n], [1, 2n ** 50n], [7, 1_000_000_000n], [7, -2n]] as const) {
      const bad = BigInt64Array.from(reqs);
      bad[k] = v;
      t.throws(() => readFiles(new Uint8Array(bad.buffer), paths, out, new Uint8Array(replies.buffer), () => {}), { instanceOf: TypeError });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('SmallFileReader (addon): a batch\'s buffer is freed once every file read into it is released, not before; the chunk sums outlive it', async (t) => {
  if (!nativeAddon()?.readFiles) return t.fail('the addon lacks readFiles: npm test builds it');
  const { SmallFileReader } = await import('../source/reader.js');
  const dir = await mkdtemp(join(tmpdir(), 'ferry-reader-'));
  const reader = new SmallFileReader(2, { native: true });
  try {
    const files: { path: Buffer; data: Buffer; dev: bigint; ino: bigint }[] = [];
    for (let i = 0; i < 3; i++) {
      const p = join(dir, `s${i}`);
      const data = pseudoRandom(10_000 + i, 70 + i);
      await writeFile(p, data);
      const st = await lstat(p, { bigint: true });
      files.push({ path: Buffer.from(p), data, dev: st.dev, ino: st.ino });
    }
    // asked for together: one batch
    const rs = await Promise.all(files.map((f) => reader.read(f.path, f.data.length, f.dev, f.ino, undefined, 4096)));
    const hashes = rs.map((r) => Buffer.from(r.hashes!));
    rs.forEach((r, i) => t.true(r.data!.equals(files[i].data)));
    rs[0].release!();
    rs[0].release!(); // (twice is once)
    rs[1].release!();
    t.true(rs[2].data!.equals(files[2].data), 'still there while one file holds it');
    rs[2].release!();
    t.is(rs[2].data!.length, 0, 'freed with the last release');
    rs.forEach((r, i) => t.true(r.hashes!.equals(hashes[i]), 'the sums are copies of their own'));
  } finally {
    await reader.close();
    await rm(dir, { recursive: true, force: true });
  }
});
