// Importing seed disks into a vault: in any order, in any number of sittings.
// Every object is checked twice before it is copied: its SHA-256 against the
// disk's manifest, then its AEAD tag under the vault key with its name (so a
// swapped or foreign object fails). A disk counts as imported only when all
// its objects are in; the point is registered only when every disk is.
import { constants as fsc } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { FerryError } from '../format/errors.js';
import { SEED_MANIFEST, type SeedDiskSummary, type SeedManifest, parseSeedManifest, readManifestText, summarizeObjects } from '../format/seedmanifest.js';
import { itemName, pointName, listPoints, putJson, readItem, type PointManifest } from '../vault/registry.js';
import type { VaultWriter } from '../vault/vault.js';
import { openSeedRecord, type SeedPointRecord } from './seed.js';

export interface ImportProgress {
  /** The disk being imported: its folder, and its place in its seed. */
  disk: string;
  diskNo: number;
  of: number;
  /** Objects of this disk done, and in all. */
  objects: number;
  totalObjects: number;
  /** Bytes done and to do in this run, over every disk it imports. */
  bytes: number;
  totalBytes: number;
}

export interface ImportResult {
  imported: Array<{ dir: string; seedId: string; disk: number; of: number; objects: number; bytes: number; already: boolean; /** Given twice: the folder this run imported the disk from. */ copyOf?: string }>;
  registered: Array<{ machine: string; item: string; seq: number; seedId: string }>;
  /** Seeds still waiting for disks: which numbers. */
  waiting: Array<{ seedId: string; machine: string; item: string; missing: number[]; of: number }>;
  /** Disks of another run of the same seed imported before, whose place this import took. */
  superseded: Array<{ seedId: string; by: string }>;
  /** Disks that could not be imported (a damaged or missing object): the others went on. */
  failed: Array<{ dir: string; seedId: string; disk: number; of: number; error: FerryError; /** Another copy of the same disk, given too, went in. */ copyImported?: boolean }>;
}

const diskMarker = (seedId: string, n: number) => `seeds/${seedId}/disks/${n}`;
const registeredMarker = (seedId: string) => `seeds/${seedId}/registered`;
/**
 * Which seed a disk image (its objects' names) belongs to in this vault. Two
 * runs of one seed (a run stopped, then run again without some of its disks)
 * share the image's object names with other bytes; only one may be imported,
 * or a point could read blocks of the other.
 */
const imageOwner = (diskId: string) => `seeds/images/${diskId}`;

async function readManifest(dir: string): Promise<SeedManifest> {
  const file = join(dir, SEED_MANIFEST);
  let text: string;
  try {
    text = await readManifestText(file);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    const st = await stat(dir).catch(() => null);
    const missing = code === 'ENOENT' && !st;
    const why = missing
      ? `${dir} does not exist: is the seed disk connected and mounted?`
      : st && !st.isDirectory()
        ? `${dir} is a file, not a seed disk's folder: give the folder that holds ${SEED_MANIFEST}`
        : code === 'ENOENT' || code === 'ENOTDIR'
          ? `${dir} holds no ${SEED_MANIFEST}: not a ferry seed disk (or the wrong folder)`
          : code === 'EACCES' || code === 'EPERM'
            ? `${file} cannot be read (permission denied): run ferry as a user who may read the seed disk`
            : `${file} cannot be read (${code ?? (err as Error).message}): check the seed disk (is it still connected?)`;
    throw new FerryError('SEED_NO_MANIFEST', why, { disk: dir });
  }
  return parseSeedManifest(file, text);
}

