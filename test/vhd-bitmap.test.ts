// Blocks whose sector bitmap is not all set. A whole block is read with its
// bitmap in one request (format/vhd/vhd.ts); the sectors the bitmap marks
// absent must then read as zeros (dynamic) or as the parent (differencing),
// whatever bytes the file holds there. Checked against an in-memory model
// and against libvhdi's vhdimount, which honours bitmaps.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import { createDifferencing, openChain, writeVhd } from '../format/vhd/index.js';
import { HeaderStruct, SECTOR, bitmapSize } from '../format/vhd/layout.js';
import { must, withFuseMount, withTmp } from './helpers/exec.js';

const MiB = 1024 * 1024;
const BS = 2 * MiB;
const SIZE = 4 * BS;

/** Clears, in block `bi`'s bitmap, the sectors of every 4 KiB group listed (libvhdi reads whole bitmap bytes best). */
async function clearGroups(path: string, bi: number, groups: number[]): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const head = Buffer.alloc(1024);
    await fh.read(head, 0, 1024, 512);
    const h = HeaderStruct.decode(head, 0);
    const entry = Buffer.alloc(4);
    await fh.read(entry, 0, 4, Number(h.tableOffset) + bi * 4);
    const at = entry.readUInt32BE(0) * SECTOR;
    const bm = Buffer.alloc(bitmapSize(BS));
    await fh.read(bm, 0, bm.length, at);
    for (const g of groups) bm[g] = 0;
    await fh.write(bm, 0, bm.length, at);
  } finally {
    await fh.close();
  }
}

/** Reads through readInto into a buffer full of garbage: every byte must be written. */
async function readDirty(disk: Awaited<ReturnType<typeof openChain>>, pos: number, n: number): Promise<Buffer> {
  const out = Buffer.alloc(n, 0xa5);
  await disk.readInto(out, pos);
  return out;
}

/** What a chain reads: whole blocks, then odd ranges (the run-by-run path), each into a dirty buffer. */
async function readBothWays(path: string): Promise<{ whole: Buffer; pieces: Buffer }> {
  const whole = Buffer.alloc(SIZE);
  let disk = await openChain(path);
  try {
    for (let b = 0; b < SIZE / BS; b++) (await readDirty(disk, b * BS, BS)).copy(whole, b * BS);
  } finally {
    await disk.close();
  }
  const pieces = Buffer.alloc(SIZE);
  disk = await openChain(path);
  try {
    for (let pos = 0; pos < SIZE; ) {
      const n = Math.min(SIZE - pos, 777 * 1024 + 300);
      (await readDirty(disk, pos, n)).copy(pieces, pos);
      pos += n;
    }
  } finally {
    await disk.close();
  }
  return { whole, pieces };
}

test('sectors a dynamic bitmap marks absent read as zeros, as vhdimount reads them', async (t) => {
  await withTmp(async (dir) => {
    const data = randomBytes(SIZE);
    const vhd = join(dir, 'd.vhd');
    // blocks 0 and 2 hold data (with sectors marked absent), block 3 is not allocated
    data.fill(0, 3 * BS);
    await writeVhd(vhd, { size: SIZE, type: 'dynamic' }, async (i) => (i === 3 ? null : Buffer.from(data.subarray(i * BS, (i + 1) * BS))));
    const groups0 = [0, 1, 7, 200, 511];
    const groups2 = [100, 101, 102];
    await clearGroups(vhd, 0, groups0);
    await clearGroups(vhd, 2, groups2);
    const model = Buffer.from(data);
    for (const [bi, gs] of [[0, groups0], [2, groups2]] as const) for (const g of gs) model.fill(0, bi * BS + g * 4096, bi * BS + (g + 1) * 4096);
    const { whole, pieces } = await readBothWays(vhd);
    t.true(whole.equals(model), 'whole blocks');
    t.true(pieces.equals(model), 'odd ranges');
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    const theirs = await withFuseMount(['vhdimount', vhd, mnt], mnt, async () => must('cat', [join(mnt, 'vhdi1')]));
    t.true(theirs.equals(model), 'vhdimount agrees');
  });
});

test('sectors a differencing bitmap marks absent read from the parent, as vhdimount reads them', async (t) => {
  await withTmp(async (dir) => {
    const parentData = randomBytes(SIZE);
    const childData = randomBytes(SIZE);
    const parent = join(dir, 'p.vhd');
    await writeVhd(parent, { size: SIZE, type: 'dynamic' }, async (i) => Buffer.from(parentData.subarray(i * BS, (i + 1) * BS)));
    const child = join(dir, 'c.vhd');
    await createDifferencing(child, parent);
    const c = await openChain(child, { writable: true });
    try {
      await c.write(0, childData.subarray(0, BS));
      await c.write(BS, childData.subarray(BS, 2 * BS));
    } finally {
      await c.close();
    }
    const groups = [0, 3, 4, 5, 300, 511];
    await clearGroups(child, 1, groups);
    const model = Buffer.concat([childData.subarray(0, 2 * BS), parentData.subarray(2 * BS)]);
    for (const g of groups) parentData.copy(model, BS + g * 4096, BS + g * 4096, BS + (g + 1) * 4096);
    const { whole, pieces } = await readBothWays(child);
    t.true(whole.equals(model), 'whole blocks');
    t.true(pieces.equals(model), 'odd ranges');
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    const theirs = await withFuseMount(['vhdimount', child, mnt], mnt, async () => must('cat', [join(mnt, 'vhdi2')]));
    t.true(theirs.equals(model), 'vhdimount agrees');
  });
});
