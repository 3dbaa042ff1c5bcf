// Sealed objects: round trips, tamper detection at every byte, bounded
// decompression, the pool, and cross-checks with independent implementations
// (@noble/ciphers for AES-GCM, fflate and the zstd CLI for the codecs).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import { deflateRawSync } from 'node:zlib';
import fc from 'fast-check';
import { gcm } from '@noble/ciphers/aes.js';
import { deflateSync as fflateDeflate, inflateSync as fflateInflate } from 'fflate';
import { FerryError } from '../format/errors.js';
import {
  decodeSealed,
  MIN_SEALED_SIZE,
  Sealer,
  SealPool,
  TAG_SIZE,
  seal,
  unseal,
} from '../format/seal/index.js';
import { sealedHeader } from './helpers/sealed.js';

const key = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const fixedNonce = (b: Buffer) => {
  for (let i = 0; i < b.length; i++) b[i] = 0x10 + i;
};

/** Text-like data that compresses well, so zstd and deflate are really used. */
function textish(n: number, seed = 1): Buffer {
  const words = ['ferry', 'vault', 'block', 'disk', 'seed', 'point', 'sector', 'zstd', 'deflate', 'merge', '\n'];
  const out: string[] = [];
  let x = seed;
  let len = 0;
  while (len < n) {
    x = (x * 1103515245 + 12345) >>> 0;
    const w = words[x % words.length] + ' ';
    out.push(w);
    len += w.length;
  }
  return Buffer.from(out.join('').slice(0, n));
}

/** Buffer equality without ava's deep diff, which crawls on megabytes. */
function same(t: import('ava').ExecutionContext, a: Uint8Array, b: Uint8Array, what?: string): void {
  t.true(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b), what ?? 'buffers differ');
}

function expectSealError(t: import('ava').ExecutionContext, fn: () => unknown, name: string, codes?: string[]): FerryError {
  const err = t.throws(fn) as FerryError;
  t.true(err instanceof FerryError, `not a FerryError: ${err}`);
  t.regex(err.code, /^SEAL_/);
  if (codes) t.true(codes.includes(err.code), `code ${err.code} not in ${codes.join(',')}`);
  t.true(err.message.includes(name), `message does not name ${name}: ${err.message}`);
  t.is(err.data.object, name);
  return err;
}

test('known-answer vector (codec none) matches an independent AES-GCM', (t) => {
  // Computed with @noble/ciphers gcm: header || ciphertext || tag, AAD = header || "kat/ferry".
  const expected =
    '46455252590100000000000000000013101112131415161718191a1b1b9bea6430e949d6ab196d792f160b39b2333a5c2d4c6a37d41fddaa14372c0f41810c';
  const s = new Sealer(key, { random: fixedNonce });
  const out = s.seal('kat/ferry', Buffer.from('ferry sealed object'));
  t.is(out.toString('hex'), expected);
  t.is(s.unseal('kat/ferry', out).toString(), 'ferry sealed object');
});

test('round trip with every codec and awkward sizes', (t) => {
  const s = new Sealer(randomBytes(32));
  for (const codec of ['zstd', 'deflate', 'none'] as const) {
    for (const n of [0, 1, 2, 100, 4095, 4096, 65537, 2 * 2 ** 20 + 3]) {
      const data = n % 2 ? randomBytes(n) : textish(n, n);
      const sealed = s.seal(`disks/x/blocks/${n}`, data, { codec });
      same(t, s.unseal(`disks/x/blocks/${n}`, sealed), data, `${codec} ${n}`);
      t.true(sealed.length <= MIN_SEALED_SIZE + n, 'never larger than raw plus the envelope');
    }
  }
});

test('a codec name every object inherits (toString, constructor) is refused, not used', (t) => {
  for (const codec of ['toString', 'constructor', '__proto__']) {
    t.throws(() => new Sealer(randomBytes(32), { codec: codec as 'zstd' }), { message: /codec/ });
    t.throws(() => new Sealer(randomBytes(32)).seal('a', Buffer.from('x'), { codec: codec as 'zstd' }), { message: /codec/ });
  }
});

test('codec chosen per object: compressible data is compressed, random data stored raw', (t) => {
  const s = new Sealer(randomBytes(32));
  const text = textish(100_000);
  const z = s.seal('a', text);
  t.is(z[6], 1, 'zstd');
  t.true(z.length < text.length / 2);
  const d = s.seal('a', text, { codec: 'deflate' });
  t.is(d[6], 2, 'deflate');
  const noise = randomBytes(100_000);
  const r = s.seal('a', noise);
  t.is(r[6], 0, 'incompressible -> none');
  t.is(r.length, noise.length + MIN_SEALED_SIZE);
  t.is(s.seal('a', Buffer.alloc(0))[6], 0, 'empty -> none');
});

