// Opening a vault: pick the backend from the location, read vault.json,
// unlock the master key, and hand out a read-only or a writer handle. Only a
// writer holds the lock, and only after the passphrase proved right, so a
// wrong passphrase leaves the vault exactly as it was.
import { fileURLToPath } from 'node:url';
import { FerryError, EXIT, UsageError } from '../format/errors.js';
import { CodecName } from '../format/seal/layout.js';
import { Sealer, SealOptions } from '../format/seal/seal.js';
import { SealPool, freeBuffer } from '../format/seal/pool.js';
import { FileRange, isFileRange } from '../format/filerange.js';
import { Backend, ObjectStat, readOnlyBackend } from './backend.js';
import { DirBackend, dirState } from './dir.js';
import {
  createSlot,
  KeyOptions,
  listSlots,
  newVaultConfig,
  parseVaultConfig,
  serializeConfig,
  SlotInfo,
  unlock,
  VAULT_CONFIG_NAME,
  VaultConfig,
  withoutSlot,
  withSlot,
} from './keys.js';
import { acquireLock, LockCodec, LockOptions, WriterLock } from './lock.js';

export interface BackendOptions {
  /** For the directory backend: fsync (default true). */
  sync?: boolean;
}

/** The backend for a location string. New schemes (azure://) plug in here. */
export function openBackend(location: string, opts: BackendOptions = {}): Backend {
  if (typeof location !== 'string' || location.length === 0) throw new UsageError('vault location must be a directory path (--vault DIR)');
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(location)?.[1]?.toLowerCase();
  if (scheme === undefined || scheme === 'file') {
    return new DirBackend(scheme === 'file' ? fileURLToPath(location) : location, { sync: opts.sync });
  }
  throw new UsageError(`vault location ${location}: the ${scheme}:// scheme is not supported yet (use a directory path)`);
}

export interface OpenOptions extends BackendOptions {
  /** Or a function, called only once the vault is found (so a missing vault is reported before a prompt). */
  passphrase: string | (() => Promise<string>);
  writable?: boolean;
  /** Writers: break whatever lock is there (--break-lock). */
  breakLock?: boolean;
  /** Warnings for the user (a lock was broken with --break-lock, could not be released). */
  onWarning?: (message: string) => void;
  /** Notes for the user, no warnings (a stale lock of a process that is gone was removed). */
  onNote?: (message: string) => void;
  /** Sealing threads (default: all cores; 0 seals in the calling thread). */
  poolSize?: number;
  /** What the writer is doing, shown to whoever finds the vault locked. */
  command?: string;
  /** Lock tuning and test seams. */
  lock?: Omit<LockOptions, 'codec' | 'breakLock' | 'onWarning' | 'onNote' | 'command'>;
  /** An existing backend instead of one from `location` (tests wrap one in faults). */
  backend?: Backend;
}

export interface PutOptions extends SealOptions {
  /** Unseal what was sealed before storing it: costs a decompression, proves the writer (default false). */
  verify?: boolean;
  /**
   * The caller hands `data` over: when it owns its whole memory it moves to
   * a sealing thread without a copy and is empty afterwards (not with verify).
   */
  give?: boolean;
  /** Create only: fail with OBJECT_EXISTS when the name is taken. */
  exclusive?: boolean;
}

/** What mount, restore and check get: reads only. */
export class VaultReader {
  readonly writable: boolean = false;
  readonly #raw: Backend;
  readonly #readOnly: Backend;
  #key: Buffer;
  #pool: SealPool | undefined;
  readonly #poolSize: number | undefined;
  #closed = false;

  protected currentConfig: VaultConfig;

  constructor(
    backend: Backend,
    config: VaultConfig,
    key: Buffer,
    /** The key slot the passphrase opened. */
    readonly slotId: string,
    poolSize?: number,
  ) {
    this.#raw = backend;
    this.#readOnly = readOnlyBackend(backend);
    this.currentConfig = config;
    this.#key = key;
    this.#poolSize = poolSize;
  }

  /** The storage; a reader's refuses writes with READ_ONLY. */
  get backend(): Backend {
    return this.writable ? this.#raw : this.#readOnly;
  }

  /** vault.json as last read or written. */
  get config(): VaultConfig {
    return this.currentConfig;
  }

  get id(): string {
    return this.currentConfig.id;
  }

  get location(): string {
    return this.backend.location;
  }

