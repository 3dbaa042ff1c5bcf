// VHD interoperability with real tools: qemu-img / qemu-io (qemu 7.2) and
// libvhdi (vhdiinfo, vhdimount). What they write ferry reads; what ferry
// writes they read back byte for byte.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createDifferencing, createVhd, openChain, VhdDisk } from '../format/vhd/index.js';
import { FooterStruct, HeaderStruct, SECTOR, UNUSED, bitmapSize, encodeFooter, encodeHeader } from '../format/vhd/layout.js';
import { SAMPLES, ferry, fileHash, must, run, sha256, withFuseMount, withTmp } from './helpers/exec.js';

const MiB = 1024 * 1024;

async function qemuRaw(vhd: string, dir: string): Promise<Buffer> {
  const out = join(dir, `qemu-${Math.random().toString(36).slice(2)}.raw`);
  await must('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', vhd, out]);
  return readFile(out);
}

async function ferryCat(vhd: string, extra: string[] = []): Promise<Buffer> {
  const r = await ferry(['vhd', 'cat', vhd, ...extra]);
  if (r.code !== 0) throw new Error(`ferry vhd cat exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

async function qemuWrites(vhd: string, writes: Array<[number, number, number]>): Promise<void> {
  const cmds = writes.flatMap(([pattern, off, len]) => ['-c', `write -P ${pattern} ${off} ${len}`]);
  await must('qemu-io', ['-f', 'vpc', ...cmds, vhd]);
}

const scattered: Array<[number, number, number]> = [
  [0xab, 0, 4096],
  [0x11, 512, 512],
  [0x22, 2 * MiB - 1024, 3072], // crosses a block boundary
  [0x33, 5 * MiB + 1536, 70000 - (70000 % 512)],
  [0x44, 9 * MiB, 512],
];

for (const variant of [
  { name: 'dynamic, CHS-exact size', args: ['-f', 'vpc'], size: '10M' },
  { name: 'dynamic, size not CHS-exact (force_size)', args: ['-f', 'vpc', '-o', 'force_size=on'], size: '10000384' },
  { name: 'fixed, CHS-exact size', args: ['-f', 'vpc', '-o', 'subformat=fixed'], size: '10M' },
  { name: 'fixed, size not CHS-exact (force_size)', args: ['-f', 'vpc', '-o', 'subformat=fixed,force_size=on'], size: '10000384' },
]) {
  test(`qemu-made ${variant.name}: ferry vhd cat equals qemu-img convert`, async (t) => {
    await withTmp(async (dir) => {
      const vhd = join(dir, 'q.vhd');
      await must('qemu-img', ['create', ...variant.args, vhd, variant.size]);
      const empty = await ferryCat(vhd);
      t.is(sha256(empty), sha256(await qemuRaw(vhd, dir)), 'empty disk');
      t.true(empty.every((b) => b === 0));
      await qemuWrites(vhd, scattered);
      const mine = await ferryCat(vhd);
      const theirs = await qemuRaw(vhd, dir);
      t.is(mine.length, theirs.length);
      t.true(mine.equals(theirs));
      t.is(mine[2 * MiB], 0x22);
      // and a range in the middle
      const part = await ferryCat(vhd, ['--offset', String(2 * MiB - 1000), '--length', '5000']);
      t.true(part.equals(theirs.subarray(2 * MiB - 1000, 2 * MiB + 4000)));
      const check = await ferry(['vhd', 'check', vhd]);
      t.is(check.code, 0, check.stdout.toString() + check.stderr);
    });
  });
}

test('qemu-made sparse 2040 GiB disk: written ranges and holes read as qemu reads them', async (t) => {
  await withTmp(async (dir) => {
    const vhd = join(dir, 'big.vhd');
    await must('qemu-img', ['create', '-f', 'vpc', '-o', 'force_size=on', vhd, '2040G']);
    const size = 2040 * 1024 * MiB;
    const writes: Array<[number, number, number]> = [
      [0x5a, 0, 65536],
      [0x6b, 1024 * 1024 * MiB + 4096, 8192],
      [0x7c, size - 3 * MiB, 3 * MiB],
    ];
    await qemuWrites(vhd, writes);
    const raw = join(dir, 'big.raw');
    await must('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', vhd, raw]);
    t.is((await stat(raw)).size, size);
    const fh = await open(raw, 'r');
    try {
      const ranges = [...writes.map(([, o, l]) => [o, l] as [number, number]), [12345 * MiB, 65536] as [number, number], [size - 8 * MiB, 6 * MiB] as [number, number]];
      for (const [off, len] of ranges) {
        const theirs = Buffer.alloc(len);
        await fh.read(theirs, 0, len, off);
        const mine = await ferryCat(vhd, ['--offset', String(off), '--length', String(len)]);
        t.true(mine.equals(theirs), `range ${off}+${len}`);
      }
    } finally {
      await fh.close();
    }
    const info = JSON.parse((await ferry(['vhd', 'info', vhd, '--json'])).stdout.toString());
    t.is(info.layers[0].size, size);
    t.is(info.layers[0].allocatedBlocks, 4);
  });
});

function patterned(size: number): Buffer {
  // half data (random and compressible), half zero, in 1 MiB stripes
  const b = Buffer.alloc(size);
  for (let off = 0; off < size; off += 2 * MiB) {
    const n = Math.min(MiB, size - off);
    if ((off / (2 * MiB)) % 2 === 0) randomBytes(n).copy(b, off);
    else b.fill(`stripe ${off} `, off, off + n);
  }
  return b;
}

test('ferry-made disks: qemu-img compare says identical and vhdiinfo accepts them', async (t) => {
  await withTmp(async (dir) => {
    for (const size of [10 * MiB, 10000384, 7 * MiB + 512]) {
      const raw = join(dir, `src-${size}.raw`);
      const data = patterned(size);
      await writeFile(raw, data);
      for (const type of ['dynamic', 'fixed']) {
        const vhd = join(dir, `c-${size}-${type}.vhd`);
        const r = await ferry(['vhd', 'create', vhd, '--from', raw, '--type', type]);
        t.is(r.code, 0, r.stderr);
        const cmp = await run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', vhd, raw]);
        t.is(cmp.code, 0, `${type} ${size}: ${cmp.stdout}${cmp.stderr}`);
        const info = await run('vhdiinfo', [vhd]);
        t.is(info.code, 0, info.stderr);
        t.regex(info.stdout.toString(), new RegExp(`\\(${size} bytes\\)`));
        // export back through each type
        for (const et of ['fixed', 'dynamic', 'raw']) {
          const out = join(dir, `e-${size}-${type}-${et}.${et === 'raw' ? 'raw' : 'vhd'}`);
          const e = await ferry(['vhd', 'export', vhd, '--to', out, '--type', et]);
          t.is(e.code, 0, e.stderr);
          if (et === 'raw') t.true((await readFile(out)).equals(data));
          else {
            const c2 = await run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', out, raw]);
            t.is(c2.code, 0, `export ${et}: ${c2.stdout}`);
            t.is((await run('vhdiinfo', [out])).code, 0);
          }
        }
      }
    }
  });
});

test('ferry-made disks read back through vhdimount byte for byte', async (t) => {
  await withTmp(async (dir) => {
    const raw = join(dir, 'src.raw');
    const data = patterned(9 * MiB + 4096);
    await writeFile(raw, data);
    const vhd = join(dir, 'd.vhd');
    t.is((await ferry(['vhd', 'create', vhd, '--from', raw])).code, 0);
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    await withFuseMount(['vhdimount', vhd, mnt], mnt, async () => {
      t.is(await fileHash(join(mnt, 'vhdi1')), sha256(data));
    });
  });
});

/** Writes random ranges into `disk` and mirrors them into `model`. */
async function scribble(disk: VhdDisk, model: Buffer, n: number, unit: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const units = Math.floor(model.length / unit);
    const first = Math.floor(Math.random() * units);
    const count = 1 + Math.floor(Math.random() * Math.min(units - first, i % 5 === 0 ? 700 : 8));
    const data = randomBytes(count * unit);
    await disk.write(first * unit, data);
    data.copy(model, first * unit);
  }
}

async function threeLayerChain(dir: string, unit: number) {
  const size = 16 * MiB;
  const model = Buffer.alloc(size);
  const snapshots: Buffer[] = [];
  const files = ['base.vhd', 'mid.vhd', 'top.vhd'].map((f) => join(dir, f));
  await createVhd(files[0], { size });
  for (let i = 0; i < files.length; i++) {
    if (i > 0) await createDifferencing(files[i], files[i - 1]);
    const d = await openChain(files[i], { writable: true });
    await scribble(d, model, 40, unit);
    await d.close();
    snapshots.push(Buffer.from(model));
  }
  return { files, snapshots };
}

for (const unit of [4096, 512]) {
  test(`a ferry chain of three disks written in ${unit}-byte units: every vhdimount layer equals ferry's reading`, async (t) => {
    await withTmp(async (dir) => {
      const { files, snapshots } = await threeLayerChain(dir, unit);
      const mnt = join(dir, 'mnt');
      await mkdir(mnt);
      await withFuseMount(['vhdimount', files[2], mnt], mnt, async () => {
        for (let i = 0; i < 3; i++) {
          const own = await openChain(files[i]);
          const mine = await own.read(0, own.size);
          await own.close();
          t.true(mine.equals(snapshots[i]), `ferry layer ${i + 1}`);
          t.is(await fileHash(join(mnt, `vhdi${i + 1}`)), sha256(mine), `vhdimount layer ${i + 1}`);
        }
      });
      const info = await run('vhdiinfo', [files[2]]);
      t.is(info.code, 0, info.stderr);
      t.regex(info.stdout.toString(), /Differential/);
      const check = await ferry(['vhd', 'check', files[2]]);
      t.is(check.code, 0, check.stdout.toString());
    });
  });
}