test('a fresh nonce for every seal; the random source is injectable', (t) => {
  const s = new Sealer(randomBytes(32));
  const data = textish(1000);
  const a = s.seal('n', data);
  const b = s.seal('n', data);
  t.notDeepEqual(a.subarray(16, 28), b.subarray(16, 28));
  t.notDeepEqual(a, b);

  const asked: number[] = [];
  let counter = 0;
  const counting = new Sealer(key, {
    random: (buf) => {
      asked.push(buf.length);
      buf.fill(0);
      buf.writeUInt32BE(++counter, 8);
    },
  });
  const x = counting.seal('n', data);
  const y = counting.seal('n', data);
  t.deepEqual(asked, [12, 12], 'one 12-byte draw per seal');
  t.is(x.readUInt32BE(24), 1);
  t.is(y.readUInt32BE(24), 2);
  // Sealer.seal takes no nonce argument: the only way to get one in is the random source.
  t.is(Sealer.prototype.seal.length, 2);
});

test('flipping any byte of a sealed object is detected and names the object', (t) => {
  const s = new Sealer(randomBytes(32));
  for (const [label, data, codec] of [
    ['zstd', textish(300), 'zstd'],
    ['deflate', textish(300), 'deflate'],
    ['none', randomBytes(64), 'none'],
  ] as const) {
    const name = `disks/abc/blocks/${label}`;
    const sealed = s.seal(name, data, { codec });
    t.is(sealed[6], { none: 0, zstd: 1, deflate: 2 }[codec]);
    let checked = 0;
    for (let i = 0; i < sealed.length; i++) {
      for (const mask of [0x01, 0x80, 0xff]) {
        const bad = Buffer.from(sealed);
        bad[i] ^= mask;
        expectSealError(t, () => s.unseal(name, bad), name);
        checked++;
      }
    }
    t.is(checked, sealed.length * 3);
  }
});

test('truncating or extending a sealed object is detected', (t) => {
  const s = new Sealer(randomBytes(32));
  const name = 'items/m/i/points/7';
  const sealed = s.seal(name, textish(500));
  for (let len = 0; len < sealed.length; len++) {
    const err = expectSealError(t, () => s.unseal(name, sealed.subarray(0, len)), name);
    if (len < MIN_SEALED_SIZE) t.is(err.code, 'SEAL_TRUNCATED');
  }
  expectSealError(t, () => s.unseal(name, Buffer.concat([sealed, Buffer.from([0])])), name);
});

test('swapping two objects, or a wrong key, fails authentication naming the object asked for', (t) => {
  const s = new Sealer(randomBytes(32));
  const a = s.seal('disks/d/blocks/1', textish(1000, 1));
  const b = s.seal('disks/d/blocks/2', textish(1000, 2));
  expectSealError(t, () => s.unseal('disks/d/blocks/1', b), 'disks/d/blocks/1', ['SEAL_WRONG_NAME_OR_KEY']);
  expectSealError(t, () => s.unseal('disks/d/blocks/2', a), 'disks/d/blocks/2', ['SEAL_WRONG_NAME_OR_KEY']);
  const other = new Sealer(randomBytes(32));
  expectSealError(t, () => other.unseal('disks/d/blocks/1', a), 'disks/d/blocks/1', ['SEAL_WRONG_NAME_OR_KEY']);
  // Names are compared as UTF-8 bytes: no normalisation folds two names together.
  const nfc = 'caf\u00e9';
  const nfd = 'cafe\u0301';
  expectSealError(t, () => s.unseal(nfd, s.seal(nfc, Buffer.from('x'))), nfd, ['SEAL_WRONG_NAME_OR_KEY']);
});

