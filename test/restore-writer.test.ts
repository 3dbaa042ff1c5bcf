// The restore's two file writers, the addon's thread (C) and the worker
// thread (Node's calls), give the same files: every kind of entry, files
// written in parts, sparse files, chunk sums checked, and the same warnings.
import test from 'ava';
import { writeFile, readFile, mkdir, chmod, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { walk } from '../source/files.js';
import { MemDisk } from '../format/memdisk.js';
import { writeVolume, VolumeReader } from '../format/volume/index.js';
import { restoreFiles } from '../restore/files.js';
import { nativeAddon } from '../format/native.js';
import { makeTree, snapshotTree, diffSnapshots, pseudoRandom } from './helpers/tree.js';
import { must, withTmp } from './helpers/exec.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** restoreFiles with the writer `which` (FERRY_WRITER is read when the restore starts its writer). */
async function restoreWith(which: 'native' | 'worker', reader: VolumeReader, to: string) {
  const warnings: string[] = [];
  const before = process.env.FERRY_WRITER;
  if (which === 'worker') process.env.FERRY_WRITER = 'worker';
  else delete process.env.FERRY_WRITER;
  try {
    const r = await restoreFiles(reader, { to, onWarning: (w) => warnings.push(`${w.code}: ${w.message}`) });
    return { r, warnings };
  } finally {
    if (before === undefined) delete process.env.FERRY_WRITER;
    else process.env.FERRY_WRITER = before;
  }
}

test.serial('the addon writer and the worker restore the same tree: every kind of entry, large files in parts, sparse files, capabilities in a 0777 folder', async (t) => {
  if (!nativeAddon()?.startWriter) return t.fail('the addon is not built (npm test builds it)');
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await makeTree(src, { hugeSparse: 2 * GiB });
    await writeFile(join(src, 'dense-9m.bin'), pseudoRandom(9 * MiB + 5, 21)); // parts of 4 MiB: first, middle, last
    await mkdir(join(src, 'open'));
    await chmod(join(src, 'open'), 0o777);
    await writeFile(join(src, 'open', 'ping'), 'cap');
    await must('setcap', ['cap_net_raw+ep', join(src, 'open', 'ping')]); // security.capability in a folder others can write: set through the descriptor
    await must('setfattr', ['-n', 'user.note', '-v', 'kept', join(src, 'open', 'ping')]);
    const before = await snapshotTree(src);
    const disk = new MemDisk(2040 * GiB);
    await writeVolume(disk, walk([src]));
    const reader = await VolumeReader.open(disk);
    for (const which of ['native', 'worker'] as const) {
      const to = join(dir, which);
      const { r, warnings } = await restoreWith(which, reader, to);
      t.deepEqual(warnings, [], which);
      t.is(r.failed, 0, which);
      t.deepEqual(diffSnapshots(before, await snapshotTree(join(to, src))), [], which);
      t.is((await must('getcap', [join(to, src, 'open', 'ping')])).toString().trim().split(' ').pop(), 'cap_net_raw=ep', which);
    }
    reader.close();
  });
});

test.serial('both writers find a damaged chunk (in a whole file and in a part of a large one), restore the data as read, and warn alike', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'small.bin'), pseudoRandom(300 * 1024, 1));
    await writeFile(join(src, 'large.bin'), pseudoRandom(10 * MiB, 2));
    const disk = new MemDisk(64 * GiB);
    await writeVolume(disk, walk([src]));
    let reader = await VolumeReader.open(disk);
    // one byte changed in the data of each file: in small.bin's only chunk, and in large.bin past its first part (4 MiB)
    for (const [name, at] of [['small.bin', 1000], ['large.bin', 6 * MiB + 3]] as const) {
      const e = reader.stat(join(src, name))!;
      const x = e.extents.find((x) => x.fileOffset <= at && at < x.fileOffset + x.length)!;
      const pos = x.diskOffset + (at - x.fileOffset);
      const b = await disk.read(pos, 1);
      b[0] ^= 0xff;
      await disk.write(pos, b);
    }
    reader.close();
    reader = await VolumeReader.open(disk);
    const seen: Record<string, string[]> = {};
    for (const which of ['native', 'worker'] as const) {
      const to = join(dir, which);
      const { r, warnings } = await restoreWith(which, reader, to);
      t.is(r.failed, 0, which);
      seen[which] = warnings.map((w) => w.replaceAll(to, 'TO'));
      t.is(warnings.length, 2, warnings.join('\n'));
      t.true(warnings.some((w) => /VOLUME_BAD_CHUNK: .*small\.bin: data at offset 0 does not match/.test(w)), warnings.join('\n'));
      const cs = reader.chunkSize;
      const bad = Math.floor((6 * MiB + 3) / cs) * cs;
      t.true(warnings.some((w) => new RegExp(`VOLUME_BAD_CHUNK: .*large\\.bin: data at offset ${bad} does not match`).test(w)), warnings.join('\n'));
      // restored as read: the changed byte is there, the rest equal
      const got = await readFile(join(to, src, 'large.bin'));
      const want = pseudoRandom(10 * MiB, 2);
      want[6 * MiB + 3] ^= 0xff;
      t.true(got.equals(want), which);
    }
    t.deepEqual(seen.native.sort(), seen.worker.sort());
    reader.close();
  });
});

test.serial('both writers restore times that are whole microseconds exactly (seconds near 2^31 as a double are good to 0.24 us only)', async (t) => {
  await withTmp(async (dir) => {
    const src = join(dir, 'src');
    await mkdir(src);
    // 60 files, each with atime and mtime a whole number of microseconds: rounding the middle-aimed
    // double (usSeconds) instead of taking the microsecond below missed about half of them by one
    const times: bigint[] = [];
    for (let i = 0; i < 60; i++) {
      const p = join(src, `f${i}`);
      await writeFile(p, `file ${i}\n`);
      const us = 1796657283826864n + BigInt(i) * 777_777n;
      times.push(us * 1000n);
      const at = `${us / 1_000_000n}.${String(us % 1_000_000n).padStart(6, '0')}`;
      await must('touch', ['-a', '-d', `@${at}`, p]);
      await must('touch', ['-m', '-d', `@${at}`, p]);
    }
    const disk = new MemDisk(64 * GiB);
    await writeVolume(disk, walk([src]));
    const reader = await VolumeReader.open(disk);
    for (const which of ['native', 'worker'] as const) {
      const to = join(dir, which);
      const { r, warnings } = await restoreWith(which, reader, to);
      t.deepEqual(warnings, [], which);
      t.is(r.failed, 0, which);
      const wrong: string[] = [];
      for (let i = 0; i < 60; i++) {
        const st = await lstat(join(to, src, `f${i}`), { bigint: true });
        if (st.mtimeNs !== times[i] || st.atimeNs !== times[i]) wrong.push(`f${i}: ${st.atimeNs} ${st.mtimeNs} != ${times[i]}`);
      }
      t.deepEqual(wrong, [], which);
    }
    reader.close();
  });
});
