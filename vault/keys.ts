// vault.json and its key slots. The master key (32 random bytes) seals every
// object; it is never stored in the clear. Each slot wraps it with
// AES-256-GCM under a key derived from one passphrase by scrypt, with the
// slot's own salt and cost. The GCM tag of the wrapped key is the key check:
// a wrong passphrase fails it, and nothing else needs to be stored.
//
// vault.json (plain JSON, the one unsealed object of a vault):
//   { "format": "ferry-vault", "version": 1, "id": "<32 hex>", "created": ISO,
//     "defaults": { "codec": "zstd", "level": 1 },
//     "keys": [ { "id": "<16 hex>", "created": ISO,
//                 "kdf": { "name": "scrypt", "N": 32768, "r": 8, "p": 6, "salt": "<base64, 16 bytes>" },
//                 "nonce": "<base64, 12 bytes>", "wrapped": "<base64, 32 bytes key + 16 bytes tag>" } ],
//     "check": "<64 hex>" }
// check = SHA-256 of the rest (the JSON without "check", keys sorted,
// two-space indent, a final newline): a damaged byte anywhere (a
// salt, a creation time, a default) is named as damage, not taken as a
// wrong passphrase or used. A vault.json without "check" (made before) is read.
// Slot AAD = "ferry-key-slot-v1" 00 vault-id 00 slot-id 00 N 00 r 00 p 00 salt(base64):
// a slot cannot be moved to another vault or have its cost edited unnoticed.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { EXIT, FerryError, UsageError } from '../format/errors.js';
import { CODECS, CodecName } from '../format/seal/layout.js';
import { nTooLarge, scrypt, ScryptCost } from './scrypt.js';

export type { ScryptCost };

export const VAULT_FORMAT = 'ferry-vault';
export const VAULT_VERSION = 1;
export const VAULT_CONFIG_NAME = 'vault.json';
export const MIN_PASSPHRASE_CHARS = 16;
const MASTER_KEY_SIZE = 32;

/**
 * About 0.44 s of one core's work on the machine this was tuned on (AMD EPYC,
 * Node 20), which is what each guess costs an attacker; ferry itself runs the
 * six lanes on all the cores (vault/scrypt.ts) and waits about half that on
 * two, with one 32 MiB table per lane in flight. N = 2^15, r = 8 with p = 6 costs the time of N = 2^17, r = 8, p = 1
 * (0.36-0.45 s) in a quarter of the memory: opening a vault peaked at 173 MiB
 * with 2^17 and at 75 MiB with this on one core. OWASP's password storage sheet
 * counts N = 2^15, r = 8, p = 3 as the equal of N = 2^17, r = 8, p = 1; this
 * is twice that work (restic uses the same shape: N = 2^15, r = 8, p tuned).
 * Slots made before keep their own cost (it is in the slot).
 */
export const DEFAULT_SCRYPT: ScryptCost = { N: 2 ** 15, r: 8, p: 6 };
/** What a vault.json may ask of us before we refuse: a hostile file must not make unlock eat the machine. */
const MAX_SCRYPT_MEMORY = 2 ** 31;

export interface KdfParams extends ScryptCost {
  name: 'scrypt';
  salt: string;
}

export interface KeySlot {
  id: string;
  created: string;
  kdf: KdfParams;
  nonce: string;
  wrapped: string;
}

export interface VaultDefaults {
  codec: CodecName;
  level: number;
}

export interface VaultConfig {
  format: typeof VAULT_FORMAT;
  version: number;
  id: string;
  created: string;
  defaults: VaultDefaults;
  keys: KeySlot[];
}

/** What `ferry key list` shows: no salt, no wrapped key. */
export interface SlotInfo {
  id: string;
  created: string;
  kdf: { name: 'scrypt'; N: number; r: number; p: number };
}

export interface KeyOptions {
  /** scrypt cost for new slots (tests pass a cheap one). */
  cost?: ScryptCost;
  now?: () => number;
  random?: (n: number) => Buffer;
}

