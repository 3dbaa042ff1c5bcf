// Key slots and vault.json: unlock, wrong passphrases, several slots, no key
// material at rest, tampering, and the parameters a hostile file may ask for.
import test from 'ava';
import { scryptSync } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EXIT, FerryError } from '../format/errors.js';
import {
  createSlot,
  DEFAULT_SCRYPT,
  listSlots,
  newVaultConfig,
  parseVaultConfig,
  serializeConfig,
  unlock,
  VaultConfig,
  withoutSlot,
  withSlot,
} from '../vault/keys.js';
import { initVault, openVault } from '../vault/vault.js';

const CHEAP = { N: 1024, r: 8, p: 1 };
const P1 = 'first passphrase, long enough';
const P2 = 'second passphrase, also long';

const made: string[] = [];
test.after.always(async () => {
  await Promise.all(made.map((d) => fs.rm(d, { recursive: true, force: true })));
});

async function tempDir(label: string): Promise<string> {
  const d = await fs.mkdtemp(join(tmpdir(), `ferry-keys-${label}-`));
  made.push(d);
  return d;
}

async function expectWrong(t: import('ava').ExecutionContext, p: Promise<unknown>): Promise<void> {
  const err = (await t.throwsAsync(p)) as FerryError;
  t.is(err.code, 'WRONG_PASSPHRASE');
  t.is(err.exitCode, EXIT.wrongPassphrase);
  t.false(err.message.includes('\n'), 'one line');
}

test('a new config unlocks with its passphrase and only with it', async (t) => {
  const { config, master } = await newVaultConfig(P1, { cost: CHEAP });
  t.is(master.length, 32);
  t.regex(config.id, /^[0-9a-f]{32}$/);
  t.is(config.keys.length, 1);
  const u = await unlock(config, P1);
  t.true(u.master.equals(master));
  t.is(u.slotId, config.keys[0].id);
  await expectWrong(t, unlock(config, P2));
  await expectWrong(t, unlock(config, P1 + ' '));
  await expectWrong(t, unlock(config, ''));
  await expectWrong(t, unlock(config, 'short'));
});

test('passphrases shorter than 16 characters are refused when set (usage error)', async (t) => {
  for (const p of ['', 'fifteen chars!!', 'ééééééééééééééé']) {
    const err = (await t.throwsAsync(newVaultConfig(p, { cost: CHEAP }))) as FerryError;
    t.is(err.code, 'USAGE');
    t.is(err.exitCode, EXIT.usage);
    t.regex(err.message, /at least 16/);
  }
  // Characters, not bytes: 16 two-byte characters are enough.
  await t.notThrowsAsync(newVaultConfig('é'.repeat(16), { cost: CHEAP }));
});

test('passphrases are NFC-normalised: the same text typed as decomposed characters unlocks', async (t) => {
  const nfc = 'caf\u00e9 au lait, sans sucre';
  const nfd = nfc.normalize('NFD');
  t.not(nfc, nfd);
  const { config } = await newVaultConfig(nfc, { cost: CHEAP });
  await t.notThrowsAsync(unlock(config, nfd));
});

test('the KDF is scrypt as stored in the slot', async (t) => {
  // Re-derive by hand from the slot's parameters and unwrap with node:crypto: the slot format is what the docs say.
  const { config, master } = await newVaultConfig(P1, { cost: CHEAP });
  const s = config.keys[0];
  const kek = scryptSync(Buffer.from(P1), Buffer.from(s.kdf.salt, 'base64'), 32, { N: s.kdf.N, r: s.kdf.r, p: s.kdf.p });
  const { createDecipheriv } = await import('node:crypto');
  const blob = Buffer.from(s.wrapped, 'base64');
  const d = createDecipheriv('aes-256-gcm', kek, Buffer.from(s.nonce, 'base64'));
  d.setAAD(Buffer.from(['ferry-key-slot-v1', config.id, s.id, s.kdf.N, s.kdf.r, s.kdf.p, s.kdf.salt].join('\0')));
  d.setAuthTag(blob.subarray(32));
  const out = Buffer.concat([d.update(blob.subarray(0, 32)), d.final()]);
  t.true(out.equals(master));
});

