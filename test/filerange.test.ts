// format/filerange.ts and the seal pool's file ranges: a seal worker maps a
// VHD's block (native/, mmap) instead of being handed a copy. The bytes it
// seals are the file's; a file made shorter is named, by the check before
// mapping and, when it shrinks under a live mapping, by the SIGBUS handler.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '../format/errors.js';
import { openRange, mappingAvailable } from '../format/filerange.js';
import { SealPool } from '../format/seal/pool.js';
import { Sealer } from '../format/seal/seal.js';
import { ferry, run, withTmp } from './helpers/exec.js';

const linux = process.platform === 'linux';
const KEY = randomBytes(32);

(linux ? test : test.skip)('the addon maps file ranges', (t) => {
  t.true(mappingAvailable(), 'native/ was not built: run npm install');
});

test('openRange gives the bytes of the range, at any offset, and release() empties the buffer', async (t) => {
  await withTmp(async (dir) => {
    const f = join(dir, 'data');
    const bytes = randomBytes(3 * 1024 * 1024 + 123);
    await writeFile(f, bytes);
    const fd = openSync(f, 'r');
    try {
      for (const [offset, length] of [[0, 1], [1, 4096], [4095, 2 * 1024 * 1024 + 512], [bytes.length - 7, 7], [512, bytes.length - 512]]) {
        const r = openRange({ fd, offset, length, file: f });
        t.true(r.data.equals(bytes.subarray(offset, offset + length)), `${offset}+${length}`);
        const view = r.data.subarray(0, 1);
        r.release();
        if (mappingAvailable()) {
          t.is(r.data.length, 0, 'unmapped: the buffer is empty');
          t.is(view.length, 0, 'and so is every view of it');
        }
      }
    } finally {
      closeSync(fd);
    }
  });
});

test('a range past the end of the file (it was made shorter) is SOURCE_CHANGED, naming the file', async (t) => {
  await withTmp(async (dir) => {
    const f = join(dir, 'disk.vhd');
    await writeFile(f, randomBytes(100_000));
    const fd = openSync(f, 'r');
    try {
      await truncate(f, 50_000);
      const err = t.throws(() => openRange({ fd, offset: 40_000, length: 20_000, file: f })) as FerryError;
      t.is(err.code, 'SOURCE_CHANGED');
      t.regex(err.message, /disk\.vhd changed while ferry was reading it: it holds 50000 bytes/);
    } finally {
      closeSync(fd);
    }
  });
});

test('FERRY_NATIVE=0: the range is read instead, the same bytes', async (t) => {
  await withTmp(async (dir) => {
    const f = join(dir, 'data');
    const bytes = randomBytes(1 << 20);
    await writeFile(f, bytes);
    const url = new URL('../format/filerange.js', import.meta.url).href;
    const script = `import(${JSON.stringify(url)}).then((m) => { const fd = require('node:fs').openSync(${JSON.stringify(f)}, 'r'); const r = m.openRange({ fd, offset: 1000, length: 5000, file: 'x' }); process.stdout.write(m.mappingAvailable() + ' ' + r.data.toString('hex')); })`;
    const r = await run(process.execPath, ['-e', script], { env: { FERRY_NATIVE: '0' } });
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout.toString(), `false ${bytes.subarray(1000, 6000).toString('hex')}`);
  });
});

for (const size of [0, 2]) {
  test(`a pool of ${size} workers seals a file range into an object that unseals to those bytes`, async (t) => {
    await withTmp(async (dir) => {
      const f = join(dir, 'data');
      const bytes = Buffer.concat([randomBytes(1 << 20), Buffer.alloc(1 << 20, 'text text ')]);
      await writeFile(f, bytes);
      const fd = openSync(f, 'r');
      const pool = new SealPool(KEY, { size });
      try {
        const ranges = [[0, bytes.length], [1 << 20, 1 << 20], [7, 1 << 20]];
        const sealed = await Promise.all(ranges.map(([offset, length], i) => pool.sealRange(`obj/${i}`, { fd, offset, length, file: f })));
        const open = new Sealer(KEY);
        ranges.forEach(([offset, length], i) => t.true(open.unseal(`obj/${i}`, sealed[i]).equals(bytes.subarray(offset, offset + length))));
        await truncate(f, 1000);
        const err = (await t.throwsAsync(pool.sealRange('obj/x', { fd, offset: 0, length: 5000, file: f }))) as FerryError;
        t.is(err.code, 'SOURCE_CHANGED');
      } finally {
        await pool.close();
        closeSync(fd);
      }
    });
  });
}