test('foreign data and bad headers get specific codes', (t) => {
  const s = new Sealer(randomBytes(32));
  const good = s.seal('o', textish(100));
  expectSealError(t, () => s.unseal('o', Buffer.from('PK\x03\x04 this is a zip file, not a sealed object at all')), 'o', ['SEAL_BAD_MAGIC']);
  const v2 = Buffer.from(good);
  v2[5] = 2;
  const e = expectSealError(t, () => s.unseal('o', v2), 'o', ['SEAL_BAD_VERSION']);
  t.regex(e.message, /version 2/);
  const codec = Buffer.from(good);
  codec[6] = 9;
  expectSealError(t, () => s.unseal('o', codec), 'o', ['SEAL_CORRUPT']);
  const flags = Buffer.from(good);
  flags[7] = 1;
  expectSealError(t, () => s.unseal('o', flags), 'o', ['SEAL_CORRUPT']);
  const huge = Buffer.from(good);
  huge.writeBigUInt64BE(2n ** 62n, 8);
  const h = expectSealError(t, () => s.unseal('o', huge), 'o', ['SEAL_TOO_LARGE']);
  t.is(h.data.field, 'length');
  // The tolerant decoder reports without throwing, and without the key.
  const d = decodeSealed(huge);
  t.is(d.codecName, 'zstd');
  t.deepEqual(d.problems.map((p) => p.code), ['SEAL_TOO_LARGE']);
  t.deepEqual(decodeSealed(good).problems, []);
});

/** Seals a body with a chosen header through node:crypto directly: an "authentic" object from a broken writer. */
function forge(k: Buffer, name: string, codec: number, length: number, body: Buffer): Buffer {
  const h = sealedHeader(codec, length);
  const c = createCipheriv('aes-256-gcm', k, h.subarray(16), { authTagLength: TAG_SIZE });
  c.setAAD(Buffer.concat([h, Buffer.from(name)]));
  return Buffer.concat([h, c.update(body), c.final(), c.getAuthTag()]);
}

test('decompression is bounded by the header length, and authentic garbage is SEAL_CORRUPT', (t) => {
  const k = randomBytes(32);
  const s = new Sealer(k);
  const zeros = Buffer.alloc(8 * 2 ** 20);
  const zbomb = execFileSync('zstd', ['-c', '-q'], { input: zeros });
  // A 8 MiB frame announced as 10 bytes: refused, never allocated beyond 10.
  expectSealError(t, () => s.unseal('bomb', forge(k, 'bomb', 1, 10, zbomb)), 'bomb', ['SEAL_CORRUPT']);
  expectSealError(t, () => s.unseal('bomb', forge(k, 'bomb', 2, 10, deflateRawSync(zeros))), 'bomb', ['SEAL_CORRUPT']);
  // Announced larger than the limit: refused before decrypting.
  const small = new Sealer(k, { maxLength: 1000 });
  expectSealError(t, () => small.unseal('bomb', forge(k, 'bomb', 1, zeros.length, zbomb)), 'bomb', ['SEAL_TOO_LARGE']);
  // Too short.
  expectSealError(t, () => s.unseal('short', forge(k, 'short', 1, zeros.length + 1, zbomb)), 'short', ['SEAL_CORRUPT']);
  expectSealError(t, () => s.unseal('junk', forge(k, 'junk', 1, 100, randomBytes(50))), 'junk', ['SEAL_CORRUPT']);
  expectSealError(t, () => s.unseal('junk', forge(k, 'junk', 2, 100, randomBytes(50))), 'junk', ['SEAL_CORRUPT']);
  // A raw body whose length field disagrees.
  expectSealError(t, () => s.unseal('raw', forge(k, 'raw', 0, 5, Buffer.from('four'))), 'raw', ['SEAL_CORRUPT']);
  // And a well-formed forgery opens: the format is just what the spec says.
  t.is(s.unseal('ok', forge(k, 'ok', 1, 8 * 2 ** 20, zbomb)).length, zeros.length);
});

/** The spec, implemented again with independent libraries: @noble/ciphers + fflate/zstd CLI. */
function openIndependently(k: Uint8Array, name: string, sealed: Buffer): Buffer {
  const header = sealed.subarray(0, 28);
  t_assert(header.subarray(0, 5).toString('latin1') === 'FERRY' && header[5] === 1 && header[7] === 0, 'header');
  const length = Number(header.readBigUInt64BE(8));
  const nonce = header.subarray(16, 28);
  const aad = Buffer.concat([header, Buffer.from(name, 'utf8')]);
  const body = Buffer.from(gcm(k, nonce, aad).decrypt(sealed.subarray(28)));
  let plain: Buffer;
  if (header[6] === 0) plain = body;
  else if (header[6] === 2) plain = Buffer.from(fflateInflate(body));
  else if (header[6] === 1) plain = execFileSync('zstd', ['-d', '-c', '-q'], { input: body, maxBuffer: 1 << 30 });
  else throw new Error(`codec ${header[6]}`);
  t_assert(plain.length === length, 'length');
  return plain;
}

