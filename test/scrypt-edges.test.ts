// vault/scrypt.ts at its edges: an addon built from older sources (no
// scryptRomix) falls back to Node; parameters RFC 7914 and Node refuse are
// refused here too, so that no slot opens only with the addon.
import test from 'ava';
import { randomBytes, scrypt as nodeScrypt } from 'node:crypto';
import { nativeAddon, type Native } from '../format/native.js';
import { checkCost } from '../vault/keys.js';
import { scrypt } from '../vault/scrypt.js';
test.serial('an addon without scryptRomix (an older build): the key from Node, not a TypeError', async (t) => {
  const n = nativeAddon() as (Native & Record<string, unknown>) | null;
  t.truthy(n);
  const saved = n!.scryptRomix;
  delete (n as Record<string, unknown>).scryptRomix;
  try {
    const dk = await scrypt(Buffer.from('password'), Buffer.from('NaCl'), { N: 1024, r: 8, p: 16 }, 64);
    t.is(dk.toString('hex').slice(0, 16), 'fdbabe1c9d347200');
  } finally {
    n!.scryptRomix = saved;
  }
});

test.serial('N >= 2^(16 r) (RFC 7914 section 2): refused, as Node refuses it', async (t) => {
  const pw = randomBytes(8), salt = randomBytes(16), c = { N: 2 ** 16, r: 1, p: 2 };
  await t.throwsAsync(new Promise((resolve, reject) => nodeScrypt(pw, salt, 32, { ...c, maxmem: 2 ** 30 }, (e, k) => (e ? reject(e) : resolve(k)))));
  await t.throwsAsync(scrypt(pw, salt, c, 32));
});

test('checkCost refuses N >= 2^(16 r) before any derivation (KDF_BAD_PARAMS)', (t) => {
  t.throws(() => checkCost({ N: 2 ** 16, r: 1, p: 2 }), { message: /N=65536 must be less than 2\^\(16·r\) = 2\^16 \(RFC 7914\)/ });
  t.notThrows(() => checkCost({ N: 2 ** 15, r: 1, p: 2 }));
  t.notThrows(() => checkCost({ N: 2 ** 15, r: 8, p: 6 }));
});