test('several slots open the same master key; each knows which slot opened it', async (t) => {
  const { config, master } = await newVaultConfig(P1, { cost: CHEAP });
  const slot2 = await createSlot(master, P2, config.id, { cost: { N: 2048, r: 4, p: 2 } });
  const c2 = withSlot(config, slot2);
  const u1 = await unlock(c2, P1);
  const u2 = await unlock(c2, P2);
  t.true(u1.master.equals(master) && u2.master.equals(master));
  t.is(u1.slotId, config.keys[0].id);
  t.is(u2.slotId, slot2.id);
  t.deepEqual(listSlots(c2).map((s) => s.kdf), [
    { name: 'scrypt', ...CHEAP },
    { name: 'scrypt', N: 2048, r: 4, p: 2 },
  ]);
  for (const s of listSlots(c2)) t.deepEqual(Object.keys(s).sort(), ['created', 'id', 'kdf']);
});

test('removing slots: never the last, never the one in use, unknown ids named', async (t) => {
  const { config, master } = await newVaultConfig(P1, { cost: CHEAP });
  const id1 = config.keys[0].id;
  t.is((t.throws(() => withoutSlot(config, id1, 'someone-else')) as FerryError).code, 'KEY_LAST_SLOT');
  const slot2 = await createSlot(master, P2, config.id, { cost: CHEAP });
  const c2 = withSlot(config, slot2);
  t.is((t.throws(() => withoutSlot(c2, id1, id1)) as FerryError).code, 'KEY_IN_USE');
  const unknown = t.throws(() => withoutSlot(c2, 'ffffffffffffffff', slot2.id)) as FerryError;
  t.is(unknown.code, 'USAGE');
  t.true(unknown.message.includes(id1) && unknown.message.includes(slot2.id));
  const c3 = withoutSlot(c2, id1, slot2.id);
  t.deepEqual(c3.keys.map((k) => k.id), [slot2.id]);
  await expectWrong(t, unlock(c3, P1));
  await t.notThrowsAsync(unlock(c3, P2));
});

test('slots are bound to their vault and their parameters', async (t) => {
  const a = await newVaultConfig(P1, { cost: CHEAP });
  const b = await newVaultConfig(P1, { cost: CHEAP });
  // A slot moved from vault a into vault b does not open (its AAD names vault a).
  const moved: VaultConfig = { ...b.config, keys: [a.config.keys[0]] };
  await expectWrong(t, unlock(moved, P1));
  // Editing the vault id or a slot id breaks the slot.
  await expectWrong(t, unlock({ ...a.config, id: b.config.id }, P1));
  await expectWrong(t, unlock({ ...a.config, keys: [{ ...a.config.keys[0], id: '0123456789abcdef' }] }, P1));
  // Flipping any byte of the wrapped key or nonce.
  const s = a.config.keys[0];
  const wrapped = Buffer.from(s.wrapped, 'base64');
  for (let i = 0; i < wrapped.length; i++) {
    const w = Buffer.from(wrapped);
    w[i] ^= 1;
    await expectWrong(t, unlock({ ...a.config, keys: [{ ...s, wrapped: w.toString('base64') }] }, P1));
  }
  const n = Buffer.from(s.nonce, 'base64');
  n[0] ^= 1;
  await expectWrong(t, unlock({ ...a.config, keys: [{ ...s, nonce: n.toString('base64') }] }, P1));
});

test('a vault.json asking for absurd scrypt memory is refused before deriving', async (t) => {
  const { config } = await newVaultConfig(P1, { cost: CHEAP });
  for (const kdf of [
    { N: 2 ** 30, r: 8, p: 1 },
    { N: 1000, r: 8, p: 1 },
    { N: 1024, r: 0, p: 1 },
    { N: 2 ** 20, r: 64, p: 64 },
  ]) {
    const bad = { ...config, keys: [{ ...config.keys[0], kdf: { ...config.keys[0].kdf, ...kdf } }] };
    const err = (await t.throwsAsync(unlock(bad, P1))) as FerryError;
    t.is(err.code, 'KDF_BAD_PARAMS', JSON.stringify(kdf));
  }
});