function t_assert(ok: boolean, what: string): void {
  if (!ok) throw new Error(`independent reader: bad ${what}`);
}

test('cross-check: ferry objects open with @noble/ciphers + fflate / zstd CLI', (t) => {
  const k = randomBytes(32);
  const s = new Sealer(k);
  for (const codec of ['zstd', 'deflate', 'none'] as const) {
    const data = codec === 'none' ? randomBytes(3000) : textish(300_000, 7);
    const name = `disks/0123/blocks/${codec}`;
    const sealed = s.seal(name, data, { codec });
    t.is(sealed[6], { none: 0, zstd: 1, deflate: 2 }[codec]);
    same(t, openIndependently(k, name, sealed), data, codec);
    // The independent AEAD also refuses another name.
    t.throws(() => openIndependently(k, name + 'x', sealed));
  }
});

test('cross-check: objects written by independent code open with ferry', (t) => {
  const k = randomBytes(32);
  const s = new Sealer(k);
  const data = textish(200_000, 9);
  const bodies: Array<[number, Buffer]> = [
    [2, Buffer.from(fflateDeflate(data, { level: 9 }))],
    [1, execFileSync('zstd', ['-19', '-c', '-q'], { input: data })],
    [0, data],
    // Two frames back to back: the spec allows several.
    [1, Buffer.concat([execFileSync('zstd', ['-1', '-c', '-q'], { input: data.subarray(0, 1000) }), execFileSync('zstd', ['-1', '-c', '-q'], { input: data.subarray(1000) })])],
  ];
  for (const [codec, body] of bodies) {
    const h = Buffer.alloc(28);
    h.write('FERRY', 0, 'latin1');
    h[5] = 1;
    h[6] = codec;
    h.writeBigUInt64BE(BigInt(data.length), 8);
    randomBytes(12).copy(h, 16);
    const name = `items/m/i/points/${codec}/${body.length}`;
    const ct = gcm(k, h.subarray(16), Buffer.concat([h, Buffer.from(name)])).encrypt(body);
    same(t, s.unseal(name, Buffer.concat([h, ct])), data, `codec ${codec}`);
  }
});

test('property: any data, name and codec round-trip; any other name fails', (t) => {
  const s = new Sealer(randomBytes(32));
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 5000 }),
      fc.string({ minLength: 1, maxLength: 40, unit: 'grapheme' }),
      fc.constantFrom('zstd', 'deflate', 'none'),
      (bytes, name, codec) => {
        const data = Buffer.from(bytes);
        const sealed = s.seal(name, data, { codec: codec as 'zstd' });
        if (!s.unseal(name, sealed).equals(data)) return false;
        try {
          s.unseal(name + '/', sealed);
          return false;
        } catch (err) {
          return (err as FerryError).code === 'SEAL_WRONG_NAME_OR_KEY';
        }
      },
    ),
    { numRuns: 300 },
  );
  t.pass();
});

test('arguments are checked with messages naming them', (t) => {
  t.throws(() => new Sealer(Buffer.alloc(16)), { message: /key must be 32 bytes/ });
  const s = new Sealer(randomBytes(32));
  t.throws(() => s.seal('', Buffer.alloc(1)), { message: /name must be/ });
  t.throws(() => s.seal('a\uD800', Buffer.alloc(1)), { message: /name must be/ });
  t.throws(() => s.seal('a', 'text' as unknown as Buffer), { message: /data must be a Buffer/ });
  t.throws(() => s.seal('a', Buffer.alloc(1), { codec: 'lz4' as 'zstd' }), { message: /codec must be one of/ });
  t.throws(() => s.seal('a', Buffer.alloc(1), { codec: 'deflate', level: 12 }), { message: /level must be/ });
  t.throws(() => new SealPool(randomBytes(32), { size: 2, random: () => {} }), { message: /random/ });
  // One-shot helpers.
  t.is(unseal(key, 'x', seal(key, 'x', Buffer.from('hi'))).toString(), 'hi');
});

