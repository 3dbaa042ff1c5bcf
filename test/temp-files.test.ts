// Temporary files and folders: the catalog's folder is never left behind by
// a reader, swept when a killed process left one, and a one-line error when
// it runs out of room; a file's temporary name beside it (an image being
// restored or exported) is swept when its process is gone.
import test from 'ava';
import { chown, mkdir, readdir, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MemDisk } from '../format/memdisk.js';
import { FerryError } from '../format/errors.js';
import { VolumeReader, writeVolume } from '../format/volume/index.js';
import { sweepCatalogDirs } from '../format/volume/tmpcat.js';
import { HOST_TAG, tempBeside } from '../format/fsio.js';
import type { SourceEntry } from '../format/volume/writer.js';
import { withTmp } from './helpers/exec.js';
import { withTmpfs } from './helpers/mounts.js';

function entry(i: number): SourceEntry {
  const name = Buffer.from(`/d/some-fairly-long-file-name-to-fill-the-catalog-${i}`);
  return {
    path: name, type: 'dir', mode: 0o755, uid: 0, gid: 0, atimeNs: 1n, mtimeNs: 1n, ctimeNs: 1n,
    size: 0, ino: BigInt(i + 10), dev: 1n, nlink: 1, rdev: 0n, target: null, xattrs: [],
  } as unknown as SourceEntry;
}

function* tree(n: number): Iterable<SourceEntry> {
  yield { ...entry(-1), path: Buffer.from('/d'), ino: 2n } as SourceEntry;
  for (let i = 0; i < n; i++) yield entry(i);
}

async function catalogDirs(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.startsWith('ferry-catalog-'));
}

test('a catalog spooled to a file leaves nothing in the temporary folder, and reads whole', async (t) => {
  await withTmp(async (dir) => {
    const disk = new MemDisk(2040 * 1024 ** 3);
    await writeVolume(disk, tree(3000), { tmpDir: dir });
    t.deepEqual(await catalogDirs(dir), [], 'the writer removed its folder');
    const r = await VolumeReader.open(disk, { memoryLimit: 0, tmpDir: dir });
    try {
      t.deepEqual(await catalogDirs(dir), [], 'the spooled catalog has no name while it is open');
      t.is(r.count(), 3002, 'the root, /d and 3000 entries');
      t.is(r.stat('/d/some-fairly-long-file-name-to-fill-the-catalog-2999')?.type, 'dir');
    } finally {
      r.close();
    }
  });
});

test('catalog folders of processes that are gone are swept when untouched for an hour', async (t) => {
  await withTmp(async (dir) => {
    // a pid that is not running: past the kernel's pid_max
    const dead = 4194305;
    const old = new Date(Date.now() - 2 * 3600 * 1000);
    const make = async (name: string, mtime: Date) => {
      await mkdir(join(dir, name));
      await writeFile(join(dir, name, 'catalog.db'), 'x');
      await utimes(join(dir, name, 'catalog.db'), mtime, mtime);
      await utimes(join(dir, name), mtime, mtime);
    };
    await make(`ferry-catalog-${HOST_TAG}-${dead}-aaaaaa`, old);
    await make(`ferry-catalog-${HOST_TAG}-${dead}-bbbbbb`, new Date());
    await make(`ferry-catalog-${HOST_TAG}-${process.pid}-cccccc`, old);
    await make('ferry-catalog-dddddd', old);
    // another user's, named and dated as ours: never removed (a name and a time anyone can forge)
    await make(`ferry-catalog-${HOST_TAG}-${dead}-eeeeee`, old);
    await chown(join(dir, `ferry-catalog-${HOST_TAG}-${dead}-eeeeee`), 65534, 65534);
    const removed = sweepCatalogDirs(dir);
    t.deepEqual(removed, [join(dir, `ferry-catalog-${HOST_TAG}-${dead}-aaaaaa`)]);
    t.deepEqual((await catalogDirs(dir)).sort(), [
      `ferry-catalog-${HOST_TAG}-${dead}-bbbbbb`, `ferry-catalog-${HOST_TAG}-${process.pid}-cccccc`, 'ferry-catalog-dddddd', `ferry-catalog-${HOST_TAG}-${dead}-eeeeee`,
    ].sort());
  });
});

test('a temporary folder too small for the catalog: CATALOG_TMP_FULL naming it, and nothing left there', async (t) => {
  await withTmp(async (dir) => {
    const small = join(dir, 'small');
    await withTmpfs(small, '64k', async () => {
      const disk = new MemDisk(2040 * 1024 ** 3);
      const err = await t.throwsAsync(writeVolume(disk, tree(5000), { tmpDir: small }));
      t.true(err instanceof FerryError, String(err));
      t.is((err as FerryError).code, 'CATALOG_TMP_FULL');
      t.true(err!.message.includes(small), err!.message);
      t.deepEqual(await catalogDirs(small), []);

      // a reader spooling a catalog bigger than the folder
      const big = new MemDisk(2040 * 1024 ** 3);
      await writeVolume(big, tree(5000), { tmpDir: dir });
      const rerr = await t.throwsAsync(VolumeReader.open(big, { memoryLimit: 0, tmpDir: small }));
      t.is((rerr as FerryError).code, 'CATALOG_TMP_FULL', String(rerr));
      t.deepEqual(await catalogDirs(small), []);
    });
  });
});

test('temporary names beside a file: those of processes that are gone are removed once unchanged for 30 s', async (t) => {
  await withTmp(async (dir) => {
    const dead = 4194305;
    const old = new Date(Date.now() - 45 * 1000);
    const make = async (name: string, mtime: Date) => {
      await writeFile(join(dir, name), 'partial image');
      await utimes(join(dir, name), mtime, mtime);
    };
    await make(`x.img.ferry-tmp-${HOST_TAG}-${dead}`, old);
    await make(`x.img.ferry-tmp-${HOST_TAG}-${dead + 1}`, new Date());
    await make(`x.img.ferry-tmp-${HOST_TAG}-${process.ppid}`, old);
    await make('x.img.ferry-tmp-notapid', old);
    await make(`y.img.ferry-tmp-${HOST_TAG}-${dead}`, old);
    t.is(tempBeside(join(dir, 'x.img')), join(dir, `x.img.ferry-tmp-${HOST_TAG}-${process.pid}`));
    t.deepEqual((await readdir(dir)).sort(), [
      `x.img.ferry-tmp-${HOST_TAG}-${dead + 1}`, `x.img.ferry-tmp-${HOST_TAG}-${process.ppid}`, 'x.img.ferry-tmp-notapid', `y.img.ferry-tmp-${HOST_TAG}-${dead}`,
    ].sort());
  });
});