test('vault.json parsing names what is wrong', (t) => {
  const ok = serializeConfig({
    format: 'ferry-vault',
    version: 1,
    id: '0'.repeat(32),
    created: 'now',
    defaults: { codec: 'zstd', level: 1 },
    keys: [{ id: '0'.repeat(16), created: 'now', kdf: { name: 'scrypt', ...CHEAP, salt: 'AA==' }, nonce: 'AA==', wrapped: 'AA==' }],
  });
  t.is(parseVaultConfig(ok, '/v').id, '0'.repeat(32));
  // Edited fields are named when there is no check (vault.json made before checks).
  const { check, ...unchecked } = JSON.parse(ok.toString());
  t.regex(check, /^[0-9a-f]{64}$/);
  const plain = JSON.stringify(unchecked, null, 2);
  t.is(parseVaultConfig(Buffer.from(plain), '/v').id, '0'.repeat(32));
  const cases: Array<[string, string | RegExp]> = [
    ['not json', /not JSON/],
    ['[]', /not a JSON object/],
    [ok.toString().replace('"created": "now"', '"created": "nov"'), /does not match its "check"/],
    [ok.toString().replace('"version": 1', '"version": 2'), /does not match its "check"/],
    [JSON.stringify({ format: 'restic' }), /"format" is "restic"/],
    [plain.replace('"version": 1', '"version": 2'), 'VAULT_VERSION'],
    [JSON.stringify({ ...unchecked, keys: [] }), /no key slot/],
    [JSON.stringify({ ...unchecked, chek: 'x' }), /unknown field "chek"/],
    [plain.replace('"zstd"', '"lz4"'), /defaults/],
    // names every object inherits are no codec (they passed an `in` test)
    [plain.replace('"zstd"', '"toString"'), /defaults/],
    [plain.replace('"zstd"', '"constructor"'), /defaults/],
  ];
  for (const [text, want] of cases) {
    const err = t.throws(() => parseVaultConfig(Buffer.from(text), '/v')) as FerryError;
    if (want === 'VAULT_VERSION') t.is(err.code, 'VAULT_VERSION');
    else {
      t.is(err.code, 'VAULT_CONFIG_BAD');
      t.regex(err.message, want as RegExp);
      t.true(err.message.includes('/v/vault.json'));
    }
  }
});

test('vault.json holds no key material (hex, base64, base64url, raw bytes)', async (t) => {
  const dir = join(await tempDir('nokey'), 'v');
  await initVault(dir, P1, { cost: CHEAP });
  const w = await openVault(dir, { passphrase: P1, writable: true });
  await w.addKey(P2, { cost: CHEAP });
  const master = Buffer.from(w.masterKey);
  await w.close();
  const raw = await fs.readFile(join(dir, 'vault.json'));
  const text = raw.toString('utf8');
  const forms = [
    master.toString('hex'),
    master.toString('hex').toUpperCase(),
    master.toString('base64'),
    master.toString('base64').replace(/=+$/, ''),
    master.toString('base64url'),
  ];
  for (const f of forms) t.false(text.includes(f), `master key found as ${f}`);
  // No long run of the key either: any 8-byte window in any encoding.
  for (let i = 0; i + 8 <= 32; i += 4) {
    const part = master.subarray(i, i + 8);
    t.false(raw.includes(part), `raw bytes ${i}..${i + 8}`);
    t.false(text.includes(part.toString('hex')), `hex window ${i}`);
  }
  for (const f of forms) t.false(Buffer.from(text, 'latin1').includes(Buffer.from(f)), 'latin1 view');
  t.false(raw.includes(master), 'raw bytes');
  t.false(text.toLowerCase().includes(P1.toLowerCase()) || text.includes(P2), 'passphrases');
  // And the decoded base64 fields are not the key either.
  const doc = JSON.parse(text) as VaultConfig;
  for (const s of doc.keys) {
    for (const v of [s.wrapped, s.nonce, s.kdf.salt]) t.false(Buffer.from(v, 'base64').includes(master.subarray(0, 8)));
  }
});

