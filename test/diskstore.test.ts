// Stored (exploded) VHDs: a file stored as objects comes back byte for byte;
// a disk written through SpoolStorage reads back, chains, and exports to a
// file that qemu-img and libvhdi accept.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MemDisk } from '../format/memdisk.js';
import { createDifferencing, createVhd, emptyImage, openChain, VhdDisk, writeVhd } from '../format/vhd/index.js';
import { SpoolStorage, exportStoredVhd, openStoredDisk, storeVhdFile, zeroGaps } from '../vault/diskstore.js';
import { freeBuffer } from '../format/buffers.js';
import fc from 'fast-check';
import { ferry, fileHash, must, run, withTmp } from './helpers/exec.js';

const MiB = 1024 * 1024;

class MemObjects {
  readonly map = new Map<string, Buffer>();
  puts = 0;
  async put(name: string, data: Buffer) {
    this.puts++;
    this.map.set(name, Buffer.from(data));
  }
  async get(name: string) {
    const b = this.map.get(name);
    if (!b) throw new Error(`missing ${name}`);
    return b;
  }
}

test('a VHD file stored as objects exports back byte for byte (dynamic, differencing, fixed)', async (t) => {
  await withTmp(async (dir) => {
    const base = join(dir, 'base.vhd');
    await createVhd(base, { size: 20 * MiB });
    const d = await VhdDisk.open(base, { writable: true });
    await d.write(3 * MiB + 17, randomBytes(5 * MiB));
    await d.close();
    const child = join(dir, 'child.vhd');
    await createDifferencing(child, base);
    const c = await openChain(child, { writable: true });
    await c.write(MiB, randomBytes(MiB + 4096));
    await c.close();
    const fixed = join(dir, 'fixed.vhd');
    await writeFile(join(dir, 'raw'), Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(4 * MiB), randomBytes(MiB)]));
    t.is((await ferry(['vhd', 'create', fixed, '--type', 'fixed', '--from', join(dir, 'raw')])).code, 0);
    const objs = new MemObjects();
    for (const f of [base, child, fixed]) {
      const { id } = await storeVhdFile(f, objs);
      const out = join(dir, `${id}.vhd`);
      await exportStoredVhd(objs, id, out);
      t.true((await readFile(out)).equals(await readFile(f)), f);
    }
    // The stored chain reads as the file chain does.
    const bd = await VhdDisk.open(base);
    const baseId = bd.uniqueId.toString('hex');
    await bd.close();
    const childDisk = await VhdDisk.open(child);
    const childId = childDisk.uniqueId.toString('hex');
    await childDisk.close();
    const sb = await openStoredDisk(objs, baseId);
    const sc = await openStoredDisk(objs, childId, sb);
    const fc = await openChain(child);
    t.true((await sc.read(0, sc.size)).equals(await fc.read(0, fc.size)));
    await fc.close();
    await sc.close();
  });
});

test('a disk written through SpoolStorage reads back and exports to a VHD qemu-img and vhdiinfo accept', async (t) => {
  await withTmp(async (dir) => {
    const objs = new MemObjects();
    const size = 40 * MiB;
    const img = emptyImage({ size });
    const id = img.uniqueId.toString('hex');
    const spool = new SpoolStorage('new', id, img, objs, 2);
    const disk = await VhdDisk.fromStorage(spool, {});
    const model = new MemDisk(size);
    spool.pin(0);
    for (let i = 0; i < 60; i++) {
      const off = Math.floor(Math.random() * (size - 300000));
      const data = randomBytes(1 + Math.floor(Math.random() * 300000));
      await disk.write(off, data);
      await model.write(off, data);
    }
    await disk.write(0, Buffer.from('superblock'));
    await model.write(0, Buffer.from('superblock'));
    await spool.finish();
    const stored = await openStoredDisk(objs, id);
    t.true((await stored.read(0, size)).equals(await model.read(0, size)));
    const out = join(dir, 'out.vhd');
    await exportStoredVhd(objs, id, out);
    await writeFile(join(dir, 'model.raw'), await model.read(0, size));
    const cmp = await run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', out, join(dir, 'model.raw')]);
    t.is(cmp.code, 0, cmp.stdout.toString());
    await must('vhdiinfo', [out]);
    // A differencing disk over it, also spooled.
    const child = emptyImage({ size, parent: { path: `/${id}.vhd`, uniqueId: img.uniqueId, timestamp: 0 } });
    const cid = child.uniqueId.toString('hex');
    const cspool = new SpoolStorage('child', cid, child, objs, 1);
    const cdisk = await VhdDisk.fromStorage(cspool, { parent: stored });
    const patch = randomBytes(5 * MiB);
    await cdisk.write(7 * MiB + 512, patch);
    await model.write(7 * MiB + 512, patch);
    await cspool.finish();
    const reopened = await openStoredDisk(objs, cid, await openStoredDisk(objs, id));
    t.true((await reopened.read(0, size)).equals(await model.read(0, size)));
    t.true(reopened.hasBlock(3) && !reopened.hasBlock(0));
  });
});