for (const json of [false, true]) {
  (linux ? test : test.skip)(`a file made shorter under a live mapping: one line naming it, exit 1, not a crash${json ? ' (and under --json, the error document on stdout)' : ''}`, async (t) => {
    await withTmp(async (dir) => {
      const f = join(dir, 'shrinks "q".vhd');
      await writeFile(f, randomBytes(4 << 20));
      const url = new URL('../format/filerange.js', import.meta.url).href;
      // maps the whole file, then (told by its parent) reads past where it now ends
      const script = `import(${JSON.stringify(url)}).then((m) => {
        if (${json}) m.mappingErrorsAsJson();
        const fs = require('node:fs'); const fd = fs.openSync(${JSON.stringify(f)}, 'r');
        const r = m.openRange({ fd, offset: 0, length: 4 << 20, file: ${JSON.stringify(f)} });
        fs.truncateSync(${JSON.stringify(f)}, 4096);
        let sum = 0; for (let i = 0; i < r.data.length; i += 4096) sum += r.data[i];
        console.log('read it all', sum);
      })`;
      const r = await run(process.execPath, ['-e', script]);
      const why = `${f} could not be read where ferry had it mapped (another program made it shorter, or the disk failed to read it); stopped, nothing of this run was committed: run again when nothing writes to it, and check the disk if it happens again`;
      t.is(r.code, 1);
      t.is(r.stderr, `ferry: ${why}\n`);
      if (json) t.deepEqual(JSON.parse(r.stdout.toString()), { error: { code: 'SOURCE_CHANGED', message: why } });
      else t.is(r.stdout.toString(), '');
    });
  });
}

test('vhd import through mapped ranges and through reads (FERRY_NATIVE=0) store the same disk, and both export back byte for byte', async (t) => {
  await withTmp(async (dir) => {
    const raw = join(dir, 'img.raw');
    const img = Buffer.alloc(24 << 20);
    randomBytes(3 << 20).copy(img, 1 << 20);
    Buffer.alloc(5 << 20, 'compressible ').copy(img, 9 << 20);
    randomBytes(777).copy(img, (24 << 20) - 777);
    await writeFile(raw, img);
    const vhd = join(dir, 'x.vhd');
    const env = { FERRY_PASSPHRASE: 'a passphrase for this test only' };
    t.is((await ferry(['vhd', 'create', vhd, '--from', raw, '--quiet'], { env })).code, 0);
    const id = JSON.parse((await ferry(['vhd', 'info', vhd, '--json'])).stdout.toString()).layers[0].uniqueId;
    for (const native of ['1', '0']) {
      const v = join(dir, `vault-${native}`);
      t.is((await ferry(['init', v, '--quiet'], { env })).code, 0);
      const s = await ferry(['vhd', 'import', '--vault', v, vhd, '--quiet'], { env: { ...env, FERRY_NATIVE: native } });
      t.is(s.code, 0, s.stderr);
      const back = join(dir, `back-${native}.vhd`);
      const e = await ferry(['vhd', 'export', '--vault', v, '--disk', id, '--to', back, '--quiet'], { env });
      t.is(e.code, 0, e.stderr);
      t.true(readFileSync(back).equals(readFileSync(vhd)), `FERRY_NATIVE=${native}`);
    }
  });
});

(linux ? test : test.skip)('mapRange refuses a range over 1 GiB with EFBIG (the caller reads instead), and a 0-byte range is read', async (t) => {
  await withTmp(async (dir) => {
    const f = join(dir, 'sparse');
    await writeFile(f, '');
    await truncate(f, 2 ** 31);
    const fd = openSync(f, 'r');
    try {
      const { nativeAddon } = await import('../format/native.js');
      t.is(nativeAddon()!.mapRange(fd, 0, 2 ** 30 + 1, f), 27 /* EFBIG */);
      const m = nativeAddon()!.mapRange(fd, 2 ** 30, 2 ** 30, f);
      t.true(m instanceof Uint8Array && m.length === 2 ** 30 && m[2 ** 30 - 1] === 0);
      nativeAddon()!.unmapRange(m as Buffer);
      const empty = openRange({ fd, offset: 5, length: 0, file: f });
      t.is(empty.data.length, 0);
      empty.release();
    } finally {
      closeSync(fd);
    }
  });
});