test('default scrypt cost is about half a second here', async (t) => {
  if (!process.env.FERRY_SLOW) {
    t.log('timed only in the slow suite (FERRY_SLOW=1)');
    t.pass();
    return;
  }
  const t0 = performance.now();
  const { config } = await newVaultConfig(P1);
  const made = performance.now() - t0;
  t.deepEqual({ N: config.keys[0].kdf.N, r: config.keys[0].kdf.r, p: config.keys[0].kdf.p }, DEFAULT_SCRYPT);
  const t1 = performance.now();
  await unlock(config, P1);
  const opened = performance.now() - t1;
  t.log(`create ${made.toFixed(0)} ms, unlock ${opened.toFixed(0)} ms`);
  t.true(opened > 150 && opened < 3000, `unlock took ${opened} ms`);
});

test('any byte of vault.json flipped is named as damage of vault.json, or changes nothing', async (t) => {
  const dir = join(await tempDir('flip'), 'v');
  await initVault(dir, P1, { cost: CHEAP });
  const w = await openVault(dir, { passphrase: P1, writable: true });
  await w.addKey(P2, { cost: CHEAP });
  const want = w.config;
  await w.close();
  const file = join(dir, 'vault.json');
  const raw = await fs.readFile(file);
  let damaged = 0;
  let harmless = 0;
  for (let i = 0; i < raw.length; i++) {
    for (const mask of [0x01, 0x20]) {
      const bad = Buffer.from(raw);
      bad[i] ^= mask;
      await fs.writeFile(file, bad);
      try {
        const r = await openVault(dir, { passphrase: P1 });
        // Only a change the parser cannot see (white space, a letter case of a hex escape) may open, and reads as before.
        t.deepEqual(r.config, want, `byte ${i} ^ ${mask} opened with another config`);
        await r.close();
        harmless++;
      } catch (err) {
        const e = err as FerryError;
        t.is(e.code, 'VAULT_CONFIG_BAD', `byte ${i} ^ ${mask}: ${e.code} ${e.message}`);
        t.true(e.message.includes(file), e.message);
        damaged++;
      }
    }
  }
  await fs.writeFile(file, raw);
  t.true(damaged > raw.length, `${damaged} damaged, ${harmless} harmless`);
  const back = await openVault(dir, { passphrase: P2 });
  t.deepEqual(back.config, want);
  await back.close();
});

test('a vault.json that is not JSON is named in one line with the way out; one that is a folder is no vault, not one to init', async (t) => {
  const err = t.throws(() => parseVaultConfig(Buffer.from('garbage\n'), '/v')) as FerryError;
  t.is(err.code, 'VAULT_CONFIG_BAD');
  t.false(err.message.includes('\n'), err.message);
  t.regex(err.message, /^\/v\/vault\.json is damaged: not JSON .*; put back a copy of it saved after the last `ferry init`/);
  const dir = join(await tempDir('cfgdir'), 'v');
  await initVault(dir, P1, { cost: CHEAP });
  await fs.rm(join(dir, 'vault.json'));
  await fs.mkdir(join(dir, 'vault.json'));
  const none = (await t.throwsAsync(openVault(dir, { passphrase: P1 }))) as FerryError;
  t.is(none.code, 'NO_VAULT');
  t.regex(none.message, /holds other things but no vault\.json file/);
});

test('vault.json with its keys in another order (jq -S) or a byte-order mark reads as before; its content changed does not', async (t) => {
  const dir = join(await tempDir('order'), 'v');
  await initVault(dir, P1, { cost: CHEAP });
  const file = join(dir, 'vault.json');
  const raw = await fs.readFile(file, 'utf8');
  const want = parseVaultConfig(Buffer.from(raw), dir);
  const sorted = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(sorted) : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().reverse().map((k) => [k, sorted((v as Record<string, unknown>)[k])])) : v;
  for (const text of [JSON.stringify(sorted(JSON.parse(raw)), null, 2), '\uFEFF' + raw]) {
    await fs.writeFile(file, text);
    const r = await openVault(dir, { passphrase: P1 });
    t.deepEqual(r.config, want);
    await r.close();
  }
  await fs.writeFile(file, raw.replace('"level": 1', '"level": 2'));
  const err = (await t.throwsAsync(openVault(dir, { passphrase: P1 }))) as FerryError;
  t.is(err.code, 'VAULT_CONFIG_BAD');
});