  /** The master key (seed disks seal with it too). Zeroed by close(). */
  get masterKey(): Buffer {
    this.#checkOpen();
    return this.#key;
  }

  get pool(): SealPool {
    this.#checkOpen();
    // Workers start lazily, so a handle that only lists costs no threads.
    this.#pool ??= new SealPool(this.#key, { size: this.#poolSize, codec: this.config.defaults.codec, level: this.config.defaults.level });
    return this.#pool;
  }

  /**
   * A writer on the same vault without asking for the passphrase again: takes
   * the lock now. For commands that check their input before writing.
   */
  openWriter(opts: WriterOptions = {}): Promise<VaultWriter> {
    this.#checkOpen();
    return lockForWriting(this.#raw, this.currentConfig, this.#key, this.slotId, { poolSize: this.#poolSize, ...opts });
  }

  slots(): SlotInfo[] {
    return listSlots(this.config);
  }

  /** Reads and unseals `name`; SEAL_* or OBJECT_MISSING errors name the object. */
  async getSealed(name: string): Promise<Buffer> {
    this.#checkOpen();
    const sealed = await this.backend.get(name);
    return this.pool.unseal(name, sealed, true); // (ours alone: it moves to the pool without a copy)
  }

  list(prefix: string): AsyncIterable<string> {
    return this.backend.list(prefix);
  }

  exists(name: string): Promise<boolean> {
    return this.backend.exists(name);
  }

  stat(name: string): Promise<ObjectStat> {
    return this.backend.stat(name);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#pool?.close();
    this.#key.fill(0);
  }

  protected get closed(): boolean {
    return this.#closed;
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error(`vault ${this.location} is closed`);
  }
}

/** What seed, backup and merge get: holds the writer lock until close(). */
export class VaultWriter extends VaultReader {
  override readonly writable: boolean = true;

  constructor(
    backend: Backend,
    config: VaultConfig,
    key: Buffer,
    slotId: string,
    readonly lock: WriterLock,
    poolSize?: number,
  ) {
    super(backend, config, key, slotId, poolSize);
  }

  /**
   * Starts a group commit (see Backend.beginBatch): new objects put until
   * commitBatch() are made durable together. For the blocks of a disk
   * before its head, the objects of a seed disk before its marker: nothing
   * may refer to them until commitBatch() has resolved.
   */
  beginBatch(): void {
    this.lock.assertHeld();
    this.backend.beginBatch?.();
  }

  /** Makes an object already stored durable with the batch (see Backend.keepInBatch). */
  keepInBatch(name: string): void {
    this.backend.keepInBatch?.(name);
  }

  /** Makes every object put since beginBatch() durable; ends the batch. */
  async commitBatch(): Promise<void> {
    await this.backend.commitBatch?.();
  }

  /**
   * Seals `data` (AAD = name) on the pool and stores it atomically; checks the
   * stored size. `data` may be a range of an open file, which the sealing
   * thread maps or reads itself (not with `verify`).
   */
  async putSealed(name: string, data: Buffer | FileRange, opts: PutOptions = {}): Promise<{ size: number; codec: CodecName }> {
    this.lock.assertHeld();
    const { verify, give, exclusive, ...sealOpts } = opts;
    if (isFileRange(data)) {
      if (verify) throw new Error('putSealed: verify needs the bytes, not a file range');
      return this.#store(name, await this.pool.sealRange(name, data, sealOpts), exclusive);
    }
    const sealed = await this.pool.seal(name, data, sealOpts, give && !verify);
    if (verify) {
      const back = await this.pool.unseal(name, sealed);
      if (!back.equals(data)) throw new Error(`sealing ${name} did not round-trip`);
    }
    return this.#store(name, sealed, exclusive);
  }

  async #store(name: string, sealed: Buffer, exclusive: boolean | undefined): Promise<{ size: number; codec: CodecName }> {
    await this.#lockRecheck();
    await (exclusive ? this.backend.putNew(name, sealed) : this.backend.put(name, sealed));
    const st = await this.backend.stat(name);
    if (st.size !== sealed.length) {
      throw new FerryError('BACKEND_SHORT_WRITE', `object ${name} in ${this.location} holds ${st.size} bytes after writing ${sealed.length}`, { object: name });
    }
    const r = { size: sealed.length, codec: (['none', 'zstd', 'deflate'] as const)[sealed[6]] };
    // Ours alone now (a backend keeps no reference after put): free it at once,
    // not at some later collection, so the next object reuses the memory.
    freeBuffer(sealed);
    return r;
  }

