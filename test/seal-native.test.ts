// SealPool through the addon (native/ferry_native.c sealObject/openObject, on
// libuv's pool) against an independent reader and writer: @noble/ciphers for
// AES-GCM, the zstd command for the body. Same objects, same decisions (raw
// or zstd), same errors as the worker threads.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { gcm } from '@noble/ciphers/aes.js';
import { FerryError } from '../format/errors.js';
import { freeBuffer } from '../format/buffers.js';
import { HEADER_SIZE, Sealer, SealPool } from '../format/seal/index.js';
import { nativePool, sealedHeader } from './helpers/sealed.js';

/** Text-like data that compresses well. */
function textish(n: number, seed = 1): Buffer {
  const words = ['ferry', 'vault', 'block', 'disk', 'seed', 'point', '\n'];
  let x = seed;
  let s = '';
  while (s.length < n) {
    x = (x * 1103515245 + 12345) >>> 0;
    s += words[x % words.length] + ' ';
  }
  return Buffer.from(s.slice(0, n));
}

/** docs/seal-format.md read again with other code: noble's AES-GCM and the zstd command. */
function openIndependently(k: Uint8Array, name: string, sealed: Buffer): { codec: number; plain: Buffer } {
  const header = sealed.subarray(0, HEADER_SIZE);
  if (header.subarray(0, 5).toString('latin1') !== 'FERRY' || header[5] !== 1 || header[7] !== 0) throw new Error('bad header');
  const body = Buffer.from(gcm(k, header.subarray(16, 28), Buffer.concat([header, Buffer.from(name, 'utf8')])).decrypt(sealed.subarray(HEADER_SIZE)));
  const plain = header[6] === 0 ? body : execFileSync('zstd', ['-d', '-c', '-q'], { input: body, maxBuffer: 1 << 30 });
  if (plain.length !== Number(header.readBigUInt64BE(8))) throw new Error('length');
  return { codec: header[6], plain };
}

/** An object made by other code: header, then noble's AES-GCM of `body`. */
function forge(k: Buffer, name: string, codec: number, length: number, body: Buffer): Buffer {
  const h = sealedHeader(codec, length);
  return Buffer.concat([h, gcm(k, h.subarray(16), Buffer.concat([h, Buffer.from(name, 'utf8')])).encrypt(body)]);
}

const zstdCli = (b: Buffer) => execFileSync('zstd', ['-c', '-q', '-1'], { input: b, maxBuffer: 1 << 30 });

// [what, data, codec the writer's rules give]
const CASES: Array<[string, () => Buffer, number]> = [
  ['empty', () => Buffer.alloc(0), 0],
  ['one byte', () => Buffer.from('x'), 0],
  ['small text', () => textish(1000), 1],
  ['random below the sampling size', () => randomBytes(256 * 1024 - 1), 0],
  ['text at the sampling size', () => textish(256 * 1024), 1],
  ['a 2 MiB block of zeros', () => Buffer.alloc(2 * 2 ** 20), 1],
  ['a 2 MiB block of random bytes', () => randomBytes(2 * 2 ** 20 + 512), 0],
  // samples (at 0, and every (n - 16 KiB) / 3) all random, the rest compressible: raw, unlike a full compression
  ['random where the samples are, text elsewhere', () => {
    const n = 1024 * 1024;
    const b = Buffer.alloc(n, 'a');
    const step = Math.floor((n - 16384) / 3);
    for (let i = 0; i < 4; i++) randomBytes(16384).copy(b, i * step);
    return b;
  }, 0],
];

test('objects sealed through the addon open with independent code, and objects made by it open through the addon', async (t) => {
  const k = randomBytes(32);
  const pool = nativePool(t, k);
  if (!pool) return;
  try {
    for (const [what, make, codec] of CASES) {
      const data = make();
      const name = `disks/é/${what}`;
      const { sealed, sealedSha256 } = await pool.sealHashed(name, data);
      t.is(sealedSha256, createHash('sha256').update(sealed).digest('hex'), what);
      const got = openIndependently(k, name, sealed);
      t.is(got.codec, codec, `${what}: codec`);
      t.true(got.plain.equals(data), `${what}: plaintext`);
      t.is(sealed.length, HEADER_SIZE + (codec === 0 ? data.length : zstdLen(sealed)) + 16, what);
      t.true((await pool.unseal(name, sealed)).equals(data), `${what}: unsealed through the addon`);
      t.is(await pool.verify(name, sealed), sealedSha256, `${what}: verify`);
      // made elsewhere: raw, and zstd from the command
      t.true((await pool.unseal(name, forge(k, name, 0, data.length, data))).equals(data), `${what}: forged raw`);
      if (data.length > 0) t.true((await pool.unseal(name, forge(k, name, 1, data.length, zstdCli(data)))).equals(data), `${what}: zstd command`);
    }
    // in-thread code (zstd-napi) and the addon open each other's objects
    const local = new Sealer(k);
    const d = textish(3 * 2 ** 20, 7);
    t.true((await pool.unseal('a', local.seal('a', d))).equals(d));
    t.true(local.unseal('b', await pool.seal('b', d)).equals(d));
    // the level is the one asked for
    const fast = (await pool.seal('c', d, { level: 1 })).length;
    const tight = (await pool.seal('c', d, { level: 19 })).length;
    t.true(tight < fast, `level 19 (${tight}) is smaller than level 1 (${fast})`);
    t.is(openIndependently(k, 'n', await pool.seal('n', d, { codec: 'none' })).codec, 0);
  } finally {
    await pool.close();
  }
});

function zstdLen(sealed: Buffer): number {
  return sealed.length - HEADER_SIZE - 16;
}