test('a 2 GiB VHD stored into a directory vault with ferry vhd import comes back identical from ferry vhd export', async (t) => {
  await withTmp(async (dir) => {
    const env = { FERRY_PASSPHRASE: 'a passphrase of sixteen+ characters' };
    const vault = join(dir, 'vault');
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    const size = 2048 * MiB;
    const vhd = join(dir, 'big.vhd');
    // half the blocks hold data: random, text, and a block of zeros that is allocated anyway
    await writeVhdFromPattern(vhd, size);
    const imp = await ferry(['vhd', 'import', '--vault', vault, vhd], { env });
    t.is(imp.code, 0, imp.stderr);
    const id = imp.stdout.toString().trim();
    t.regex(id, /^[0-9a-f]{32}$/);
    const back = join(dir, 'back.vhd');
    const exp = await ferry(['vhd', 'export', '--vault', vault, '--disk', id, '--to', back], { env });
    t.is(exp.code, 0, exp.stderr);
    t.is(await fileHash(back), await fileHash(vhd));
    // and flattened through the vault, qemu-img agrees with the file
    const raw = join(dir, 'flat.raw');
    t.is((await ferry(['vhd', 'export', '--vault', vault, '--disk', id, '--to', raw, '--type', 'raw'], { env })).code, 0);
    const cmp = await run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', vhd, raw]);
    t.is(cmp.code, 0, cmp.stdout.toString());
    const missing = await ferry(['vhd', 'export', '--vault', vault, '--disk', 'f'.repeat(32), '--to', join(dir, 'x.vhd')], { env });
    t.is(missing.code, 1);
    t.regex(missing.stderr, /holds no disk f{32}/);
  });
});

test('ferry vhd export --vault of a disk with a damaged block fails naming the object and leaves no file behind', async (t) => {
  await withTmp(async (dir) => {
    const env = { FERRY_PASSPHRASE: 'a passphrase of sixteen+ characters' };
    const vault = join(dir, 'vault');
    t.is((await ferry(['init', vault, '--kdf-log-n', '12'], { env })).code, 0);
    const vhd = join(dir, 'small.vhd');
    await writeVhdFromPattern(vhd, 64 * MiB);
    const imp = await ferry(['vhd', 'import', '--vault', vault, vhd], { env });
    t.is(imp.code, 0, imp.stderr);
    const id = imp.stdout.toString().trim();
    const [block] = (await readdir(join(vault, 'disks', id, 'blocks'))).sort();
    const obj = join(vault, 'disks', id, 'blocks', block);
    const sealed = await readFile(obj);
    sealed[sealed.length - 5] ^= 1;
    await writeFile(obj, sealed);
    for (const type of ['exact', 'dynamic', 'raw']) {
      const out = join(dir, `out-${type}`);
      const r = await ferry(['vhd', 'export', '--vault', vault, '--disk', id, '--to', out, ...(type === 'exact' ? [] : ['--type', type])], { env });
      t.is(r.code, 1, r.stderr);
      t.true(r.stderr.includes(`object disks/${id}/blocks/${block}: authentication failed`), r.stderr);
      t.deepEqual((await readdir(dir)).filter((n) => n.startsWith('out-')), [], `${type}: nothing at --to, no temporary left`);
    }
  });
});

