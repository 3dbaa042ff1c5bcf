// vault/scrypt.ts: scrypt with its lanes on all the cores (native/) gives
// exactly RFC 7914's keys and Node's, and refuses a malformed lane.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { randomBytes, scryptSync } from 'node:crypto';
import { nativeAddon } from '../format/native.js';
import { scrypt } from '../vault/scrypt.js';

const linux = process.platform === 'linux';

// RFC 7914, section 12
const VECTORS = [
  { P: '', S: '', N: 16, r: 1, p: 1, dk: '77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442fcd0069ded0948f8326a753a0fc81f17e8d3e0fb2e0d3628cf35e20c38d18906' },
  { P: 'password', S: 'NaCl', N: 1024, r: 8, p: 16, dk: 'fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b3731622eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640' },
  { P: 'pleaseletmein', S: 'SodiumChloride', N: 16384, r: 8, p: 1, dk: '7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2d5432955613f0fcf62d49705242a9af9e61e85dc0d651e40dfcf017b45575887' },
];

(linux ? test : test.skip)('the addon gives scryptRomix', (t) => {
  t.is(typeof nativeAddon()?.scryptRomix, 'function', 'native/ was not built: run npm install');
});

test("RFC 7914's test vectors", async (t) => {
  for (const v of VECTORS) {
    const dk = await scrypt(Buffer.from(v.P), Buffer.from(v.S), { N: v.N, r: v.r, p: v.p }, 64);
    t.is(dk.toString('hex'), v.dk, `N=${v.N} r=${v.r} p=${v.p}`);
  }
});

test("equals Node's crypto.scrypt for random passwords, salts and costs (lanes 2 to 9, odd r)", async (t) => {
  for (let i = 0; i < 24; i++) {
    const c = { N: 2 ** (1 + (i % 10)), r: 1 + ((i * 7) % 9), p: 2 + (i % 8) };
    const pw = randomBytes(i * 3);
    const salt = randomBytes(i % 2 ? 16 : 0);
    const dkLen = 1 + ((i * 13) % 70);
    const want = scryptSync(pw, salt, dkLen, { ...c, maxmem: 2 ** 28 });
    t.deepEqual(await scrypt(pw, salt, c, dkLen), want, JSON.stringify(c));
  }
});

test('several derivations at once (more lanes than cores) each give their own key', async (t) => {
  const c = { N: 256, r: 8, p: 6 };
  const inputs = Array.from({ length: 5 }, (_, i) => ({ pw: Buffer.from(`passphrase number ${i}`), salt: randomBytes(16) }));
  const got = await Promise.all(inputs.map(({ pw, salt }) => scrypt(pw, salt, c, 32)));
  inputs.forEach(({ pw, salt }, i) => t.deepEqual(got[i], scryptSync(pw, salt, 32, c)));
});

test('FERRY_NATIVE=0: the same key from Node alone', (t) => {
  const url = new URL('../vault/scrypt.js', import.meta.url).href;
  const nat = new URL('../format/native.js', import.meta.url).href;
  const script = `Promise.all([import(${JSON.stringify(url)}), import(${JSON.stringify(nat)})]).then(async ([m, n]) => console.log(n.nativeAddon(), (await m.scrypt(Buffer.from('password'), Buffer.from('NaCl'), { N: 1024, r: 8, p: 16 }, 64)).toString('hex')))`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, FERRY_NATIVE: '0' } }).toString();
  t.is(out.trim(), `null ${VECTORS[1].dk}`);
});

(linux ? test : test.skip)('scryptRomix refuses lanes of the wrong size, an N not a power of two, a missing callback', (t) => {
  const n = nativeAddon()!;
  const cb = () => {};
  t.throws(() => n.scryptRomix(Buffer.alloc(1000), 16, 8, cb), { instanceOf: TypeError });
  t.throws(() => n.scryptRomix(Buffer.alloc(0), 16, 8, cb), { instanceOf: TypeError });
  t.throws(() => n.scryptRomix(Buffer.alloc(1024), 15, 8, cb), { instanceOf: TypeError });
  t.throws(() => n.scryptRomix(Buffer.alloc(1024), 16, 0, cb), { instanceOf: TypeError });
  t.throws(() => (n.scryptRomix as unknown as (a: unknown, b: number, c: number) => void)(Buffer.alloc(1024), 16, 8), { instanceOf: TypeError });
  t.throws(() => n.scryptRomix(new Uint16Array(512) as unknown as Uint8Array, 16, 8, cb), { instanceOf: TypeError });
});