/** Refuses short passphrases when one is being set (not when one is tried). */
export function checkNewPassphrase(passphrase: unknown, what = 'passphrase'): asserts passphrase is string {
  if (typeof passphrase !== 'string') throw new UsageError(`${what} must be a string`);
  const chars = [...passphrase.normalize('NFC')].length;
  if (chars < MIN_PASSPHRASE_CHARS) {
    throw new UsageError(`${what} has ${chars} characters; use at least ${MIN_PASSPHRASE_CHARS}`, { argument: what });
  }
}

export function checkCost(c: ScryptCost, where = 'scrypt parameters'): void {
  const pow2 = Number.isSafeInteger(c.N) && c.N >= 2 && (c.N & (c.N - 1)) === 0;
  const ok = pow2 && Number.isInteger(c.r) && c.r >= 1 && c.r <= 64 && Number.isInteger(c.p) && c.p >= 1 && c.p <= 64;
  if (!ok) throw new FerryError('KDF_BAD_PARAMS', `${where}: N must be a power of two, r and p from 1 to 64 (got N=${c.N} r=${c.r} p=${c.p})`, { ...c });
  if (nTooLarge(c)) throw new FerryError('KDF_BAD_PARAMS', `${where}: N=${c.N} must be less than 2^(16·r) = 2^${16 * c.r} (RFC 7914)`, { ...c });
  const mem = 128 * c.N * c.r * c.p;
  if (mem > MAX_SCRYPT_MEMORY) {
    throw new FerryError('KDF_BAD_PARAMS', `${where}: N=${c.N} r=${c.r} p=${c.p} would need ${Math.round(mem / 2 ** 20)} MiB; refusing more than ${MAX_SCRYPT_MEMORY / 2 ** 20} MiB`, { ...c });
  }
}

function deriveKek(passphrase: string, salt: Buffer, c: ScryptCost): Promise<Buffer> {
  return scrypt(Buffer.from(passphrase.normalize('NFC'), 'utf8'), salt, c, 32);
}

function slotAad(vaultId: string, slotId: string, kdf: KdfParams): Buffer {
  return Buffer.from(['ferry-key-slot-v1', vaultId, slotId, kdf.N, kdf.r, kdf.p, kdf.salt].join('\0'), 'utf8');
}

function wrap(kek: Buffer, master: Buffer, nonce: Buffer, aad: Buffer): Buffer {
  const c = createCipheriv('aes-256-gcm', kek, nonce, { authTagLength: 16 });
  c.setAAD(aad);
  return Buffer.concat([c.update(master), c.final(), c.getAuthTag()]);
}

/** The master key, or null when the tag says this KEK is not the slot's. */
function unwrap(kek: Buffer, slot: KeySlot, vaultId: string): Buffer | null {
  const nonce = Buffer.from(slot.nonce, 'base64');
  const blob = Buffer.from(slot.wrapped, 'base64');
  if (nonce.length !== 12 || blob.length !== MASTER_KEY_SIZE + 16) return null;
  const d = createDecipheriv('aes-256-gcm', kek, nonce, { authTagLength: 16 });
  d.setAAD(slotAad(vaultId, slot.id, slot.kdf));
  d.setAuthTag(blob.subarray(MASTER_KEY_SIZE));
  const master = d.update(blob.subarray(0, MASTER_KEY_SIZE));
  try {
    d.final();
  } catch {
    master.fill(0);
    return null;
  }
  return master;
}

/** A new slot wrapping `master` under `passphrase`; checks it unwraps before returning it. */
export async function createSlot(master: Buffer, passphrase: string, vaultId: string, opts: KeyOptions = {}): Promise<KeySlot> {
  checkNewPassphrase(passphrase);
  const cost = opts.cost ?? DEFAULT_SCRYPT;
  checkCost(cost);
  const random = opts.random ?? randomBytes;
  const salt = random(16);
  const kdf: KdfParams = { name: 'scrypt', N: cost.N, r: cost.r, p: cost.p, salt: salt.toString('base64') };
  const id = random(8).toString('hex');
  const nonce = random(12);
  const kek = await deriveKek(passphrase, salt, cost);
  const slot: KeySlot = {
    id,
    created: new Date((opts.now ?? Date.now)()).toISOString(),
    kdf,
    nonce: nonce.toString('base64'),
    wrapped: wrap(kek, master, nonce, slotAad(vaultId, id, kdf)).toString('base64'),
  };
  const back = unwrap(kek, slot, vaultId);
  kek.fill(0);
  if (!back || !back.equals(master)) throw new Error('key slot does not unwrap to the master key it was made from');
  back.fill(0);
  return slot;
}