export async function importSeeds(
  vault: VaultWriter,
  dirs: string[],
  opts: {
    onProgress?: (p: ImportProgress) => void;
    /** Each disk once it is in (its marker written): what a run that stops later has done. */
    onImported?: (d: ImportResult['imported'][number]) => void;
  } = {},
): Promise<ImportResult> {
  // Every disk is looked at before anything is copied: a foreign, unfinished
  // or edited one stops the import.
  const manifests: Array<{ dir: string; m: SeedManifest }> = [];
  const records = new Map<string, SeedPointRecord>();
  for (const dir of dirs) {
    const m = await readManifest(dir);
    if (m.vaultId !== vault.id) {
      throw new FerryError('SEED_FOREIGN', `${dir} holds a seed for vault ${m.vaultId}, not for this vault (${vault.id}); import it into its own vault`, { disk: dir });
    }
    if (!m.complete || m.of === null) {
      // a leftover of a run that was stopped, when a later run of the same seed is in the vault already
      const later = (await listPoints(vault, { machine: m.machine, item: m.item }, () => {})).find((p) => p.seedId !== m.seedId && p.chain.includes(m.params.diskId));
      if (later) {
        throw new FerryError('SEED_SUPERSEDED', `${dir} holds disk ${m.disk} of an unfinished run (${m.seedId}) of a seed whose later run ${later.seedId} is registered in this vault already (point ${later.seq}): this disk is not needed; it can be erased`, { disk: dir });
      }
      throw new FerryError('SEED_UNFINISHED', `${dir} holds disk ${m.disk} of an unfinished seed ${m.seedId}; run the same ferry seed command again to finish it`, { disk: dir });
    }
    const rec = await openRecord(vault, dir, m);
    checkAgainstRecord(dir, m, rec);
    records.set(m.seedId, rec);
    manifests.push({ dir, m });
  }
  // Two runs of one seed given together: which is wanted is the user's call.
  for (const a of manifests) {
    const b = manifests.find((x) => x.m.params.diskId === a.m.params.diskId && x.m.seedId !== a.m.seedId);
    if (b) {
      throw new FerryError('SEED_TWO_RUNS', `${a.dir} (seed ${a.m.seedId}) and ${b.dir} (seed ${b.m.seedId}) hold two runs of the same seed of ${a.m.machine}/${a.m.item}; import the disks of one run`, { disk: b.dir });
    }
  }
  // What would stop the point's registration stops the import before any object is copied: else they are copied for nothing.
  const checked = new Set<string>();
  for (const { dir, m } of manifests) {
    if (checked.has(m.seedId)) continue;
    checked.add(m.seedId);
    if (await vault.exists(registeredMarker(m.seedId))) continue;
    const rec = records.get(m.seedId)!;
    const { machine, item } = rec.point;
    const existing = await readItem(vault, machine, item);
    if (existing && existing.kind !== rec.item.kind) {
      throw new FerryError(
        'ITEM_KIND_MISMATCH',
        `${dir} holds a ${rec.item.kind} seed of item ${machine}/${item}, but this vault holds ${machine}/${item} as kind ${existing.kind}; nothing was imported: seed the source again with another --item name (or import it into another vault)`,
        { disk: dir, machine, item, kind: rec.item.kind, vaultKind: existing.kind },
      );
    }
  }
  const result: ImportResult = { imported: [], registered: [], waiting: [], superseded: [], failed: [] };
  // A registered seed is never touched again: its objects belong to a visible point.
  // A disk given twice (or with a copy of it) goes in once: the first copy
  // that imports; a damaged one is followed by the next copy.
  const inBefore: boolean[] = [];
  for (const { m } of manifests) inBefore.push((await vault.exists(diskMarker(m.seedId, m.disk))) || (await vault.exists(registeredMarker(m.seedId))));
  const run = { bytes: 0, totalBytes: 0 };
  const counted = new Set<string>();
  manifests.forEach(({ m }, i) => {
    const key = `${m.seedId}:${m.disk}`;
    if (!inBefore[i] && !counted.has(key)) for (const o of m.objects) run.totalBytes += o.size;
    counted.add(key);
  });
  const inNow = new Map<string, string>();
  for (const [i, { dir, m }] of manifests.entries()) {
    const key = `${m.seedId}:${m.disk}`;
    if (inBefore[i] || inNow.has(key)) {
      result.imported.push({ dir, seedId: m.seedId, disk: m.disk, of: m.of!, objects: m.objects.length, bytes: 0, already: true, ...(inNow.has(key) ? { copyOf: inNow.get(key) } : {}) });
      continue;
    }
    await claimImage(vault, dir, m, result);
    // Group commit: the disk's objects are fsynced together before its marker says it is imported.
    vault.beginBatch();
    let r: { bytes: number };
    try {
      r = await importDisk(vault, dir, m, run, opts.onProgress);
    } catch (err) {
      await vault.commitBatch().catch(() => {}); // ends the batch; the first error is the one to report
      // A damaged disk: the others go in all the same, and each is reported.
      if (err instanceof FerryError && err.data.disk === dir) {
        result.failed.push({ dir, seedId: m.seedId, disk: m.disk, of: m.of!, error: err });
        continue;
      }
      throw err;
    }
    await vault.commitBatch();
    // (with each object's size: `ferry check` finds one cut short later without reading it)
    const sizes = Object.fromEntries(m.objects.map((o) => [o.name, o.size]));
    await putJson(vault, diskMarker(m.seedId, m.disk), { dir, objects: m.objects.length, sizes, at: new Date().toISOString() });
    inNow.set(key, dir);
    const done = { dir, seedId: m.seedId, disk: m.disk, of: m.of!, objects: m.objects.length, bytes: r.bytes, already: false };
    result.imported.push(done);
    opts.onImported?.(done);
  }
  for (const f of result.failed) if (inNow.has(`${f.seedId}:${f.disk}`)) f.copyImported = true;
  // Register every seed that is now whole.
  const seeds = new Map<string, SeedManifest>();
  for (const { m } of manifests) seeds.set(m.seedId, m);
  for (const m of seeds.values()) {
    const missing: number[] = [];
    for (let n = 1; n <= m.of!; n++) if (!(await vault.exists(diskMarker(m.seedId, n)))) missing.push(n);
    if (missing.length > 0) {
      result.waiting.push({ seedId: m.seedId, machine: m.machine, item: m.item, missing, of: m.of! });
      continue;
    }
    const rec = records.get(m.seedId)!;
    if (await vault.exists(registeredMarker(m.seedId))) {
      // registered: unless its point was lost since (then it is registered again, from the disks' record)
      const { machine, item } = rec.point;
      if ((await listPoints(vault, { machine, item }, () => {})).some((p) => p.seedId === m.seedId)) continue;
    }
    const reg = await register(vault, m, rec);
    result.registered.push(reg);
  }
  return result;
}

