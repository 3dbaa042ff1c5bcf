// The seed disks as an object sink: sealed objects go straight onto the
// target folders (no staging copy), filling one folder, then the next. Each
// folder keeps a FERRY-SEED.json listing what it holds; a resumed seed keeps
// every object whose plaintext is unchanged and whose bytes verify.
import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdir, open as fsOpen, readFile, rename, rm, statfs, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { FerryError } from '../format/errors.js';
import { freeBuffer, type SealPool } from '../format/seal/pool.js';
import { SEED_FORMAT, SEED_MANIFEST, type SeedManifest, type SeedObject, parseSeedManifest } from '../format/seedmanifest.js';

const run = promisify(execFile);
/** Room a disk's manifest takes: a little for the header, a line per object. */
const manifestRoom = (objects: number) => 8192 + 320 * (objects + 1);
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

export interface TargetsProgress {
  disk: number;
  disks: number;
  written: number;
  kept: number;
}

export class SeedTargets {
  private readonly held = new Map<string, Held>();
  private readonly used: number[];
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
  }

  /** Looks for an unfinished seed of this vault and item on the targets. */
  static async findResumable(dirs: string[], vaultId: string, machine: string, item: string): Promise<SeedManifest | undefined> {
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
      if (m.complete) {
        throw new FerryError('SEED_COMPLETE', `${d} holds a complete seed ${m.seedId} of ${machine}/${item}; import it with ferry import, or use empty disks for a new seed`, { disk: d });
      }
      return m;
    }
    return undefined;
  }

  static async open(
    dirs: string[],
    opts: { capacity?: number; id: SeedIdentity; pool: SealPool; onProgress?: (p: TargetsProgress) => void },
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
      for (const o of m.objects) {
        t.held.set(o.name, { ...o, disk: i });
        t.used[i] += o.size;
      }
      if (opts.capacity === undefined) t.capacity[i] += t.used[i];
    }
    // The identity goes down first, so a seed killed before its first checkpoint still resumes.
    await t.writeManifest(0, false);
    return t;
  }

  private path(disk: number, name: string): string {
    return join(this.dirs[disk], this.id.prefix + name);
  }

  /** Seals and stores `data` as object `name`; returns once it is queued (bounded). */
  async put(name: string, data: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
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
    const old = this.held.get(name);
    if (old) {
      await rm(this.path(old.disk, name), { force: true });
      this.used[old.disk] -= old.size;
      this.held.delete(name);
    }
    for (;;) {
      if (this.cur >= this.dirs.length) {
        throw new FerryError(
          'SEED_NEED_DISK',
          `the seed disks are full (${this.dirs.join(', ')}); add another --disk DIR and run the same command again: it resumes where it stopped`,
          { disks: this.dirs },
        );
      }
      if (this.used[this.cur] + sealed.length + manifestRoom(this.objectsOn(this.cur)) > this.capacity[this.cur]) {
        await this.writeManifest(this.cur, false);
        this.cur++;
        continue;
      }
      const ok = await this.writeObject(this.cur, name, sealed);
      if (ok) break;
      // The disk filled up before its nominal capacity: close it and go on.
      this.capacity[this.cur] = this.used[this.cur];
    }
    this.held.set(name, { name, size: sealed.length, sha256, disk: this.cur });
    this.used[this.cur] += sealed.length;
    this.stats.written++;
    this.stats.sealedBytes += sealed.length;
    this.onProgress?.({ disk: this.cur + 1, disks: this.dirs.length, written: this.stats.written, kept: this.stats.kept });
    this.sinceCheckpoint += sealed.length;
    if (this.sinceCheckpoint >= CHECKPOINT_BYTES) {
      this.sinceCheckpoint = 0;
      await this.writeManifest(this.cur, false);
    }
  }

  private objectsOn(disk: number): number {
    let n = 0;
    for (const h of this.held.values()) if (h.disk === disk) n++;
    return n;
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
    await writeFileSynced(tmp, JSON.stringify(this.manifestFor(disk, complete, of, point), null, 1));
    await rename(tmp, join(dir, SEED_MANIFEST));
  }

  /** Marks the seed complete on every disk that holds part of it; returns those disks, in order. */
  async finish(point: string): Promise<string[]> {
    await this.flush();
    const usedDisks = this.dirs.map((_, i) => i).filter((i) => [...this.held.values()].some((h) => h.disk === i));
    const of = usedDisks.length;
    // Disks are numbered in the order they filled; an unused target gets no manifest.
    for (const [n, i] of usedDisks.entries()) {
      const m = this.manifestFor(i, true, of, point);
      m.disk = n + 1;
      await run('sync', ['-f', this.dirs[i]]).catch(() => {});
      const tmp = join(this.dirs[i], `.${SEED_MANIFEST}.tmp`);
      await writeFileSynced(tmp, JSON.stringify(m, null, 1));
      await rename(tmp, join(this.dirs[i], SEED_MANIFEST));
    }
    for (let i = 0; i < this.dirs.length; i++) if (!usedDisks.includes(i)) await rm(join(this.dirs[i], SEED_MANIFEST), { force: true });
    return usedDisks.map((i) => this.dirs[i]);
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