/** A fresh vault.json with one slot, and its master key. */
export async function newVaultConfig(
  passphrase: string,
  opts: KeyOptions & { defaults?: Partial<VaultDefaults> } = {},
): Promise<{ config: VaultConfig; master: Buffer }> {
  checkNewPassphrase(passphrase);
  const random = opts.random ?? randomBytes;
  const master = random(MASTER_KEY_SIZE);
  const id = random(16).toString('hex');
  const defaults: VaultDefaults = { codec: opts.defaults?.codec ?? 'zstd', level: opts.defaults?.level ?? 1 };
  const slot = await createSlot(master, passphrase, id, opts);
  const config: VaultConfig = {
    format: VAULT_FORMAT,
    version: VAULT_VERSION,
    id,
    created: new Date((opts.now ?? Date.now)()).toISOString(),
    defaults,
    keys: [slot],
  };
  return { config, master };
}

/**
 * Tries the passphrase on every slot (in parallel: each costs ~0.5 s of
 * scrypt). WRONG_PASSPHRASE (exit 12) when none opens.
 */
export async function unlock(config: VaultConfig, passphrase: string, location = 'the vault'): Promise<{ master: Buffer; slotId: string }> {
  if (typeof passphrase !== 'string' || passphrase.length === 0) throw wrongPassphrase(location);
  for (const s of config.keys) checkCost(s.kdf, `key slot ${s.id} of ${location}`);
  const results = await Promise.all(
    config.keys.map(async (slot) => {
      const kek = await deriveKek(passphrase, Buffer.from(slot.kdf.salt, 'base64'), slot.kdf);
      const master = unwrap(kek, slot, config.id);
      kek.fill(0);
      return master ? { master, slotId: slot.id } : null;
    }),
  );
  const hit = results.find((r) => r !== null);
  for (const r of results) if (r && r !== hit) r.master.fill(0);
  if (!hit) throw wrongPassphrase(location);
  return hit;
}

function wrongPassphrase(location: string): FerryError {
  return new FerryError('WRONG_PASSPHRASE', `wrong passphrase for vault ${location}: no key slot opens with it`, { location }, EXIT.wrongPassphrase);
}

export function listSlots(config: VaultConfig): SlotInfo[] {
  return config.keys.map((s) => ({ id: s.id, created: s.created, kdf: { name: 'scrypt', N: s.kdf.N, r: s.kdf.r, p: s.kdf.p } }));
}

/** The config with `slot` added (the caller writes it). */
export function withSlot(config: VaultConfig, slot: KeySlot): VaultConfig {
  return { ...config, keys: [...config.keys, slot] };
}

/**
 * The config without slot `id`. Refuses the last slot, and the slot that
 * unlocked this session: removing needs proof that a remaining passphrase works.
 */
export function withoutSlot(config: VaultConfig, id: string, unlockedWith: string): VaultConfig {
  if (!config.keys.some((s) => s.id === id)) {
    throw new UsageError(`no key slot ${JSON.stringify(id)}; the slots are ${config.keys.map((s) => s.id).join(', ')} (see ferry key list)`);
  }
  if (config.keys.length === 1) throw new FerryError('KEY_LAST_SLOT', `key slot ${id} is the only one; add another (ferry key add) before removing it`, { slot: id });
  if (id === unlockedWith) {
    throw new FerryError('KEY_IN_USE', `key slot ${id} is the one this passphrase opens; unlock with a passphrase that stays (another slot) to remove it`, { slot: id });
  }
  return { ...config, keys: config.keys.filter((s) => s.id !== id) };
}

export function serializeConfig(config: VaultConfig): Buffer {
  const { check: _, ...body } = config as VaultConfig & { check?: unknown };
  return Buffer.from(JSON.stringify({ ...body, check: configCheck(body) }, null, 2) + '\n', 'utf8');
}

/**
 * SHA-256 (hex) of `body` with every object's keys in sorted order, two-space
 * indent and a final newline: the same for the same content, whatever order a
 * tool (jq -S, an editor) leaves the keys in.
 */
