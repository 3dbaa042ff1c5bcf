// The seed disks as an object sink: sealed objects go straight onto the
// target folders (no staging copy), filling one folder, then the next. Each
// folder keeps a FERRY-SEED.json listing what it holds; a resumed seed keeps
// every object whose plaintext is unchanged and whose bytes verify.
import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdir, open as fsOpen, readdir, readFile, rename, rm, statfs, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { FerryError } from '../format/errors.js';
import { freeBuffer, type SealPool } from '../format/seal/pool.js';
import { SEED_FORMAT, SEED_MANIFEST, type SeedDiskSummary, type SeedManifest, type SeedObject, parseSeedManifest, summarizeObjects } from '../format/seedmanifest.js';

const run = promisify(execFile);
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

export interface SeedIdentity {
  seedId: string;
  vaultId: string;
  machine: string;
  item: string;
  kind: string;
  prefix: string;
  params: SeedManifest['params'];
}

interface Held extends SeedObject {
  disk: number; // index into dirs
}

/** What findResumable found on the targets. */
export interface Resumable {
  manifest: SeedManifest;
  /**
   * Some disks already say the seed is complete and others do not: a run
   * stopped while it was marking them. The data is final (a complete disk may
   * be imported already); only the marking is done again.
   */
  finishOnly: boolean;
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
  private cur = 0;
  private writes: Promise<void> = Promise.resolve();
  private pendingWrites = 0;
  private waiters: Array<() => void> = [];
  private failure: unknown;
  private sinceCheckpoint = 0;
  private readonly madeDirs = new Set<string>();
  stats = { written: 0, kept: 0, sealedBytes: 0 };

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
  }

  /** Looks for an unfinished seed of this vault and item on the targets. */
  static async findResumable(dirs: string[], vaultId: string, machine: string, item: string): Promise<Resumable | undefined> {
    const found: Array<{ dir: string; m: SeedManifest }> = [];
    for (const d of dirs) {
      let text: string;
      try {
        text = await readFile(join(d, SEED_MANIFEST), 'utf8');
      } catch {
        continue;
      }
      const m = parseSeedManifest(join(d, SEED_MANIFEST), text);
      if (m.vaultId !== vaultId || m.machine !== machine || m.item !== item) {
        throw new FerryError('SEED_DISK_IN_USE', `${d} already holds seed ${m.seedId} of ${m.machine}/${m.item} for vault ${m.vaultId}; use an empty disk or folder`, { disk: d });
      }
      if (found.length > 0 && m.seedId !== found[0].m.seedId) {
        throw new FerryError('SEED_DISK_IN_USE', `${d} holds seed ${m.seedId} and ${found[0].dir} holds seed ${found[0].m.seedId} of the same item; give the disks of one seed, or empty ones`, { disk: d });
      }
      found.push({ dir: d, m });
    }
    if (found.length === 0) return undefined;
    const complete = found.filter((f) => f.m.complete);
    if (complete.length === 0) return { manifest: found[0].m, finishOnly: false };
    const m = complete[0].m;
    // Only complete disks given (all of them, or some): nothing to do. A
    // complete disk beside an incomplete one: the marking was cut short.
    if (complete.length === found.length) {
      throw new FerryError('SEED_COMPLETE', `${complete[0].dir} holds a complete seed ${m.seedId} of ${machine}/${item}; import it with ferry import, or use empty disks for a new seed`, { disk: complete[0].dir });
    }
    return { manifest: m, finishOnly: true };
  }

  static async open(
    dirs: string[],
    opts: { capacity?: number; id: SeedIdentity; pool: SealPool; onProgress?: (p: TargetsProgress) => void; finishing?: boolean },
  ): Promise<SeedTargets> {
    const capacity: number[] = [];
    for (const d of dirs) {
      try {
        await mkdir(d, { recursive: true });
        const st = await stat(d);
        if (!st.isDirectory()) throw new Error('not a directory');
      } catch (err) {
        throw new FerryError('SEED_DISK_UNUSABLE', `seed disk ${d} cannot be used: ${(err as Error).message}; check that it is mounted and writable`, { disk: d });
      }
      const fs = await statfs(d);
      capacity.push(opts.capacity ?? fs.bavail * fs.bsize);
    }
    const t = new SeedTargets(dirs, capacity, opts.id, opts.pool, opts.onProgress);
    // What earlier runs of this seed left: kept if it verifies when reused.
    for (let i = 0; i < dirs.length; i++) {
      let m: SeedManifest | undefined;
      try {
        m = parseSeedManifest(join(dirs[i], SEED_MANIFEST), await readFile(join(dirs[i], SEED_MANIFEST), 'utf8'));
      } catch {
        continue;
      }
      if (m.seedId !== opts.id.seedId) continue;
      if (m.complete) t.numbered[i] = m.disk;
      t.listed[i] = true;
      for (const o of m.objects) {
        t.held.set(o.name, { ...o, disk: i });
        t.used[i] += objectCost(o.size);
        t.count[i]++;
        if (opts.finishing) t.touched.add(o.name);
      }
      if (opts.capacity === undefined) t.capacity[i] += t.used[i];
    }
    // Objects a killed run wrote after a disk's last checkpoint (or on a disk
    // that had no manifest yet) are listed nowhere: they would only take
    // room. Its temporaries too. Only this seed's own folder is looked at.
    if (!opts.finishing) {
      for (let i = 0; i < dirs.length; i++) {
        const freed = await t.dropUnlisted(i);
        if (opts.capacity === undefined) t.capacity[i] += freed;
      }
    }
    // The identity goes down first, so a seed killed before its first checkpoint still resumes.
    if (!opts.finishing) await t.writeManifest(0, false);
    return t;
  }

  /** Deletes what lies under this seed's disk folder on target `i` and is not listed; returns the bytes freed. */
  private async dropUnlisted(i: number): Promise<number> {
    const base = join(this.dirs[i], this.id.prefix + `disks/${this.id.params.diskId}`);
    let names: string[];
    try {
      names = (await readdir(base, { recursive: true })) as string[];
    } catch {
      return 0;
    }
    let freed = 0;
    for (const rel of names) {
      const h = this.held.get(`disks/${this.id.params.diskId}/${rel}`);
      if (h && h.disk === i) continue;
      const path = join(base, rel);
      const st = await stat(path).catch(() => null);
      if (!st?.isFile()) continue;
      await rm(path, { force: true });
      freed += objectCost(st.size);
    }
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
    // its sealed bytes until written): two per worker keep every worker busy.
    while (this.pendingWrites >= 2 * Math.max(1, this.pool.size)) await new Promise<void>((r) => this.waiters.push(r));
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
        throw new FerryError(
          'SEED_NEED_DISK',
          `the seed disks are full (${this.dirs.join(', ')}); add another --disk DIR and run the same command again: it resumes where it stopped`,
          { disks: this.dirs },
        );
      }
      if (this.used[this.cur] + objectCost(sealed.length) + manifestRoom(this.count[this.cur] + 1) > this.capacity[this.cur]) {
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
      await this.writeManifest(this.cur, false);
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
   * When even the manifest does not fit (the file system kept more for
   * itself than counted), the objects written last move to the next disk
   * until it does.
   */
  private async closeDisk(disk: number): Promise<void> {
    const moved: Array<{ name: string; sealed: Buffer; sha256: string }> = [];
    for (;;) {
      try {
        await this.writeManifest(disk, false);
        break;
      } catch (err) {
        if (!isFull(err)) throw err;
      }
      const name = this.order[disk].at(-1);
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

  /** Writes one object atomically; false when the disk is full. */
  private async writeObject(disk: number, name: string, data: Buffer): Promise<boolean> {
    const final = this.path(disk, name);
    const dir = dirname(final);
    if (!this.madeDirs.has(dir)) {
      await mkdir(dir, { recursive: true });
      this.madeDirs.add(dir);
    }
    const tmp = join(dir, `.ferry-tmp-${randomBytes(6).toString('hex')}`);
    try {
      const fh = await fsOpen(tmp, 'w');
      try {
        let done = 0;
        while (done < data.length) done += (await fh.write(data, done, data.length - done)).bytesWritten;
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

  private async writeManifest(disk: number, complete: boolean, of: number | null = null, point?: string): Promise<void> {
    const dir = this.dirs[disk];
    // Objects before the manifest that lists them reach the disk.
    await run('sync', ['-f', dir]).catch(() => {});
    const tmp = join(dir, `.${SEED_MANIFEST}.tmp`);
    try {
      await writeFileSynced(tmp, JSON.stringify(this.manifestFor(disk, complete, of, point), null, 1));
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    await rename(tmp, join(dir, SEED_MANIFEST));
    this.listed[disk] = true;
  }

  /**
   * The disks that hold the seed, in the order they are numbered: a number a
   * complete manifest already gave is kept (that disk may be imported
   * already), the others follow in target order.
   */
  private layout(): number[] {
    const used = this.dirs.map((_, i) => i).filter((i) => this.count[i] > 0);
    const taken = new Set<number>();
    const number = new Map<number, number>();
    for (const i of used) {
      const n = this.numbered[i];
      if (n !== undefined && n <= used.length && !taken.has(n)) {
        number.set(i, n);
        taken.add(n);
      }
    }
    let next = 1;
    for (const i of used) {
      if (number.has(i)) continue;
      while (taken.has(next)) next++;
      number.set(i, next);
      taken.add(next);
    }
    return used.sort((a, b) => number.get(a)! - number.get(b)!);
  }

  /**
   * Ends the data: drops what an earlier run stored and this one did not
   * need (a source that shrank), and returns what each disk holds, in disk
   * order, for the sealed point record.
   */
  async seal(): Promise<SeedDiskSummary[]> {
    await this.flush();
    for (const name of [...this.held.keys()]) if (!this.touched.has(name)) await this.forget(name, true);
    // Every object listed before any disk says complete: a run stopped while
    // marking the disks finds them all again (see findResumable).
    for (let i = 0; i < this.dirs.length; i++) if (this.count[i] > 0 || this.listed[i]) await this.writeManifest(i, false);
    return this.layout().map((i) => summarizeObjects(this.manifestFor(i, false, null).objects));
  }

  /** Marks the seed complete on every disk that holds part of it; returns those disks, in order. */
  async finish(point: string): Promise<string[]> {
    await this.flush();
    const usedDisks = this.layout();
    const of = usedDisks.length;
    // An unused target gets no manifest.
    for (const [n, i] of usedDisks.entries()) {
      const m = this.manifestFor(i, true, of, point);
      m.disk = n + 1;
      await run('sync', ['-f', this.dirs[i]]).catch(() => {});
      const tmp = join(this.dirs[i], `.${SEED_MANIFEST}.tmp`);
      try {
        await writeFileSynced(tmp, JSON.stringify(m, null, 1));
      } catch (err) {
        await rm(tmp, { force: true });
        if (!isFull(err)) throw err;
        throw new FerryError('SEED_DISK_FULL', `seed disk ${this.dirs[i]} has no room left for its final manifest; free some space there and run the same command again: it only finishes the marking`, { disk: this.dirs[i] });
      }
      await rename(tmp, join(this.dirs[i], SEED_MANIFEST));
    }
    for (let i = 0; i < this.dirs.length; i++) if (!usedDisks.includes(i)) await rm(join(this.dirs[i], SEED_MANIFEST), { force: true });
    return usedDisks.map((i) => this.dirs[i]);
  }

  get heldObjects(): number {
    return this.held.size;
  }

  get diskPaths(): string[] {
    return this.dirs;
  }
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