async function importDisk(
  vault: VaultWriter,
  dir: string,
  m: SeedManifest,
  run: { bytes: number; totalBytes: number },
  onProgress?: (p: ImportProgress) => void,
): Promise<{ bytes: number }> {
  let bytes = 0;
  let done = 0;
  const window: Promise<void>[] = [];
  // Objects in flight: each is a few trips to libuv's pool (read, verify, write), mostly waiting; 8 on 2 cores
  // took a cold import of the bench's 978 objects from 1.99 s to 1.83-1.86 s (16: 1.75-1.93 s, 20 MiB more).
  const depth = Math.max(4, vault.pool.size * 4);
  const one = async (o: SeedManifest['objects'][number]) => {
    const file = join(dir, m.prefix + o.name);
    const damaged = (why = 'does not match its checksum') =>
      new FerryError('SEED_OBJECT_CORRUPT', `object ${o.name} on seed disk ${dir} (disk ${m.disk} of ${m.of}) ${why}; the disk is damaged and was not imported: if this disk is a copy, copy it again from the original; if not, seed again onto empty disks`, { disk: dir, object: o.name });
    const data = await readObjectFile(
      file,
      o.size,
      damaged,
      () => new FerryError('SEED_OBJECT_MISSING', `object ${o.name} is missing from seed disk ${dir} (disk ${m.disk} of ${m.of}); the disk was not imported: if this disk is a copy, copy it again from the original; if not, seed again onto empty disks`, { disk: dir, object: o.name }),
      () => new FerryError('SEED_NO_ACCESS', `object ${o.name} on seed disk ${dir} (disk ${m.disk} of ${m.of}) cannot be read (permission denied): run ferry as a user who may read the seed disk; the disk was not imported`, { disk: dir, object: o.name }),
    );
    // Hash and authenticate on the seal pool, off this thread; no need to decompress.
    let sha: string;
    try {
      sha = await vault.pool.verify(o.name, data);
    } catch (err) {
      // bytes that no longer match the disk's own list: damaged on the way (the usual case)
      if (createHash('sha256').update(data).digest('hex') !== o.sha256) throw damaged();
      throw new FerryError('SEED_OBJECT_CORRUPT', `object ${o.name} on seed disk ${dir} matches the disk's checksum but fails authentication (${(err as Error).message}): the disk was written for another vault or altered with its list; nothing was registered`, { disk: dir, object: o.name });
    }
    if (sha !== o.sha256) throw damaged();
    if (await sameObject(vault, o.name, data)) {
      // Left by an import that was stopped: durable with this disk's batch.
      vault.keepInBatch(o.name);
    } else {
      // Already sealed with this vault's key: stored as it is. A different
      // copy under the name can only be a damaged or earlier one of this
      // unregistered seed (disk ids are random): the sealed record vouches
      // for this one.
      vault.lock.assertHeld();
      await vault.backend.put(o.name, data);
    }
    bytes += data.length;
    run.bytes += data.length;
    done++;
    onProgress?.({ disk: dir, diskNo: m.disk, of: m.of!, objects: done, totalObjects: m.objects.length, bytes: run.bytes, totalBytes: run.totalBytes });
  };
  let failure: unknown;
  for (const o of m.objects) {
    if (failure) break;
    const p = one(o).catch((err) => {
      failure ??= err;
    });
    window.push(p);
    if (window.length >= depth) await window.shift();
  }
  await Promise.all(window);
  if (failure) throw failure;
  return { bytes };
}

