// The pool's verify and sealHashed: what import and seed rely on to keep
// hashing and authentication off the main thread.
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { SealPool, Sealer } from '../format/seal/index.js';
import { FerryError } from '../format/errors.js';

const key = randomBytes(32);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

for (const size of [0, 2]) {
  test(`pool of ${size}: sealHashed gives the digest of the sealed bytes, and no digest of the plaintext`, async (t) => {
    const pool = new SealPool(key, { size });
    try {
      const data = Buffer.concat([randomBytes(300_000), Buffer.alloc(600_000, 'text ')]);
      const r = await pool.sealHashed('disks/x/blocks/1', data);
      t.false('plainSha256' in r);
      t.is(r.sealedSha256, sha(r.sealed));
      t.true(new Sealer(key).unseal('disks/x/blocks/1', r.sealed).equals(data));
      t.is(await pool.verify('disks/x/blocks/1', r.sealed), sha(r.sealed));
      // wrong name, flipped byte, truncation: each refused with the object's name
      const e1 = await t.throwsAsync(pool.verify('disks/x/blocks/2', r.sealed));
      t.true(e1 instanceof FerryError && e1.message.includes('disks/x/blocks/2'));
      const flipped = Buffer.from(r.sealed);
      flipped[flipped.length >> 1] ^= 1;
      await t.throwsAsync(pool.verify('disks/x/blocks/1', flipped), { instanceOf: FerryError });
      await t.throwsAsync(pool.verify('disks/x/blocks/1', r.sealed.subarray(0, r.sealed.length - 1)), { instanceOf: FerryError });
    } finally {
      await pool.close();
    }
  });
}

test('incompressible data is stored raw after a cheap probe, and still round-trips', async (t) => {
  const s = new Sealer(key);
  const random = randomBytes(2 * 1024 * 1024);
  const sealed = s.seal('r', random);
  t.is(sealed[6], 0, 'codec none');
  t.true(s.unseal('r', sealed).equals(random));
  const text = Buffer.alloc(2 * 1024 * 1024, 'compressible ');
  const packed = s.seal('t', text);
  t.is(packed[6], 1, 'codec zstd');
  t.true(packed.length < text.length / 10);
  // half random, half text: the probe sees both and compression still happens
  const mixed = Buffer.concat([randomBytes(1024 * 1024), Buffer.alloc(1024 * 1024, 'x')]);
  const m = s.seal('m', mixed);
  t.is(m[6], 1);
  t.true(s.unseal('m', m).equals(mixed));
});