  #checked = 0;
  #checking: Promise<void> | null = null;

  /**
   * Asks the backend, at most every 100 ms, whether the lock is still ours
   * (between, what the last answer said): a holder stopped (SIGSTOP, a hung
   * disk) while --break-lock let another writer in stops at its next put,
   * not at the next refresh minutes later.
   */
  async #lockRecheck(): Promise<void> {
    this.lock.assertHeld();
    if (this.#checking) return this.#checking;
    if (Date.now() - this.#checked < 100) return;
    this.#checking = this.lock.verify().finally(() => {
      this.#checked = Date.now();
      this.#checking = null;
    });
    return this.#checking;
  }

  async delete(name: string): Promise<void> {
    this.lock.assertHeld();
    await this.backend.delete(name);
  }

  /** Adds a key slot for `passphrase` and saves vault.json. */
  async addKey(passphrase: string, opts: KeyOptions = {}): Promise<SlotInfo> {
    // A passphrase that opens a slot already would only add a second slot for it
    const had = await unlock(this.currentConfig, passphrase, this.location).catch(() => null);
    if (had) {
      had.master.fill(0);
      throw new FerryError('KEY_EXISTS', `that passphrase already opens key slot ${had.slotId} of ${this.location}; nothing changed`, { slot: had.slotId });
    }
    const slot = await createSlot(this.masterKey, passphrase, this.id, opts);
    await this.#saveConfig(withSlot(this.currentConfig, slot));
    return listSlots(this.currentConfig).find((s) => s.id === slot.id)!;
  }

  /** Removes key slot `id` (never the last, never the one this session unlocked with). */
  async removeKey(id: string): Promise<void> {
    await this.#saveConfig(withoutSlot(this.currentConfig, id, this.slotId));
  }

  async #saveConfig(next: VaultConfig): Promise<void> {
    // Still ours, and vault.json as this command read it: a holder paused
    // while --break-lock let another add a key would otherwise write its
    // older copy over the new slot.
    await this.lock.verify();
    const now = parseVaultConfig(await this.backend.get(VAULT_CONFIG_NAME), this.location);
    if (JSON.stringify(now) !== JSON.stringify(this.currentConfig)) {
      throw new FerryError('VAULT_CONFIG_CHANGED', `${this.location}/${VAULT_CONFIG_NAME} changed since this command read it (another command changed the keys); nothing changed: run it again`, {});
    }
    const bytes = serializeConfig(next);
    await this.backend.put(VAULT_CONFIG_NAME, bytes);
    // Read back: a vault.json that does not parse would lock everyone out.
    const back = await this.backend.get(VAULT_CONFIG_NAME);
    if (!back.equals(bytes)) throw new FerryError('VAULT_CONFIG_BAD', `${this.location}/${VAULT_CONFIG_NAME} does not read back as written`, {});
    this.currentConfig = parseVaultConfig(back, this.location);
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    try {
      await super.close();
    } finally {
      await this.lock.release();
    }
  }
}

/** Reads vault.json; NO_VAULT when there is none (`holdsOther`: the folder holds other things, so init is not the way out). */
export async function readVaultConfig(backend: Backend, holdsOther = false): Promise<VaultConfig> {
  let data: Buffer;
  try {
    data = await backend.get(VAULT_CONFIG_NAME);
  } catch (err) {
    if (err instanceof FerryError && err.code === 'OBJECT_MISSING') throw noVault(backend.location, false, holdsOther);
    throw err;
  }
  return parseVaultConfig(data, backend.location);
}

function noVault(location: string, notAFolder = false, holdsOther = false): FerryError {
  return new FerryError(
    'NO_VAULT',
    notAFolder
      ? `no ferry vault at ${location}: it (or a folder above it) is a file, not a folder; give the vault's folder`
      : holdsOther
        ? `no ferry vault at ${location}: the folder holds other things but no ${VAULT_CONFIG_NAME} file; give the vault's own folder (if it is the vault and ${VAULT_CONFIG_NAME} was lost, put back a saved copy)`
        : `no ferry vault at ${location} (no ${VAULT_CONFIG_NAME}); run \`ferry init ${location}\` to create one`,
    { location },
    EXIT.noVault,
  );
}

