// A file made shorter while its range is mapped, by less than the range's
// last page: no SIGBUS (the page is still partly inside the file), and the
// bytes past the new end read as zeros. The sealer checks the size again once
// it has sealed the bytes, so this is SOURCE_CHANGED, not an object of zeros.
import test from 'ava';
import { randomBytes, randomFillSync } from 'node:crypto';
import { closeSync, openSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError } from '../format/errors.js';
import { mappingAvailable } from '../format/filerange.js';
import { SealPool } from '../format/seal/pool.js';
import { Sealer } from '../format/seal/seal.js';
import { withTmp } from './helpers/exec.js';

test('a file made shorter inside the last page of a mapped range is SOURCE_CHANGED, not zeros', async (t) => {
  t.true(mappingAvailable());
  await withTmp(async (dir) => {
    const f = join(dir, 'disk.vhd');
    const bytes = randomBytes(64 * 1024);
    writeFileSync(f, bytes);
    const fd = openSync(f, 'r');
    const key = randomBytes(32);
    const offset = 512;
    const length = 8192 + 3000; // a VHD block: sector-aligned, ends inside a page
    // seal()'s random source runs after the range is mapped and before AES-GCM reads it (codec none)
    const pool = new SealPool(key, { size: 0, codec: 'none', random: (b) => { truncateSync(f, offset + length - 200); randomFillSync(b); } });
    try {
      const got = await pool.sealRange('disks/x/blocks/0', { fd, offset, length, file: f }).then(
        (sealed) => new Sealer(key).unseal('disks/x/blocks/0', sealed),
        (err: unknown) => err as FerryError,
      );
      if (got instanceof Buffer) {
        t.fail(`sealed without an error; last 200 bytes all zero: ${got.subarray(-200).every((x) => x === 0)}; equal to the file's bytes: ${got.equals(bytes.subarray(offset, offset + length))}`);
      } else {
        t.is((got as FerryError).code, "SOURCE_CHANGED");
      }
    } finally {
      await pool.close();
      closeSync(fd);
    }
  });
});

test('openRange: check() after the file was cut inside the last page of the range is SOURCE_CHANGED (what the seal worker calls)', async (t) => {
  await withTmp(async (dir) => {
    const f = join(dir, 'disk.vhd');
    writeFileSync(f, randomBytes(64 * 1024));
    const fd = openSync(f, 'r');
    try {
      const { openRange } = await import('../format/filerange.js');
      const r = openRange({ fd, offset: 512, length: 11192, file: f }) as ReturnType<typeof openRange> & { check?: () => void };
      truncateSync(f, 512 + 11192 - 200);
      t.is(r.data[r.data.length - 1], 0, 'the mapping reads zeros past the new end, no SIGBUS');
      t.is(typeof r.check, 'function');
      const err = t.throws(() => r.check!()) as FerryError;
      t.is(err?.code, 'SOURCE_CHANGED');
      r.release();
    } finally {
      closeSync(fd);
    }
  });
});

test('a VHD made shorter while it is stored through reads (no mapping: a putter without putRange) is SOURCE_CHANGED, not blocks stored short', async (t) => {
  const { createVhd, VhdDisk } = await import('../format/vhd/index.js');
  const { storeVhdFile } = await import('../vault/diskstore.js');
  const { stat } = await import('node:fs/promises');
  await withTmp(async (dir) => {
    const f = join(dir, 'disk.vhd');
    await createVhd(f, { size: 64 << 20 });
    const d = await VhdDisk.open(f, { writable: true });
    await d.write(0, randomBytes(60 << 20));
    await d.close();
    const half = Math.floor((await stat(f)).size / 2);
    let puts = 0;
    const stored = new Map<string, Buffer>();
    const putter = {
      async put(name: string, data: Buffer) {
        if (puts++ === 0) truncateSync(f, half); // (the blocks read ahead are whole; later ones are not)
        stored.set(name, Buffer.from(data));
      },
    };
    const err = (await t.throwsAsync(storeVhdFile(f, putter))) as FerryError;
    t.is(err.code, 'SOURCE_CHANGED', err.message);
    t.regex(err.message, /disk\.vhd changed while ferry was reading it/);
    t.false([...stored.keys()].some((k) => k.endsWith('/head')), 'no head: the disk is not stored');
  });
});