test('shared samples read as vhdimount reads them', async (t) => {
  await withTmp(async (dir) => {
    for (const f of ['image.vhd', 'image-differential.vhd', 'ext2.vhd']) await copyFile(join(SAMPLES, f), join(dir, f));
    for (const f of ['image.vhd', 'ext2.vhd', 'image-differential.vhd']) {
      const mnt = join(dir, `mnt-${f}`);
      await mkdir(mnt);
      const mine = await ferryCat(join(dir, f));
      await withFuseMount(['vhdimount', join(dir, f), mnt], mnt, async () => {
        const layers = f === 'image-differential.vhd' ? 2 : 1;
        t.is(await fileHash(join(mnt, `vhdi${layers}`)), sha256(mine), f);
      });
    }
    // ext2.vhd holds a real filesystem: its superblock magic is where ext2 keeps it
    const ext2 = await ferryCat(join(dir, 'ext2.vhd'));
    t.is(ext2.readUInt16LE(1024 + 56), 0xef53);
    // image.vhd has a wrong footer checksum: readable, but check names it
    const c = await ferry(['vhd', 'check', join(dir, 'image.vhd'), '--json']);
    t.is(c.code, 1);
    const doc = JSON.parse(c.stdout.toString());
    t.deepEqual(doc.problems.map((p: { code: string }) => p.code), ['VHD_BAD_CHECKSUM']);
    t.is(doc.problems[0].field, 'footer.checksum');
  });
});