export function openVault(location: string, opts: OpenOptions & { writable: true }): Promise<VaultWriter>;
export function openVault(location: string, opts: OpenOptions): Promise<VaultReader>;
export async function openVault(location: string, opts: OpenOptions): Promise<VaultReader> {
  const backend = opts.backend ?? openBackend(location, opts);
  let state: Awaited<ReturnType<typeof dirState>> | undefined;
  if (backend instanceof DirBackend) {
    state = await dirState(backend.location);
    if (state === 'missing' || state === 'notADirectory') throw noVault(backend.location, state === 'notADirectory');
  }
  const config = await readVaultConfig(backend, state === 'nonEmpty');
  const passphrase = typeof opts.passphrase === 'function' ? await opts.passphrase() : opts.passphrase;
  const { master, slotId } = await unlock(config, passphrase, backend.location);
  if (!opts.writable) return new VaultReader(backend, config, master, slotId, opts.poolSize);
  try {
    return await lockForWriting(backend, config, master, slotId, opts);
  } finally {
    master.fill(0);
  }
}

export type WriterOptions = Pick<OpenOptions, 'breakLock' | 'onWarning' | 'onNote' | 'command' | 'lock' | 'poolSize'>;

async function lockForWriting(backend: Backend, config: VaultConfig, key: Buffer, slotId: string, opts: WriterOptions): Promise<VaultWriter> {
  // The writer owns its copy of the key, so the caller may zero its own.
  const master = Buffer.from(key);
  const sealer = new Sealer(master);
  // Lock objects are sealed like everything else: only key holders can read or forge them.
  const codec: LockCodec = {
    encode: (name, info) => sealer.seal(name, Buffer.from(JSON.stringify(info))),
    decode: (name, data) => JSON.parse(sealer.unseal(name, data).toString('utf8')),
  };
  let lock: WriterLock;
  try {
    lock = await acquireLock(backend, { ...opts.lock, codec, breakLock: opts.breakLock, onWarning: opts.onWarning, onNote: opts.onNote, command: opts.command });
  } catch (err) {
    master.fill(0);
    throw err;
  }
  return new VaultWriter(backend, config, master, slotId, lock, opts.poolSize);
}

export interface InitOptions extends KeyOptions, BackendOptions {
  codec?: CodecName;
  level?: number;
  backend?: Backend;
}

/** Creates a vault: the location must be missing, an empty directory, or (other backends) hold no vault.json. */
/** `passphrase` may be a function: it is asked only once the location is known to be usable (no prompt for a vault that cannot be made). */
export async function initVault(
  location: string,
  passphrase: string | (() => Promise<string>),
  opts: InitOptions = {},
): Promise<{ id: string; location: string; config: VaultConfig }> {
  const backend = opts.backend ?? openBackend(location, opts);
  if (backend instanceof DirBackend) {
    const st = await dirState(backend.location);
    if (st === 'notADirectory') throw new FerryError('VAULT_NOT_EMPTY', `${backend.location} (or a folder above it) is a file, not a folder; choose another place for the vault`, { location: backend.location });
    if (st === 'nonEmpty') {
      if (await backend.exists(VAULT_CONFIG_NAME)) throw vaultExists(backend.location);
      throw new FerryError('VAULT_NOT_EMPTY', `${backend.location} is not empty and is not a vault; give ferry init an empty or new directory`, { location: backend.location });
    }
  } else if (await backend.exists(VAULT_CONFIG_NAME)) {
    throw vaultExists(backend.location);
  }
  const given = typeof passphrase === 'function' ? await passphrase() : passphrase;
  const { config, master } = await newVaultConfig(given, { ...opts, defaults: { codec: opts.codec, level: opts.level } });
  master.fill(0);
  const bytes = serializeConfig(config);
  try {
    await backend.putNew(VAULT_CONFIG_NAME, bytes);
  } catch (err) {
    if (err instanceof FerryError && err.code === 'OBJECT_EXISTS') throw vaultExists(backend.location);
    throw err;
  }
  const back = parseVaultConfig(await backend.get(VAULT_CONFIG_NAME), backend.location);
  if (back.id !== config.id) throw vaultExists(backend.location);
  return { id: config.id, location: backend.location, config };
}

function vaultExists(location: string): FerryError {
  return new FerryError('VAULT_EXISTS', `${location} is already a ferry vault; nothing changed`, { location });
}