async function writeVhdFromPattern(path: string, size: number): Promise<void> {
  const bs = 2 * MiB;
  const text = Buffer.alloc(bs);
  for (let o = 0; o < bs; o += 64) text.write(`block text ${o} ......................................\n`, o);
  await writeVhd(path, { size, type: 'dynamic' }, async (i) => {
    if (i % 2 === 1) return null;
    if (i % 8 === 0) return randomBytes(bs);
    const b = Buffer.from(text);
    b.writeUInt32BE(i, 0);
    return b;
  });
}

test('zeroGaps zeroes exactly what no copied span covers (spans in any order, overlapping)', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 300 }), fc.array(fc.tuple(fc.nat(300), fc.nat(300)), { maxLength: 8 }), (n, raw) => {
      const spans = raw.map(([a, b]) => [Math.min(a, b, n), Math.min(Math.max(a, b), n)]);
      const out = Buffer.alloc(n, 0xaa);
      zeroGaps(out, spans.flat());
      for (let i = 0; i < n; i++) {
        const covered = spans.some(([a, b]) => a <= i && i < b);
        if (out[i] !== (covered ? 0xaa : 0)) return false;
      }
      return true;
    }),
    { numRuns: 500 },
  );
  t.pass();
});

test('a stored disk lends bytes inside one block as views equal to its reads, refuses the rest, and frees an evicted block only once its last view is given back', async (t) => {
  await withTmp(async (dir) => {
    const base = join(dir, 'base.vhd');
    await createVhd(base, { size: 24 * MiB });
    const d = await VhdDisk.open(base, { writable: true });
    const data = randomBytes(20 * MiB);
    await d.write(MiB, data);
    await d.close();
    const child = join(dir, 'child.vhd');
    await createDifferencing(child, base);
    const c = await openChain(child, { writable: true });
    await c.write(4 * MiB + 4096, randomBytes(8192)); // two sectors' worth of runs in the child, the rest of the block is the parent's
    await c.close();
    // a getter that hands out buffers of the caller's own, as a vault does: evicted blocks are freed
    const objs = new MemObjects();
    const ids: string[] = [];
    for (const f of [base, child]) ids.push((await storeVhdFile(f, objs)).id);
    const fresh = { fresh: true, get: async (name: string) => Buffer.from(await objs.get(name)) };
    const disk = await openStoredDisk(fresh, ids[0]);
    t.truthy(disk.view);
    // views inside a block equal reads; one across a block boundary, or of a block never written, is refused
    for (const [off, len] of [[MiB, 100], [MiB + 513, 70_000], [2 * MiB, 2 * MiB], [6 * MiB - 1, 1], [9 * MiB + 12345, 1_000_000]]) {
      const v = await disk.view!(off, len);
      t.truthy(v, `${off}+${len}`);
      t.true(v!.equals(await disk.read(off, len)), `${off}+${len}`);
      freeBuffer(v!);
    }
    t.is(await disk.view!(2 * MiB - 10, 20), null);
    t.is(await disk.view!(22 * MiB + 5, 100), null);
    // a block kept by a view outlives its eviction, and is freed when the view comes back
    const kept = await disk.view!(3 * MiB, 4096);
    const expect = Buffer.from(kept!);
    for (let b = 4; b < 20; b += 2) await disk.read(b * MiB, 4096); // more blocks than the cache holds
    t.true(kept!.equals(expect));
    freeBuffer(kept!);
    await new Promise((r) => setImmediate(r)); // (freed once its fetch's promise runs its callbacks)
    t.is(kept!.length, 0, 'the evicted block is freed with its last view');
    // a differencing child lends only what it holds itself: where the parent's bytes show through, null (read does it)
    const parent = await openStoredDisk(fresh, ids[0]);
    const cd = await openStoredDisk(fresh, ids[1], parent);
    const own = await cd.view!(4 * MiB + 4096, 8192);
    t.truthy(own);
    t.true(own!.equals(await cd.read(4 * MiB + 4096, 8192)));
    freeBuffer(own!);
    t.is(await cd.view!(4 * MiB, 8192), null);
    t.true((await cd.read(4 * MiB, 4096)).equals(data.subarray(3 * MiB, 3 * MiB + 4096)));
    await disk.close();
    await cd.close();
  });
});