async function sameObject(vault: VaultWriter, name: string, data: Buffer): Promise<boolean> {
  try {
    const st = await vault.stat(name);
    return st.size === data.length && (await vault.backend.get(name)).equals(data);
  } catch {
    return false;
  }
}

/**
 * Makes this seed the one whose objects the vault holds for its disk image.
 * A registered other run keeps it (this disk is not needed); an unregistered
 * one gives way, and its disks count as not imported any more, since this
 * import may replace their objects.
 */
async function claimImage(vault: VaultWriter, dir: string, m: SeedManifest, result: ImportResult): Promise<void> {
  const name = imageOwner(m.params.diskId);
  const owner = (await vault.exists(name)) ? (JSON.parse((await vault.getSealed(name)).toString('utf8')) as { seedId: string }) : undefined;
  if (owner?.seedId === m.seedId) return;
  // A point of another run reads these object names (its marker may be
  // missing: a stop between the point and the marker; or the vault may
  // predate image owners): never replace them.
  const point = (await listPoints(vault, { machine: m.machine, item: m.item })).find((p) => p.seedId !== m.seedId && p.chain.includes(m.params.diskId));
  if (point || (owner && (await vault.exists(registeredMarker(owner.seedId))))) {
    throw new FerryError(
      'SEED_SUPERSEDED',
      `${dir} holds disk ${m.disk} of seed ${m.seedId}, another run of seed ${point?.seedId ?? owner!.seedId}, which is registered in this vault already${point ? ` (point ${point.seq})` : ''}; this disk is not needed`,
      { disk: dir },
    );
  }
  if (owner) {
    for await (const n of vault.list(`seeds/${owner.seedId}/disks/`)) await vault.delete(n);
    result.superseded.push({ seedId: owner.seedId, by: m.seedId });
  }
  await putJson(vault, name, { seedId: m.seedId });
}

/** Opens the seed's sealed point record, carried by every complete disk. */
async function openRecord(vault: VaultWriter, dir: string, m: SeedManifest): Promise<SeedPointRecord> {
  if (!m.point) throw new FerryError('SEED_BAD_MANIFEST', `${dir}: the manifest of seed ${m.seedId} carries no point record; the disk is damaged`, { disk: dir });
  let rec: SeedPointRecord;
  try {
    rec = await openSeedRecord(vault.pool, m.seedId, m.point);
  } catch (err) {
    throw new FerryError('SEED_BAD_MANIFEST', `${dir}: the point record of seed ${m.seedId} does not open (${(err as Error).message}); the disk is damaged`, { disk: dir });
  }
  if (rec?.point?.seedId !== undefined && rec.point.seedId !== m.seedId) {
    throw new FerryError('SEED_BAD_MANIFEST', `${dir}: the point record names seed ${rec.point.seedId}, the manifest ${m.seedId}; the disk is damaged`, { disk: dir });
  }
  return rec;
}

/**
 * The plain manifest against what the sealed record says of the disk: its
 * number, the number of disks, and its list of objects. An edit (an object
 * left out, a disk renumbered) would register a point with data missing.
 */