test('the Windows differencing sample names its absent parent; with a parent beside it, it reads as vhdimount reads it', async (t) => {
  await withTmp(async (dir) => {
    const child = join(dir, 'fat-differential.vhd');
    await copyFile(join(SAMPLES, 'fat-differential.vhd'), child);
    const r = await ferry(['vhd', 'cat', child]);
    t.is(r.code, 1);
    t.regex(r.stderr, /VHD_PARENT_MISSING/);
    t.regex(r.stderr, /fat-parent\.vhd/);
    t.is(r.stderr.trim().split('\n').length, 1, 'one line');
    const info = JSON.parse((await ferry(['vhd', 'info', child, '--json'])).stdout.toString());
    const layer = info.layers[0];
    t.is(layer.parentName, 'C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd');
    t.deepEqual(layer.locators.map((l: { code: string; path: string }) => [l.code, l.path]), [
      ['W2ku', 'C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd'],
      ['W2ru', '.\\fat-parent.vhd'],
    ]);
    // A parent of our own making with the unique id the child expects.
    const parent = join(dir, 'fat-parent.vhd');
    const size = layer.size as number;
    await createVhd(parent, { size, uniqueId: Buffer.from(layer.parentUniqueId, 'hex') });
    const p = await VhdDisk.open(parent, { writable: true });
    await p.write(0, Buffer.alloc(size, 0x5c));
    await p.close();
    const mine = await ferryCat(child);
    t.is(mine.length, size);
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    const theirs = await withFuseMount(['vhdimount', child, mnt], mnt, async () => must('cat', [join(mnt, 'vhdi2')]));
    t.is(theirs.length, mine.length);
    // Windows writes bitmap bytes such as 0xcb, which libvhdi decodes wrongly
    // (a sector counts as present when any earlier bit of its byte is set).
    // Sectors where the spec and libvhdi's rule agree must read the same;
    // the others must differ only because of that rule.
    const file = await readFile(child);
    const disk = await VhdDisk.open(child, { parent: null });
    let agreeing = 0;
    let buggy = 0;
    for (let bi = 0; bi < disk.blockCount; bi++) {
      const at = disk.blockOffset(bi);
      for (let s = 0; s < disk.blockSize / SECTOR; s++) {
        const off = bi * disk.blockSize + s * SECTOR;
        const a = mine.subarray(off, off + SECTOR);
        const b = theirs.subarray(off, off + SECTOR);
        if (at === undefined) {
          t.true(a.equals(b));
          continue;
        }
        const byte = file[at + (s >> 3)];
        const spec = (byte & (0x80 >> (s & 7))) !== 0;
        const libvhdi = (byte >> (7 - (s & 7))) !== 0;
        const dataAt = at + 512 + s * SECTOR;
        if (spec) t.true(a.equals(file.subarray(dataAt, dataAt + SECTOR)), `sector ${s} from the child`);
        else t.true(a.equals(Buffer.alloc(SECTOR, 0x5c)), `sector ${s} from the parent`);
        if (spec === libvhdi) {
          agreeing++;
          if (!a.equals(b)) t.fail(`sector ${bi}:${s} differs although both rules agree`);
        } else {
          buggy++;
          t.true(b.equals(file.subarray(dataAt, dataAt + SECTOR)), `libvhdi reads sector ${s} from the child`);
        }
      }
    }
    await disk.close();
    t.true(agreeing > 4000);
    t.true(buggy > 0, 'the sample exercises the bitmap rule');
    t.true(mine.some((b) => b !== 0x5c), 'the child holds data of its own');
    t.true(mine.some((b) => b === 0x5c), 'the parent shows through');
  });
});