test('pool: same results as in-thread, errors come back as FerryErrors', async (t) => {
  const k = randomBytes(32);
  const pool = new SealPool(k, { size: 2, maxQueue: 3 });
  const local = new Sealer(k);
  try {
    const inputs = Array.from({ length: 40 }, (_, i) => (i % 3 === 0 ? randomBytes(70_000 + i) : textish(100_000 + i, i)));
    const sealed = await Promise.all(inputs.map((d, i) => pool.seal(`b/${i}`, d)));
    for (const [i, x] of sealed.entries()) same(t, local.unseal(`b/${i}`, x), inputs[i]);
    const opened = await Promise.all(sealed.map((x, i) => pool.unseal(`b/${i}`, x)));
    for (const [i, x] of opened.entries()) same(t, x, inputs[i]);

    // A caller's view into a larger buffer: only the view travels, and the caller's bytes are untouched.
    const big = textish(3 * 2 ** 20);
    const view = big.subarray(2 ** 20, 2 ** 20 + 1000);
    const copy = Buffer.from(view);
    same(t, local.unseal('v', await pool.seal('v', view)), copy);
    same(t, view, copy);
    t.is(big.length, 3 * 2 ** 20, 'caller buffer not detached');

    const err = await t.throwsAsync(pool.unseal('b/1', sealed[0]));
    t.true(err instanceof FerryError);
    t.is((err as FerryError).code, 'SEAL_WRONG_NAME_OR_KEY');
    t.regex(err!.message, /b\/1/);
    const trunc = await t.throwsAsync(pool.unseal('b/0', sealed[0].subarray(0, 10)));
    t.is((trunc as FerryError).code, 'SEAL_TRUNCATED');
    t.is(pool.pending, 0);
  } finally {
    await pool.close();
  }
  await t.throwsAsync(pool.seal('x', Buffer.alloc(1)), { message: /closed/ });
});

test('pool: ready() holds a producer back while the queue is full', async (t) => {
  const pool = new SealPool(randomBytes(32), { size: 1, maxQueue: 2 });
  try {
    let maxPending = 0;
    const results: Array<Promise<Buffer>> = [];
    for (let i = 0; i < 30; i++) {
      await pool.ready();
      results.push(pool.seal(`q/${i}`, textish(200_000, i)));
      maxPending = Math.max(maxPending, pool.pending);
    }
    await Promise.all(results);
    t.true(maxPending <= 1 + 2 + 1, `pending reached ${maxPending}`);
  } finally {
    await pool.close();
  }
});

test('pool of size 0 seals in the calling thread, with the injected random source', async (t) => {
  const pool = new SealPool(key, { size: 0, random: fixedNonce });
  const x = await pool.seal('kat/ferry', Buffer.from('ferry sealed object'));
  t.is(x.subarray(16, 28).toString('hex'), '101112131415161718191a1b');
  t.is((await pool.unseal('kat/ferry', x)).toString(), 'ferry sealed object');
  await pool.close();
});

test('the native AES-GCM (native/) and node:crypto seal and open each other\'s objects', async (t) => {
  const { nativeAddon } = await import('../format/native.js');
  if (process.platform === 'linux') t.is(typeof nativeAddon()?.gcm, 'function', 'native/ has no gcm: Node\'s OpenSSL symbols were not found');
  const key = Buffer.alloc(32, 7);
  const data = Buffer.concat([Buffer.alloc(300_000, 'abc'), Buffer.from(Array.from({ length: 70_001 }, (_, i) => (i * 31) & 255))]);
  const url = new URL('../format/seal/seal.js', import.meta.url).href;
  // sealed by a process without the addon, opened here with it, and the other way round
  const other = (script: string, input: Buffer) =>
    execFileSync(process.execPath, ['--input-type=module', '-e', `import(${JSON.stringify(url)}).then((m) => { const chunks = []; process.stdin.on('data', (d) => chunks.push(d)).on('end', () => { const i = Buffer.concat(chunks); process.stdout.write(${script}); }); })`], {
      env: { ...process.env, FERRY_NATIVE: '0' },
      input,
      maxBuffer: 1 << 24,
    });
  const sealedElsewhere = other(`m.seal(Buffer.alloc(32, 7), 'blocks/1', i)`, data);
  t.deepEqual(unseal(key, 'blocks/1', sealedElsewhere), data);
  const sealedHere = seal(key, 'blocks/2', data);
  t.deepEqual(other(`m.unseal(Buffer.alloc(32, 7), 'blocks/2', i)`, sealedHere), data);
  for (const codec of ['none', 'zstd', 'deflate'] as const) t.deepEqual(unseal(key, 'x', seal(key, 'x', data, { codec })), data, codec);
  const bad = Buffer.from(sealedHere);
  bad[bad.length - 20] ^= 1;
  t.throws(() => unseal(key, 'blocks/2', bad), { message: /blocks\/2: authentication failed/ });
  t.throws(() => unseal(key, 'blocks/3', sealedHere), { message: /blocks\/3: authentication failed/ });
});