function checkAgainstRecord(dir: string, m: SeedManifest, rec: SeedPointRecord): void {
  // what the manifest shows in the clear (and import's messages repeat) is what was sealed
  const p = rec.point;
  const shown: [string, unknown, unknown][] = [['machine', m.machine, p.machine], ['item', m.item, p.item], ['kind', m.kind, p.kind], ['time', m.params.time, p.time]];
  if (m.sources !== undefined) shown.push(['sources', JSON.stringify(m.sources), JSON.stringify(p.sources)]);
  const edited = shown.find(([, plain, sealed]) => plain !== sealed);
  if (edited) {
    const [what, plain, sealed] = edited;
    throw new FerryError(
      'SEED_BAD_MANIFEST',
      `${dir}: its ${SEED_MANIFEST} says ${what} ${String(plain)}, the seed's sealed record ${String(sealed)}; the disk cannot be trusted, nothing was imported from it`,
      { disk: dir },
    );
  }
  if (!rec.disks) return; // sealed before records said (then only the per-object checks hold)
  const why = (disks: SeedDiskSummary[], d: SeedDiskSummary | undefined, s: SeedDiskSummary): string => {
    if (disks.length !== m.of) return `the seed has ${disks.length} disks, the manifest says ${m.of}`;
    if (!d) return `there is no disk ${m.disk}`;
    // the objects of another disk of the seed: its number was changed
    const other = disks.findIndex((x) => x.objects === s.objects && x.list === s.list);
    return other >= 0 ? `it holds the objects of disk ${other + 1}, but says it is disk ${m.disk}` : 'its list of objects was changed';
  };
  const d = rec.disks[m.disk - 1];
  const s = summarizeObjects(m.objects);
  if (rec.disks.length !== m.of || !d || d.objects !== s.objects || d.list !== s.list) {
    throw new FerryError(
      'SEED_BAD_MANIFEST',
      `${dir}: its ${SEED_MANIFEST} does not match the seed's sealed record (${why(rec.disks, d, s)}); the disk cannot be trusted, nothing was imported from it`,
      { disk: dir },
    );
  }
}

/** Reads a seed object of `size` bytes: a regular file only (a fifo or device would block or never end). */
async function readObjectFile(path: string, size: number, damaged: (why?: string) => Error, missing: () => Error, denied: () => Error): Promise<Buffer> {
  let fh;
  try {
    fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw missing();
    if (code === 'ELOOP') throw damaged('is a symbolic link, not an object');
    // not damage: the disk is sound, this user may not read it
    if (code === 'EACCES' || code === 'EPERM') throw denied();
    throw damaged(`cannot be read (${code ?? (err as Error).message})`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw damaged('is not a regular file');
    if (st.size !== size) throw damaged(`holds ${st.size} bytes, not ${size}`);
    const data = Buffer.allocUnsafe(size);
    let done = 0;
    while (done < size) {
      const { bytesRead } = await fh.read(data, done, size - done, done);
      if (bytesRead === 0) throw damaged('was cut short while read');
      done += bytesRead;
    }
    return data;
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw damaged(`cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  } finally {
    await fh.close();
  }
}

async function register(vault: VaultWriter, m: SeedManifest, rec: SeedPointRecord): Promise<{ machine: string; item: string; seq: number; seedId: string }> {
  const { machine, item } = rec.point;
  // Every disk of the point must really be in the vault before it becomes visible.
  for (const id of rec.point.chain) {
    if (!(await vault.exists(`disks/${id}/head`))) throw new FerryError('SEED_INCOMPLETE', `seed ${m.seedId}: disk ${id} has no head object in the vault`);
  }
  const existing = await readItem(vault, machine, item);
  if (existing && existing.kind !== rec.item.kind) {
    throw new FerryError('ITEM_KIND_MISMATCH', `item ${machine}/${item} exists as kind ${existing.kind}; this seed is ${rec.item.kind}, so it cannot be registered: seed the source again under another --item name`);
  }
  if (!existing) await putJson(vault, itemName(machine, item), rec.item);
  const points = await listPoints(vault, { machine, item });
  // A run stopped between the point and its marker: the point is there already.
  const had = points.find((p) => p.seedId === m.seedId);
  if (had) {
    await putJson(vault, registeredMarker(m.seedId), { seq: had.seq });
    return { machine, item, seq: had.seq, seedId: m.seedId };
  }
  // Still ours, and nobody about to break it: a point written under a lost lock could collide.
  await vault.lock.verify();
  vault.lock.assertHeld();
  // Created, never replaced: a point of the same number written meanwhile is kept, and this one takes the next.
  let seq = points.reduce((n, p) => Math.max(n, p.seq), 0) + 1;
  for (;;) {
    const point: PointManifest = { ...rec.point, seq };
    try {
      await vault.putSealed(pointName(machine, item, seq), Buffer.from(JSON.stringify(point)), { exclusive: true });
      break;
    } catch (err) {
      if (!(err instanceof FerryError && err.code === 'OBJECT_EXISTS')) throw err;
      seq++;
    }
  }
  await putJson(vault, registeredMarker(m.seedId), { seq });
  return { machine, item, seq, seedId: m.seedId };
}