test('through the addon: tampering, another name or key, a bomb and authentic garbage give the same errors as in-thread', async (t) => {
  const k = randomBytes(32);
  const pool = nativePool(t, k, { maxLength: 4 * 2 ** 20 });
  if (!pool) return;
  const local = new Sealer(k, { maxLength: 4 * 2 ** 20 });
  const code = async (p: Promise<unknown>) => ((await t.throwsAsync(p)) as FerryError).code;
  try {
    const data = textish(300_000);
    const sealed = await pool.seal('blocks/1', data);
    // every region: header, body, tag
    for (const at of [6, 8, 20, HEADER_SIZE, Math.floor(sealed.length / 2), sealed.length - 1]) {
      const bad = Buffer.from(sealed);
      bad[at] ^= 0x40;
      let want: string;
      try {
        local.unseal('blocks/1', bad);
        want = 'none';
      } catch (err) {
        want = (err as FerryError).code;
      }
      t.is(await code(pool.unseal('blocks/1', bad)), want, `byte ${at}`);
      t.is(await code(pool.verify('blocks/1', bad)), want, `verify, byte ${at}`);
    }
    const other = await t.throwsAsync(pool.unseal('blocks/2', sealed));
    t.is((other as FerryError).code, 'SEAL_WRONG_NAME_OR_KEY');
    t.regex(other!.message, /^object blocks\/2: authentication failed/);
    const otherKey = nativePool(t, randomBytes(32))!;
    t.is(await code(otherKey.unseal('blocks/1', sealed)), 'SEAL_WRONG_NAME_OR_KEY');
    await otherKey.close();
    t.is(await code(pool.unseal('blocks/1', sealed.subarray(0, 40))), 'SEAL_TRUNCATED');
    // an 8 MiB frame announced as 10 bytes: refused, nothing written past 10
    const bomb = zstdCli(Buffer.alloc(8 * 2 ** 20));
    const e = await t.throwsAsync(pool.unseal('bomb', forge(k, 'bomb', 1, 10, bomb)));
    t.is((e as FerryError).code, 'SEAL_CORRUPT');
    t.regex(e!.message, /^object bomb: authentic but does not decompress \(zstd\): /);
    t.is(await code(pool.unseal('bomb', forge(k, 'bomb', 1, 8 * 2 ** 20, bomb))), 'SEAL_TOO_LARGE');
    t.is(await code(pool.unseal('junk', forge(k, 'junk', 1, 100, randomBytes(50)))), 'SEAL_CORRUPT');
    // a frame one byte short of its header's length
    t.is(await code(pool.unseal('short', forge(k, 'short', 1, 1001, zstdCli(textish(1000))))), 'SEAL_CORRUPT');
    t.is(await code(pool.unseal('raw', forge(k, 'raw', 0, 5, Buffer.from('four')))), 'SEAL_CORRUPT');
    // an empty plaintext whose frame holds something, and one whose frame is empty
    t.is(await code(pool.unseal('z0', forge(k, 'z0', 1, 0, zstdCli(textish(100))))), 'SEAL_CORRUPT');
    t.is((await pool.unseal('z0', forge(k, 'z0', 1, 0, zstdCli(Buffer.alloc(0))))).length, 0);
    // authentic garbage still verifies: an import copies it as it is, a restore then says SEAL_CORRUPT
    t.is(await pool.verify('junk', forge(k, 'junk', 1, 100, Buffer.alloc(50, 1))).then((h) => h.length), 64);
    t.is(pool.pending, 0);
  } finally {
    await pool.close();
  }
});

test('through the addon: results are right under load, a freed result\'s memory is used again, a deflate vault keeps its workers', async (t) => {
  const k = randomBytes(32);
  const pool = nativePool(t, k, { maxQueue: 3 });
  if (!pool) return;
  try {
    const inputs = Array.from({ length: 60 }, (_, i) => (i % 3 === 0 ? randomBytes(70_000 + i) : textish(100_000 + i * 997, i)));
    const results: Array<Promise<Buffer>> = [];
    for (const [i, d] of inputs.entries()) {
      await pool.ready();
      results.push(pool.seal(`b/${i}`, d));
    }
    const sealed = await Promise.all(results);
    const opened = await Promise.all(sealed.map((s, i) => pool.unseal(`b/${i}`, s)));
    for (const [i, p] of opened.entries()) t.true(p.equals(inputs[i]) && openIndependently(k, `b/${i}`, sealed[i]).plain.equals(inputs[i]), `b/${i}`);

    // a result freed by its last user comes back as the next result's memory, with the right bytes
    const block = textish(2 * 2 ** 20, 3);
    const first = await pool.seal('r/1', block);
    const memory = first.buffer;
    freeBuffer(first);
    const second = await pool.seal('r/2', block);
    t.is(second.buffer, memory, 'the same memory again');
    t.true(openIndependently(k, 'r/2', second).plain.equals(block));
    // a block handed over is the pool's: the caller's buffer is empty
    const given = textish(2 * 2 ** 20, 4);
    const want = Buffer.from(given);
    const third = await pool.seal('r/3', given, undefined, true);
    t.is(given.length, 0);
    t.true(openIndependently(k, 'r/3', third).plain.equals(want));
  } finally {
    await pool.close();
  }
  const deflate = new SealPool(k, { size: 2, codec: 'deflate' });
  t.false(deflate.native, 'deflate is not in the addon');
  const d = textish(50_000);
  const s = await deflate.seal('d', d);
  t.is(s[6], 2);
  await deflate.close();
  // and a deflate object opens through the addon's pool all the same
  const again = nativePool(t, k);
  if (!again) return;
  t.true((await again.unseal('d', s)).equals(d));
  await again.close();
});