function configCheck(body: object): string {
  return sha256Hex(JSON.stringify(sortKeys(body), null, 2) + '\n');
}

/** The check as the first vault.json files with checks had it (keys in the order ferry writes them). */
function configCheckInOrder(body: object): string {
  return sha256Hex(JSON.stringify(body, null, 2) + '\n');
}

const sha256Hex = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex');

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
  return v;
}

const CONFIG_FIELDS = ['format', 'version', 'id', 'created', 'defaults', 'keys'];

/** Parses and checks vault.json; VAULT_CONFIG_BAD naming the field when it is not one. */
export function parseVaultConfig(data: Buffer, location: string): VaultConfig {
  // one line, and the way out
  const bad = (what: string) =>
    new FerryError('VAULT_CONFIG_BAD', `${location}/${VAULT_CONFIG_NAME} is damaged: ${what.replace(/\s+/g, ' ')}; put back a copy of it saved after the last \`ferry init\` or \`ferry key add|remove\``, { location, file: VAULT_CONFIG_NAME });
  let doc: unknown;
  try {
    doc = JSON.parse(data.toString('utf8').replace(/^\uFEFF/, '')); // (a byte-order mark an editor added is not damage)
  } catch (err) {
    throw bad(`not JSON (${(err as Error).message})`);
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw bad('not a JSON object');
  // The check first: a damaged version or format is damage, not another ferry's vault.
  const { check, ...body } = doc as Record<string, unknown>;
  if (check !== undefined && check !== configCheck(body) && check !== configCheckInOrder(body)) {
    throw bad('its content does not match its "check" (SHA-256)');
  }
  const c = body as Partial<VaultConfig>;
  if (c.format === undefined && check === undefined) {
    // (no format and no check: not a vault.json of ferry's at all, rather than a damaged one)
    throw new FerryError('VAULT_CONFIG_BAD', `${location}/${VAULT_CONFIG_NAME} is not a ferry vault's config: no "format" field (expected "${VAULT_FORMAT}"); give the vault's own folder, or put back a copy of ${VAULT_CONFIG_NAME} saved after the last \`ferry init\` or \`ferry key add|remove\``, { location, file: VAULT_CONFIG_NAME });
  }
  if (c.format !== VAULT_FORMAT) throw bad(c.format === undefined ? `no "format" field (expected "${VAULT_FORMAT}")` : `"format" is ${JSON.stringify(c.format)}, not "${VAULT_FORMAT}"`);
  if (c.version === undefined) throw bad(`no "version" field (expected ${VAULT_VERSION})`);
  if (c.version !== VAULT_VERSION) {
    throw new FerryError('VAULT_VERSION', `${location} is a version ${c.version} vault; this ferry reads version ${VAULT_VERSION}; upgrade ferry`, { location, version: c.version });
  }
  // Nothing unknown: a "check" whose name was damaged must not pass as a vault.json made before checks.
  const unknown = Object.keys(body).find((k) => !CONFIG_FIELDS.includes(k));
  if (unknown !== undefined) throw bad(`unknown field ${JSON.stringify(unknown)}`);
  if (typeof c.id !== 'string' || !/^[0-9a-f]{32}$/.test(c.id)) throw bad('"id" is not 32 hex digits');
  if (!c.defaults || !(typeof c.defaults.codec === 'string' && Object.hasOwn(CODECS, c.defaults.codec)) || !Number.isInteger(c.defaults.level)) throw bad('"defaults" needs a codec (none, zstd, deflate) and an integer level');
  if (!Array.isArray(c.keys) || c.keys.length === 0) throw bad('"keys" holds no key slot');
  for (const [i, s] of c.keys.entries()) {
    const k = s?.kdf;
    if (typeof s?.id !== 'string' || !/^[0-9a-f]{16}$/.test(s.id)) throw bad(`keys[${i}].id is not 16 hex digits`);
    if (!k || k.name !== 'scrypt' || typeof k.salt !== 'string') throw bad(`keys[${i}].kdf is not scrypt with a salt`);
    if (typeof s.nonce !== 'string' || typeof s.wrapped !== 'string') throw bad(`keys[${i}] lacks nonce or wrapped`);
  }
  return c as VaultConfig;
}
