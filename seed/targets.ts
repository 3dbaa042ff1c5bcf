// The seed disks as an object sink: sealed objects go straight onto the
// target folders (no staging copy), filling one folder, then the next. Each
// folder keeps a FERRY-SEED.json listing what it holds; a resumed seed keeps
// every object whose plaintext is unchanged and whose bytes verify.
import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { access, lstat, open as fsOpen, readdir, readFile, rename, rm, rmdir, statfs, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { FerryError } from '../format/errors.js';
import { freeBuffer, type SealPool } from '../format/seal/pool.js';
import { UsageError } from '../format/errors.js';
import { SEED_FORMAT, SEED_MANIFEST, type SeedDiskSummary, type SeedManifest, type SeedObject, parseSeedManifest, readManifestText, summarizeObjects } from '../format/seedmanifest.js';
import { lockFile, mkdirp, writeAll } from '../format/fsio.js';
import { startWriteback } from '../format/writeback.js';
import { putFileNative } from '../format/native.js';
import { interrupted, onInterrupt } from '../format/interrupt.js';

const run = promisify(execFile);
/** Beside FERRY-SEED.json while a seed writes the disk. */
export const SEED_LOCK = '.ferry-seed-lock';
const BLOCK = 4096;
const roundUp = (n: number) => Math.ceil(n / BLOCK) * BLOCK;
/** What an object costs on a disk: whole file-system blocks, and a directory entry. */
const objectCost = (size: number) => roundUp(size) + 256;
/**
 * Room kept for a disk's manifest: a little for the header and the sealed
 * point, a line per object, twice (the new copy is written before the old
 * one goes).
 */
const manifestRoom = (objects: number) => 2 * roundUp(12288 + 320 * (objects + 1));
const isFull = (err: unknown) => ['ENOSPC', 'EDQUOT'].includes((err as NodeJS.ErrnoException)?.code ?? '');
const CHECKPOINT_BYTES = 256 * 1024 * 1024;
/**
 * Test hook: FERRY_TEST_KILL_AFTER_MARKS=N kills the process once N disks
 * are marked complete, so that tests can stop a seed between two markings.
 * Unset in normal use.
 */
const KILL_AFTER_MARKS = /^[0-9]+$/.test(process.env.FERRY_TEST_KILL_AFTER_MARKS ?? '') ? Number(process.env.FERRY_TEST_KILL_AFTER_MARKS) : null;

export interface SeedIdentity {
  seedId: string;
  vaultId: string;
  machine: string;
  item: string;
  kind: string;
  prefix: string;
  params: SeedManifest['params'];
  sources?: string[];
}

interface Held extends SeedObject {
  disk: number; // index into dirs
}

/** What findResumable found on the targets. */
export interface Resumable {
  manifest: SeedManifest;
  /**
   * A disk carries the sealed point record of a seed that is not complete
   * on every disk given: a run stopped while it marked the disks complete.
   * The data is final (a complete disk may be imported already); only the
   * marking is done again, and `manifest` is one that carries the record.
   */
  finishOnly: boolean;
  /**
   * Every disk given that holds the seed holds it marked complete: the
   * seed is done. Those disks, with their manifests.
   */
  complete?: Array<{ dir: string; m: SeedManifest }>;
}

/** The manifest on a target, or undefined when it has none. */
async function manifestOn(dir: string): Promise<SeedManifest | undefined> {
  const file = join(dir, SEED_MANIFEST);
  let text: string;
  try {
    text = await readManifestText(file);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new FerryError('SEED_DISK_UNUSABLE', `seed disk ${dir} cannot be used: ${file}: ${(err as Error).message}`, { disk: dir });
  }
  return parseSeedManifest(file, text);
}

/** The --disk folders this process made (they did not exist). */
const madeHere = new Set<string>();

/** Refuses one folder given twice (under two names too): its manifest would be written for two disks. */
async function checkDistinct(dirs: string[]): Promise<void> {
  const seen = new Map<string, string>();
  for (const d of dirs) {
    // Made first: two names of one folder that does not exist yet are one folder too.
    if (await mkdirp(d).catch(() => undefined)) madeHere.add(d);
    const st = await stat(d).catch(() => null);
    if (!st) continue;
    const key = `${st.dev}:${st.ino}`;
    const other = seen.get(key);
    if (other !== undefined) throw new UsageError(`--disk ${d} and --disk ${other} are the same folder; give each seed disk once`);
    seen.set(key, d);
  }
}

export interface TargetsProgress {
  disk: number;
  disks: number;
  written: number;
  kept: number;
}

export class SeedTargets {
  private readonly held = new Map<string, Held>();
  /** Objects this run stored or found intact: what the seed is made of now. */
  private readonly touched = new Set<string>();
  /** Per disk: bytes it holds counted in whole blocks, its objects, and this run's objects in the order written. */
  private readonly used: number[];
  private readonly count: number[];
  private readonly order: string[][];
  /** Per disk: the number a complete manifest already gave it (kept when the marking is done again). */
  private readonly numbered: Array<number | undefined>;
  /** Per disk: whether it holds a manifest of this seed. */
  private readonly listed: boolean[];
  /** Marking only: how many disks the record lists, and which of them were not given. */
  private of = 0;
  missing: number[] = [];
  /** Targets that could not take even one object. */
  private readonly tooSmall: string[] = [];
  private cur = 0;
  private writes: Promise<void> = Promise.resolve();
  private pendingWrites = 0;
  private waiters: Array<() => void> = [];
  private failure: unknown;
  private sinceCheckpoint = 0;
  private readonly madeDirs = new Set<string>();
  /** Per disk: the folders this run made there for objects (each with the first of them made), to undo on a disk left empty. */
  private readonly madeFolders: Array<Array<{ dir: string; first: string }>>;
  stats = { written: 0, kept: 0, sealedBytes: 0 };
  private manifestWrites: Promise<void> = Promise.resolve();
  private unhook: (() => void) | undefined;
  private unlocks: Array<() => void> = [];
  /** The --disk folders that did not exist, made by this run (a disk not mounted where it was named?). */
  madeDisks: string[] = [];

  private constructor(
    private readonly dirs: string[],
    private readonly capacity: number[],
    readonly id: SeedIdentity,
    private readonly pool: SealPool,
    private readonly onProgress?: (p: TargetsProgress) => void,
  ) {
    this.used = dirs.map(() => 0);
    this.count = dirs.map(() => 0);
    this.order = dirs.map(() => []);
    this.numbered = dirs.map(() => undefined);
    this.listed = dirs.map(() => false);
    this.madeFolders = dirs.map(() => []);
  }

  /**
   * Looks at what the targets hold of this vault and item. Each run that
   * builds the data gets a new seed id (keeping the disk image's identity,
   * so what an earlier run stored is kept when it verifies); only the run
   * that sealed a point record ever marks disks complete with it, so one
   * seed id stands for one record.
   */
  static async findResumable(dirs: string[], vaultId: string, machine: string, item: string): Promise<Resumable | undefined> {
    await checkDistinct(dirs);
    const found: Array<{ dir: string; m: SeedManifest }> = [];
    for (const d of dirs) {
      const m = await manifestOn(d);
      if (!m) continue;
      if (m.vaultId !== vaultId || m.machine !== machine || m.item !== item) {
        throw new FerryError('SEED_DISK_IN_USE', `${d} already holds seed ${m.seedId} of ${m.machine}/${m.item} for vault ${m.vaultId}; use an empty disk or folder`, { disk: d });
      }
      found.push({ dir: d, m });
    }
    if (found.length === 0) return undefined;
    const sealed = found.filter((f) => f.m.point);
    const ids = [...new Set(sealed.map((f) => f.m.seedId))];
    if (ids.length > 1) {
      const a = sealed.find((f) => f.m.seedId === ids[0])!;
      const b = sealed.find((f) => f.m.seedId === ids[1])!;
      throw new FerryError('SEED_DISK_IN_USE', `${a.dir} and ${b.dir} hold two different runs (seeds ${ids[0]} and ${ids[1]}) of ${machine}/${item}; give the disks of one of them`, { disk: b.dir });
    }
    if (ids.length === 1) {
      const mine = found.filter((f) => f.m.seedId === ids[0]);
      if (mine.every((f) => f.m.complete)) {
        const others = found.filter((f) => f.m.seedId !== ids[0]);
        if (others.length > 0) {
          throw new FerryError(
            'SEED_DISK_IN_USE',
            `${mine.map((f) => f.dir).join(', ')} ${mine.length === 1 ? 'holds a disk' : 'hold disks'} of seed ${ids[0]}, marked complete, and ${others.map((f) => f.dir).join(', ')} another run of the same seed; leave the first out to go on with that run, or import seed ${ids[0]} with all its disks`,
            { disk: mine[0].dir },
          );
        }
        return { manifest: mine[0].m, finishOnly: false, complete: mine };
      }
      return { manifest: sealed[0].m, finishOnly: true };
    }
    const images = [...new Set(found.map((f) => f.m.params.diskId))];
    if (images.length > 1) {
      const b = found.find((f) => f.m.params.diskId === images[1])!;
      throw new FerryError('SEED_DISK_IN_USE', `${found[0].dir} and ${b.dir} hold parts of two different unfinished seeds of ${machine}/${item}; give the disks of one, or empty ones`, { disk: b.dir });
    }
    return { manifest: found[0].m, finishOnly: false };
  }

  static async open(
    dirs: string[],
    opts: {
      capacity?: number;
      id: SeedIdentity;
      pool: SealPool;
      onProgress?: (p: TargetsProgress) => void;
      /** Only marking: the disks of the seed as its sealed record lists them. */
      finishing?: SeedDiskSummary[];
    },
  ): Promise<SeedTargets> {
    await checkDistinct(dirs);
    const capacity: number[] = [];
    const made: string[] = [];
    for (const d of dirs) {
      try {
        if ((await mkdirp(d)) || madeHere.has(d)) made.push(d);
        const st = await stat(d);
        if (!st.isDirectory()) throw new Error('not a directory');
        await access(d, fsc.W_OK); // a read-only mount: EROFS now, not at the first object
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const why =
          code === 'ENOTDIR' ? 'a part of its path is a file, not a folder; give a folder (it is made if missing)'
          : code === 'EROFS' ? 'its file system is read-only; mount it read-write'
          : code === 'EACCES' || code === 'EPERM' ? 'permission denied; run ferry as a user who may write there'
          : `${(err as Error).message}; check that it is mounted and writable`;
        throw new FerryError('SEED_DISK_UNUSABLE', `seed disk ${d} cannot be used: ${why}`, { disk: d });
      }
      const fs = await statfs(d);
      capacity.push(opts.capacity ?? fs.bavail * fs.bsize);
    }
    // One seed writes a disk at a time: a second run onto it (another
    // terminal) is LOCKED, not told its seed is written when the first one's is.
    const unlocks: Array<() => void> = [];
    try {
      for (const d of dirs) unlocks.push(lockFile(join(d, SEED_LOCK), `ferry seed of ${opts.id.machine}/${opts.id.item}`));
    } catch (err) {
      for (const u of unlocks) u();
      throw err;
    }
    const t = new SeedTargets(dirs, capacity, opts.id, opts.pool, opts.onProgress);
    t.unlocks = unlocks;
    t.madeDisks = made;
    // What earlier runs left: kept if it verifies when reused (building);
    // the disks the record lists, by number (marking).
    const taken = new Set<number>();
    for (let i = 0; i < dirs.length; i++) {
      let m: SeedManifest | undefined;
      try {
        m = await manifestOn(dirs[i]);
      } catch {
        continue;
      }
      if (!m || m.vaultId !== opts.id.vaultId || m.params.diskId !== opts.id.params.diskId) continue;
      if (opts.finishing) {
        if (m.seedId !== opts.id.seedId) continue;
        const s = summarizeObjects(m.objects);
        const k = opts.finishing.findIndex((d, at) => !taken.has(at) && d.objects === s.objects && d.list === s.list);
        if (k < 0) continue; // none of the record's disks: not ours to touch
        taken.add(k);
        t.numbered[i] = k + 1;
      }
      t.listed[i] = true;
      for (const o of m.objects) {
        t.held.set(o.name, { ...o, disk: i });
        t.used[i] += objectCost(o.size);
        t.count[i]++;
        if (opts.finishing) t.touched.add(o.name);
      }
      if (opts.capacity === undefined) t.capacity[i] += t.used[i];
    }
    if (opts.finishing) {
      t.of = opts.finishing.length;
      t.missing = opts.finishing.map((_, k) => k + 1).filter((n) => !taken.has(n - 1));
      return t;
    }
    // Objects a killed run wrote after a disk's last checkpoint (or on a disk
    // that had no manifest yet) are listed nowhere: they would only take
    // room. Its temporaries too. Only this seed's own folder is looked at.
    for (let i = 0; i < dirs.length; i++) {
      const freed = await t.dropUnlisted(i);
      if (opts.capacity === undefined) t.capacity[i] += freed;
    }
    // The identity goes down first, so a seed killed before its first checkpoint still resumes.
    await t.writeManifest(0, false);
    t.unhook = onInterrupt(() => t.checkpoint());
    return t;
  }

  /**
   * Deletes the files in this seed's own folder on target `i` that no
   * manifest lists: objects (`head`, `blocks/<n>`) and temporaries, nothing
   * else, never through a symbolic link. Returns the bytes freed.
   */
  private async dropUnlisted(i: number): Promise<number> {
    const prefix = `disks/${this.id.params.diskId}`;
    const base = join(this.dirs[i], this.id.prefix + prefix);
    const top = await lstat(base).catch(() => null);
    if (!top?.isDirectory()) return 0;
    let freed = 0;
    const visit = async (rel: string) => {
      for (const e of await readdir(join(base, rel), { withFileTypes: true }).catch(() => [])) {
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (rel === '' && e.name === 'blocks' && e.isDirectory()) {
          await visit(r);
          continue;
        }
        if (!e.isFile()) continue; // links, folders and the rest are not ours
        const ours = e.name.startsWith('.ferry-tmp-') || (rel === '' ? e.name === 'head' : /^[0-9]{1,10}$/.test(e.name));
        if (!ours) continue;
        const h = this.held.get(`${prefix}/${r}`);
        if (h && h.disk === i && !e.name.startsWith('.')) continue;
        const path = join(base, r);
        const st = await lstat(path).catch(() => null);
        if (!st?.isFile()) continue;
        await rm(path, { force: true });
        freed += objectCost(st.size);
      }
    };
    await visit('');
    return freed;
  }

  private path(disk: number, name: string): string {
    return join(this.dirs[disk], this.id.prefix + name);
  }

  /** Seals and stores `data` as object `name`; returns once it is queued (bounded). */
  async put(name: string, data: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    this.touched.add(name);
    const old = this.held.get(name);
    if (old && (await this.holds(old, data))) {
      // A resumed seed keeps what an earlier run stored.
      this.stats.kept++;
      freeBuffer(data); // handed over like a block that is sealed (see below)
      return;
    }
    await this.pool.ready();
    // Blocks between here and the disk (each holds 2 MiB until sealed, then
    // its sealed bytes until written): one per core keeps the cores busy (the
    // walk makes blocks slower than two cores seal them); two per core held
    // 4 more blocks, 6 MiB of a seed's peak, for no time saved.
    while (this.pendingWrites >= Math.max(1, this.pool.size)) await new Promise<void>((r) => this.waiters.push(r));
    // The block moves to the seal worker without a copy: SpoolStorage never
    // touches a block it sent, and a revisit (get) waits for the writes.
    const sealing = this.pool.sealHashed(name, data, undefined, true);
    sealing.catch(() => {});
    this.pendingWrites++;
    this.writes = this.writes.then(async () => {
      try {
        if (this.failure) return;
        const { sealed, sealedSha256 } = await sealing;
        await this.store(name, sealed, sealedSha256);
        // On the disk now: its memory goes back at once, not at the next garbage collection.
        freeBuffer(sealed);
      } catch (err) {
        this.failure ??= err;
      } finally {
        this.pendingWrites--;
        this.waiters.shift()?.();
      }
    });
  }

  /**
   * Whether the object an earlier run stored as `h` is intact and opens to
   * `data`: its bytes match the manifest's SHA-256, and unsealed (which
   * authenticates them under their name) they equal the block just rebuilt.
   * Paid only by a resumed seed, once per object it finds.
   */
  private async holds(h: Held, data: Buffer): Promise<boolean> {
    try {
      const b = await readFile(this.path(h.disk, h.name));
      if (b.length !== h.size || createHash('sha256').update(b).digest('hex') !== h.sha256) return false;
      const plain = await this.pool.unseal(h.name, b);
      try {
        return plain.equals(data);
      } finally {
        freeBuffer(plain);
      }
    } catch {
      return false;
    }
  }

  private async store(name: string, sealed: Buffer, sha256: string): Promise<void> {
    await this.forget(name, true);
    for (;;) {
      if (this.cur >= this.dirs.length) {
        const need = Math.ceil((objectCost(sealed.length) + manifestRoom(1)) / 1048576);
        if (this.tooSmall.length === this.dirs.length) {
          throw new FerryError(
            'SEED_DISK_TOO_SMALL',
            `the seed disk${this.dirs.length === 1 ? ' is' : 's are'} too small (${this.dirs.join(', ')}): a disk needs ${need} MiB at least; give larger ones (or a larger --disk-capacity) and run the same command again`,
            { disks: this.dirs, needMiB: need },
          );
        }
        const small = this.tooSmall.length
          ? ` (${this.tooSmall.join(', ')} ${this.tooSmall.length === 1 ? 'is' : 'are'} too small for even one object: a disk needs ${Math.ceil((objectCost(sealed.length) + manifestRoom(1)) / 1048576)} MiB at least)`
          : '';
        throw new FerryError(
          'SEED_NEED_DISK',
          `the seed disks are full (${this.dirs.join(', ')})${small}; add another --disk DIR and run the same command again: it resumes where it stopped`,
          { disks: this.dirs },
        );
      }
      if (this.used[this.cur] + objectCost(sealed.length) + manifestRoom(this.count[this.cur] + 1) > this.capacity[this.cur]) {
        if (this.count[this.cur] === 0 && !this.tooSmall.includes(this.dirs[this.cur])) this.tooSmall.push(this.dirs[this.cur]);
        await this.closeDisk(this.cur);
        continue;
      }
      const ok = await this.writeObject(this.cur, name, sealed);
      if (ok) break;
      // The disk filled up before its nominal capacity: close it and go on.
      this.capacity[this.cur] = this.used[this.cur];
    }
    this.held.set(name, { name, size: sealed.length, sha256, disk: this.cur });
    this.used[this.cur] += objectCost(sealed.length);
    this.count[this.cur]++;
    this.order[this.cur].push(name);
    this.stats.written++;
    this.stats.sealedBytes += sealed.length;
    this.onProgress?.({ disk: this.cur + 1, disks: this.dirs.length, written: this.stats.written, kept: this.stats.kept });
    this.sinceCheckpoint += sealed.length;
    if (this.sinceCheckpoint >= CHECKPOINT_BYTES) {
      this.sinceCheckpoint = 0;
      // Beside the next objects, not before them: its sync of the whole
      // disk took this chain (and so the seed) half a second or more. A
      // disk too full for it is closed by the next object that does not fit.
      this.writeManifest(this.cur, false).catch((err) => {
        if (!isFull(err)) this.failure ??= err;
      });
    }
  }

  /** Drops `name` from the disk that holds it (and its file when `remove`). */
  private async forget(name: string, remove: boolean): Promise<void> {
    const old = this.held.get(name);
    if (!old) return;
    this.held.delete(name);
    this.used[old.disk] -= objectCost(old.size);
    this.count[old.disk]--;
    const o = this.order[old.disk];
    const at = o.lastIndexOf(name);
    if (at >= 0) o.splice(at, 1);
    if (remove) await rm(this.path(old.disk, name), { force: true });
  }

  /**
   * Writes the manifest of a disk that is full and moves on to the next.
   * The disk must keep room to write its manifest once more beside the old
   * one, with the point record (when it is marked complete): when the file
   * system kept more for itself than counted, objects move to the next disk
   * (the last written first) until there is.
   */
  private async closeDisk(disk: number): Promise<void> {
    const moved: Array<{ name: string; sealed: Buffer; sha256: string }> = [];
    for (;;) {
      try {
        await this.writeManifest(disk, false);
        if (await this.roomLeft(disk)) break;
      } catch (err) {
        if (!isFull(err)) throw err;
      }
      let name = this.order[disk].at(-1);
      if (name === undefined) for (const h of this.held.values()) if (h.disk === disk) name = h.name;
      if (name === undefined) {
        throw new FerryError('SEED_DISK_FULL', `seed disk ${this.dirs[disk]} is too full to hold even its manifest; free some space there (or use another disk) and run the same command again`, { disk: this.dirs[disk] });
      }
      const h = this.held.get(name)!;
      const sealed = await readFile(this.path(disk, name));
      moved.push({ name, sealed, sha256: h.sha256 });
      await this.forget(name, true);
      this.capacity[disk] = this.used[disk];
    }
    this.cur = Math.max(this.cur, disk + 1);
    for (const m of moved.reverse()) {
      await this.store(m.name, m.sealed, m.sha256);
      this.stats.written--; // moved, not new
      this.stats.sealedBytes -= m.sealed.length;
    }
  }

  /** Whether the disk's file system can take its manifest once more, and a point record, beside the one there. */
  private async roomLeft(disk: number): Promise<boolean> {
    const [fs, st] = await Promise.all([statfs(this.dirs[disk]), stat(join(this.dirs[disk], SEED_MANIFEST))]);
    // (file systems without inodes, FAT and the like, say 0 files)
    return fs.bavail * fs.bsize >= roundUp(st.size) + 3 * BLOCK && (fs.files === 0 || fs.ffree >= 2);
  }

  /** Writes one object atomically; false when the disk is full. */
  private async writeObject(disk: number, name: string, data: Buffer): Promise<boolean> {
    const final = this.path(disk, name);
    const dir = dirname(final);
    const tmp = join(dir, `.ferry-tmp-${randomBytes(6).toString('hex')}`);
    try {
      if (!this.madeDirs.has(dir)) {
        const first = await mkdirp(dir);
        if (first) this.madeFolders[disk].push({ dir, first });
        this.madeDirs.add(dir);
      }
      // one trip to libuv's pool with the addon: this chain writes one object after another
      if (await putFileNative(tmp, final, data)) return true;
      const fh = await fsOpen(tmp, 'w');
      try {
        await writeAll(fh, data);
        await startWriteback(fh); // on its way to the disk before the manifest's sync
      } finally {
        await fh.close();
      }
      await rename(tmp, final);
      return true;
    } catch (err) {
      await rm(tmp, { force: true });
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT') return false;
      if (code === 'ENOENT' || code === 'EIO' || code === 'ENODEV') {
        throw new FerryError('SEED_DISK_LOST', `seed disk ${this.dirs[disk]} went away (${code}); reconnect it and run the same command again: it resumes`, { disk: this.dirs[disk] });
      }
      throw err;
    }
  }

  /** Plaintext of an object written earlier in this run (for blocks revisited before finish). */
  async get(name: string): Promise<Buffer> {
    await this.flush();
    const h = this.held.get(name);
    if (!h) throw new FerryError('OBJECT_MISSING', `object ${name} is not on the seed disks`);
    return this.pool.unseal(name, await readFile(this.path(h.disk, name)));
  }

  /** Waits until every queued object is on disk; rethrows the first failure. */
  async flush(): Promise<void> {
    await this.writes;
    if (this.failure) throw this.failure;
  }

  private manifestFor(disk: number, complete: boolean, of: number | null, point?: string): SeedManifest {
    const objects: SeedObject[] = [];
    for (const h of this.held.values()) if (h.disk === disk) objects.push({ name: h.name, size: h.size, sha256: h.sha256 });
    objects.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return { format: SEED_FORMAT, version: 1, ...this.id, disk: disk + 1, of, complete, objects, ...(point ? { point } : {}) };
  }

  /** One manifest write at a time: an interrupt's checkpoint may come while another is under way, and both use the same temporary. */
  private writeManifest(disk: number, complete: boolean, of: number | null = null, point?: string, n = disk + 1): Promise<void> {
    // what is stored as of now: objects stored while it waits for another write, or for the sync, are in the next one
    const m = this.manifestFor(disk, complete, of, point);
    m.disk = n;
    const next = this.manifestWrites.then(() => this.writeManifestNow(disk, m));
    this.manifestWrites = next.catch(() => {});
    return next;
  }

  /**
   * Lists what is on the disks so far in their manifests (still
   * incomplete), so that a run stopped by Ctrl-C keeps it: the next run
   * finds it there. (A kill -9 keeps what the last checkpoint listed.)
   */
  private async checkpoint(): Promise<void> {
    for (let i = 0; i < this.dirs.length; i++) if (this.count[i] > 0 || this.listed[i]) await this.writeManifest(i, false);
  }

  /**
   * The seed failed (a disk too small, the disks full, a source error):
   * each disk that holds nothing of it (no object, its folder empty) is put
   * back as it was: its manifest (which alone would make it a disk "in use"
   * for any other seed), the folders this run made there, and the --disk
   * folder itself when this run made it. A disk that holds objects keeps its
   * manifest: the same command run again resumes from it.
   */
  async abandon(): Promise<void> {
    if (this.of > 0 || interrupted()) return; // marking only, or a Ctrl-C's checkpoint under way
    await this.writes.catch(() => {});
    await this.manifestWrites.catch(() => {});
    for (let i = 0; i < this.dirs.length; i++) {
      if (this.count[i] > 0) continue;
      const dir = this.dirs[i];
      try {
        const m = await manifestOn(dir).catch(() => undefined);
        const ours = m && m.vaultId === this.id.vaultId && m.params.diskId === this.id.params.diskId && m.objects.length === 0 && !m.point && !m.complete;
        if (m && !ours) continue;
        if (await holdsFiles(join(dir, this.id.prefix + `disks/${this.id.params.diskId}`))) continue;
        await rm(join(dir, `.${SEED_MANIFEST}.tmp`), { force: true });
        if (m) await rm(join(dir, SEED_MANIFEST), { force: true });
        this.listed[i] = false;
        // the deepest first; a folder something else went into stays
        for (const { dir: made, first } of this.madeFolders[i].reverse()) {
          for (let d = made; ; d = dirname(d)) {
            if (!(await rmdir(d).then(() => true, () => false)) || d === first || dirname(d) === d) break;
          }
        }
        if (this.madeDisks.includes(dir)) {
          this.unlocks[i]?.();
          await rmdir(dir).catch(() => {});
        }
      } catch {
        /* left as it is: the failure being reported is the one that counts */
      }
    }
  }

  /** Stops listing on interrupt, and lets go of the disks (when the run ends, whichever way). */
  release(): void {
    this.unhook?.();
    this.unhook = undefined;
    for (const u of this.unlocks.splice(0)) u();
  }

  private async writeManifestNow(disk: number, m: SeedManifest): Promise<void> {
    const dir = this.dirs[disk];
    // Objects before the manifest that lists them reach the disk.
    await run('sync', ['-f', dir]).catch(() => {});
    const tmp = join(dir, `.${SEED_MANIFEST}.tmp`);
    try {
      await writeFileSynced(tmp, JSON.stringify(m, null, 1));
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    await rename(tmp, join(dir, SEED_MANIFEST));
    this.listed[disk] = true;
  }

  /**
   * The disks that hold the seed, in the order they are numbered: while
   * building, the targets that hold objects in target order; while only
   * marking, the numbers the sealed record gave.
   */
  private layout(): number[] {
    if (this.of > 0) return this.dirs.map((_, i) => i).filter((i) => this.numbered[i] !== undefined).sort((a, b) => this.numbered[a]! - this.numbered[b]!);
    return this.dirs.map((_, i) => i).filter((i) => this.count[i] > 0);
  }

  /**
   * Ends the data: drops what an earlier run stored and this one did not
   * need (a source that shrank), lists every object on its disk's manifest
   * (still incomplete: a run stopped after this finds them all again), and
   * returns what each disk holds, in disk order, for the sealed point record.
   */
  async seal(): Promise<SeedDiskSummary[]> {
    await this.flush();
    for (const name of [...this.held.keys()]) if (!this.touched.has(name)) await this.forget(name, true);
    for (let i = 0; i < this.dirs.length; i++) {
      if (this.count[i] === 0 && !this.listed[i]) continue;
      try {
        await this.writeManifest(i, false);
      } catch (err) {
        if (!isFull(err)) throw err;
        throw new FerryError('SEED_DISK_FULL', `seed disk ${this.dirs[i]} has no room left for its manifest; free some space there and run the same command again: it resumes`, { disk: this.dirs[i] });
      }
    }
    return this.layout().map((i) => summarizeObjects(this.manifestFor(i, false, null).objects));
  }

  /**
   * Marks the seed complete, disk by disk in disk order, each manifest
   * carrying the sealed point record; returns the disks marked, in order.
   * Once one disk carries the record, a later run only finishes the
   * marking (see findResumable).
   */
  async finish(point: string): Promise<string[]> {
    // from here on the manifests carry the record: an interrupt lists nothing more
    this.unhook?.();
    this.unhook = undefined;
    await this.flush();
    const disks = this.layout();
    const of = this.of || disks.length;
    // The record goes onto every disk before any is marked: from then on any
    // one of them tells a later run that only the marking is left.
    const number = (at: number, i: number) => (this.of ? this.numbered[i]! : at + 1);
    if (!this.of) for (const [at, i] of disks.entries()) await this.writeFinal(i, number(at, i), false, of, point);
    for (const [at, i] of disks.entries()) {
      await this.writeFinal(i, number(at, i), true, of, point);
      if (at + 1 === KILL_AFTER_MARKS) process.kill(process.pid, 'SIGKILL');
    }
    // A target left without objects keeps no manifest of this seed.
    for (let i = 0; i < this.dirs.length; i++) {
      if (disks.includes(i) || this.count[i] > 0) continue;
      const m = await manifestOn(this.dirs[i]).catch(() => undefined);
      if (m && m.params.diskId === this.id.params.diskId && (m.objects.length === 0 || !this.of)) await rm(join(this.dirs[i], SEED_MANIFEST), { force: true });
    }
    return disks.map((i) => this.dirs[i]);
  }

  /** The manifest of a disk of the finished seed, numbered by the record or by target order. */
  private async writeFinal(i: number, n: number, complete: boolean, of: number, point: string): Promise<void> {
    try {
      await this.writeManifest(i, complete, complete ? of : null, point, n);
    } catch (err) {
      if (!isFull(err)) throw err;
      throw new FerryError('SEED_DISK_FULL', `seed disk ${this.dirs[i]} has no room left for its final manifest; free some space there and run the same command again: it only finishes the marking`, { disk: this.dirs[i] });
    }
  }

  get heldObjects(): number {
    return this.held.size;
  }

  get diskPaths(): string[] {
    return this.dirs;
  }
}

/** Whether folder `dir` (not followed if a link) holds anything but empty folders. */
async function holdsFiles(dir: string): Promise<boolean> {
  const st = await lstat(dir).catch(() => null);
  if (!st) return false;
  if (!st.isDirectory()) return true;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (!e.isDirectory() || (await holdsFiles(join(dir, e.name)))) return true;
  }
  return false;
}

async function writeFileSynced(path: string, text: string): Promise<void> {
  const fh = await fsOpen(path, 'w');
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
}