/** Rewrites a ferry dynamic VHD the way Windows lays one out: 4 KiB-aligned BAT padding and blocks, a gap before the footer. */
async function windowsStyle(src: string, dst: string, opts: { shortFooter?: boolean } = {}): Promise<void> {
  const b = await readFile(src);
  const footer = FooterStruct.decode(b, b.length - 512);
  const header = HeaderStruct.decode(b, 512);
  const entries = header.maxTableEntries;
  const batOff = 2048;
  const batBytes = Math.ceil((entries * 4) / 4096) * 4096;
  const span = bitmapSize(header.blockSize) + header.blockSize;
  const parts: Buffer[] = [];
  let pos = batOff + batBytes;
  const bat = Buffer.alloc(batBytes, 0xff);
  for (let i = 0; i < entries; i++) {
    const e = b.readUInt32BE(Number(header.tableOffset) + i * 4);
    if (e === UNUSED) continue;
    pos = Math.ceil(pos / 4096) * 4096;
    bat.writeUInt32BE(pos / SECTOR, i * 4);
    parts.push(Buffer.concat([Buffer.alloc(pos - offsetOf(parts, batOff + batBytes)), b.subarray(e * SECTOR, e * SECTOR + span)]));
    pos += span;
  }
  const newHeader = encodeHeader({ ...header, tableOffset: BigInt(batOff) });
  const foot = encodeFooter(footer);
  const head = Buffer.concat([foot, newHeader, Buffer.alloc(batOff - 1536), bat]);
  const gap = Buffer.alloc(3584 + 7);
  const tail = opts.shortFooter ? foot.subarray(0, 511) : foot;
  await writeFile(dst, Buffer.concat([head, ...parts, gap, tail]));
}
function offsetOf(parts: Buffer[], start: number): number {
  return parts.reduce((n, p) => n + p.length, start);
}

test('Windows layouts (4 KiB-aligned blocks, gap before the footer) and a 511-byte footer read right', async (t) => {
  await withTmp(async (dir) => {
    const raw = join(dir, 'src.raw');
    const data = patterned(6 * MiB);
    await writeFile(raw, data);
    const vhd = join(dir, 'plain.vhd');
    t.is((await ferry(['vhd', 'create', vhd, '--from', raw])).code, 0);
    const win = join(dir, 'win.vhd');
    await windowsStyle(vhd, win);
    t.true((await ferryCat(win)).equals(data));
    t.true((await qemuRaw(win, dir)).equals(data), 'qemu agrees the rewritten file is right');
    const old = join(dir, 'vpc.vhd');
    await windowsStyle(vhd, old, { shortFooter: true });
    t.true((await ferryCat(old)).equals(data));
  });
});

test('what ferry writes into a qemu-made disk, qemu reads back', async (t) => {
  await withTmp(async (dir) => {
    const vhd = join(dir, 'q.vhd');
    await must('qemu-img', ['create', '-f', 'vpc', vhd, '12M']);
    await qemuWrites(vhd, scattered);
    const d = await VhdDisk.open(vhd, { writable: true });
    const extra = randomBytes(3 * MiB + 777);
    await d.write(MiB + 5, extra);
    const mine = await d.read(0, d.size);
    await d.close();
    t.true((await qemuRaw(vhd, dir)).equals(mine));
    const mnt = join(dir, 'mnt');
    await mkdir(mnt);
    await withFuseMount(['vhdimount', vhd, mnt], mnt, async () => {
      t.is(await fileHash(join(mnt, 'vhdi1')), sha256(mine));
    });
  });
});
