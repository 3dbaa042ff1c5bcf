// Buffers handed back instead of left to the garbage collector: the volume
// writer's release() protocol (a source may reuse a piece's memory once the
// writer released it) and freeBuffer (memory freed on the spot).
import test from 'ava';
import { createHash } from 'node:crypto';
import { MemDisk } from '../format/memdisk.js';
import { freeBuffer } from '../format/seal/pool.js';
import { VolumeReader, writeVolume, type DataPiece, type EntryMeta, type SourceEntry } from '../format/volume/index.js';
import { pseudoRandom } from './helpers/tree.js';

const MiB = 1024 * 1024;

function fileMeta(path: string, size: number): EntryMeta {
  return {
    path: Buffer.from(path), type: 'file', mode: 0o644, uid: 0, gid: 0, atimeNs: 1n, mtimeNs: 2n, ctimeNs: 3n,
    size, ino: 1n, dev: 1n, nlink: 1, rdev: 0n, target: null, xattrs: [], implicit: false,
  };
}

/**
 * A source that recycles its buffers: a released buffer is scribbled over at
 * once and used for the next piece, so a writer that still needed it would
 * store garbage. Counts releases per piece.
 */
class RecyclingSource {
  private free: Buffer[] = [];
  allocated = 0;
  released = 0;
  twice = 0;
  handed = 0;

  piece(offset: number, bytes: Buffer): DataPiece {
    let buf = this.free.pop();
    if (!buf || buf.length < bytes.length) {
      buf = Buffer.alloc(Math.max(bytes.length, MiB));
      this.allocated++;
    }
    bytes.copy(buf);
    this.handed++;
    let done = false;
    return {
      offset,
      data: buf.subarray(0, bytes.length),
      release: () => {
        if (done) {
          this.twice++;
          return;
        }
        done = true;
        this.released++;
        buf!.fill(0xee);
        this.free.push(buf!);
      },
    };
  }
}

test('writer: releases every piece exactly once, only when done with it; a source reusing released buffers stores the right bytes', async (t) => {
  const src = new RecyclingSource();
  // Pieces of every kind: large ones written as they are, small ones copied, holes between some.
  const files: { path: string; size: number; pieces: { offset: number; data: Buffer }[] }[] = [
    { path: '/big', size: 5 * MiB + 77, pieces: [0, 1, 2, 3, 4, 5].map((i) => ({ offset: i * MiB, data: pseudoRandom(i === 5 ? 77 : MiB, i) })) },
    { path: '/small', size: 3000, pieces: [{ offset: 0, data: pseudoRandom(3000, 10) }] },
    { path: '/sparse', size: 9 * MiB, pieces: [{ offset: 0, data: pseudoRandom(4096, 11) }, { offset: 4 * MiB, data: pseudoRandom(MiB, 12) }, { offset: 8 * MiB, data: pseudoRandom(65536, 13) }] },
    { path: '/mixed', size: 3 * MiB + 5, pieces: [{ offset: 0, data: pseudoRandom(100, 14) }, { offset: 100, data: pseudoRandom(MiB, 15) }, { offset: MiB + 100, data: pseudoRandom(2 * MiB - 95, 16) }] },
  ];
  for (let i = 0; i < 40; i++) files.push({ path: `/many/${i}`, size: 20_000 + i, pieces: [{ offset: 0, data: pseudoRandom(20_000 + i, 100 + i) }] });
  const entries: SourceEntry[] = [
    { ...fileMeta('/many', 0), type: 'dir', mode: 0o755 },
    ...files.map((f) => ({
      ...fileMeta(f.path, f.size),
      content: async function* () {
        for (const p of f.pieces) yield src.piece(p.offset, p.data);
      },
    })),
  ];
  // Writes land a moment after they are issued, as on a real disk.
  const disk = new MemDisk(64 * 1024 ** 3);
  const write = disk.write.bind(disk);
  disk.write = async (offset, data) => {
    await new Promise((r) => setTimeout(r, 1));
    return write(offset, data);
  };
  await writeVolume(disk, entries);
  t.is(src.released, src.handed, 'every piece released');
  t.is(src.twice, 0, 'none released twice');
  t.true(src.allocated < src.handed / 2, `buffers were reused (${src.allocated} allocated for ${src.handed} pieces)`);
  const r = await VolumeReader.open(disk);
  try {
    for (const f of files) {
      const want = Buffer.alloc(f.size);
      for (const p of f.pieces) p.data.copy(want, p.offset);
      const got = await r.read(f.path, 0, f.size);
      t.is(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(want).digest('hex'), f.path);
    }
  } finally {
    r.close();
  }
});

test('freeBuffer frees a whole buffer at once and leaves views and small buffers alone', (t) => {
  // (measured just around the call: other tests of this file free their buffers meanwhile, and a
  // collection the allocation sets off may free them between two readings)
  const big = Buffer.alloc(8 * MiB, 1);
  const held = process.memoryUsage().arrayBuffers;
  freeBuffer(big);
  t.is(big.length, 0, 'the buffer is empty after');
  t.is(big.buffer.byteLength, 0, 'its memory is detached');
  t.true(process.memoryUsage().arrayBuffers <= held - 7 * MiB, 'its memory went back without a garbage collection');

  const whole = Buffer.alloc(2 * MiB, 2);
  const view = whole.subarray(MiB);
  freeBuffer(view);
  t.is(view.length, MiB, 'a view is not freed');
  t.is(whole[0], 2);
  const small = Buffer.from('small');
  freeBuffer(small);
  t.is(small.toString(), 'small', 'a small (pooled) buffer is not freed');
});
