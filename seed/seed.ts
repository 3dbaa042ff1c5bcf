// Seeding: the first full backup of an item, built as a VHD whose blocks are
// sealed and written straight onto the seed disks. The pipeline: the source
// (walker or device reader) feeds the volume writer, which writes into a
// VhdDisk over a SpoolStorage; finished blocks go to the seal pool and then
// to the seed disks, with bounded queues in between.
import { randomBytes } from 'node:crypto';
import { lstat, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import type { Disk } from '../format/disk.js';
import { FerryError, UsageError, formatSize } from '../format/errors.js';
import { emptyImage } from '../format/vhd/create.js';
import { MAX_VHD_SIZE } from '../format/vhd/layout.js';
import { VhdDisk } from '../format/vhd/vhd.js';
import { writeVolume, type SourceEntry, type EntryWarning } from '../format/volume/index.js';
import { SpoolStorage } from '../vault/diskstore.js';
import type { SeedDiskSummary, SeedManifest } from '../format/seedmanifest.js';
import type { ItemDef, ItemKind, PointManifest } from '../vault/registry.js';
import { checkName, readItem } from '../vault/registry.js';
import type { VaultReader } from '../vault/vault.js';
import { SeedTargets, type SeedIdentity, type TargetsProgress } from './targets.js';
import { sourceEntries, volumeChunks } from './sources.js';
import { volumeSize as sizeOfVolume, writableMounts } from '../source/volume.js';
import { scanTotals } from './scan.js';
import { printable } from '../format/printable.js';
import { checkDiskPlace } from './diskplace.js';

export interface SeedOptions {
  vault: VaultReader;
  machine?: string;
  item: string;
  kind: ItemKind;
  sources: string[];
  excludes?: string[];
  oneFileSystem?: boolean;
  disks: string[];
  diskCapacity?: number;
  databox?: string;
  onProgress?: (p: SeedProgress) => void;
  onWarning?: (w: { path?: string; message: string }) => void;
  /** What the walk left out by design (a /proc mount's contents): no warning. */
  onNote?: (w: { path?: string; message: string }) => void;
}

export interface SeedProgress {
  phase: 'data' | 'finish';
  files: number;
  bytes: number;
  totalBytes?: number;
  totalFiles?: number;
  /** Whether the totals are complete (else still being counted). */
  totalsFinal?: boolean;
  disk: number;
  disks: number;
}

export interface SeedResult {
  seedId: string;
  machine: string;
  item: string;
  kind: ItemKind;
  /** The disks that hold the seed, in order (targets left empty are not listed). */
  disks: string[];
  diskCount: number;
  objects: number;
  kept: number;
  sealedBytes: number;
  files: number;
  bytes: number;
  warnings: number;
  resumed: boolean;
  /** The disks already held this seed, complete: nothing was written. */
  already?: boolean;
  /** Only marking: the disks of the seed that were not given (those may be marked already), and how many it has. */
  missingDisks?: number[];
  ofDisks?: number;
  /** --disk folders that did not exist and were made. */
  madeDisks?: string[];
}

/** The object name of a seed's point record (sealed, carried in FERRY-SEED.json). */
export const seedPointName = (seedId: string) => `seeds/${seedId}/point`;

/** Opens the sealed point record a complete (or marking) manifest carries; throws what unsealing throws. */
export async function openSeedRecord(pool: VaultReader['pool'], seedId: string, point: string): Promise<SeedPointRecord> {
  return JSON.parse((await pool.unseal(seedPointName(seedId), Buffer.from(point, 'base64'))).toString('utf8')) as SeedPointRecord;
}

export interface SeedPointRecord {
  item: ItemDef;
  point: Omit<PointManifest, 'seq'>;
  /**
   * What each disk holds (disk 1 first): import checks every disk's manifest
   * against it, so an edited manifest (objects left out, another disk
   * number or count) is caught. Records sealed before 2026-12-06 lack it.
   */
  disks?: SeedDiskSummary[];
}

/**
 * Blocks kept in memory besides the pinned first one: the volume writer
 * writes sequentially, so a block is done once the writer is in the next
 * one; one more absorbs a write that ends just inside a block.
 */
const SPOOL_KEEP = 2;

/** The spool of the seed disk (the empty image is copied in; nothing else keeps it: its block table is 4 MiB). */
function newSpool(params: SeedIdentity['params'], targets: SeedTargets): SpoolStorage {
  const img = emptyImage({ size: params.size, uniqueId: Buffer.from(params.diskId, 'hex'), date: new Date(params.time) });
  return new SpoolStorage(`seed disk ${params.diskId}`, params.diskId, img, targets, SPOOL_KEEP);
}

/** Files: at least one SOURCE must be there; one that is not, beside others, is a warning of the walk. */
async function checkSources(sources: string[]): Promise<void> {
  const missing: string[] = [];
  for (const src of sources) {
    try {
      await lstat(src);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      missing.push(`${printable(Buffer.from(src))} (${code === 'ENOENT' ? 'no such file or folder' : (err as Error).message})`);
    }
  }
  if (missing.length === sources.length) {
    throw new FerryError('SOURCE_MISSING', `nothing to back up: ${missing.join(', ')}; check the path${missing.length > 1 ? 's' : ''} and run again`, { sources });
  }
}

/** A volume SOURCE's length in bytes, refused when a VHD cannot hold it. */
async function volumeSourceBytes(src: string): Promise<number> {
  const n = await sizeOfVolume(src);
  if (n === 0) throw new FerryError('SOURCE_EMPTY', `${src} is empty (0 bytes): there is no volume to back up`, { path: src });
  if (Math.ceil(n / 512) * 512 > MAX_VHD_SIZE) {
    throw new FerryError('SOURCE_TOO_LARGE', `${src} holds ${formatSize(n)}: a VHD holds at most 2040 GiB, so it cannot be seeded as one volume`, { path: src });
  }
  return n;
}

export async function seed(o: SeedOptions): Promise<SeedResult> {
  const machine = o.machine ?? hostname();
  checkName('machine', machine);
  checkName('item', o.item);
  if (o.disks.length === 0) throw new UsageError('seed needs at least one --disk DIR to write to');
  if (o.kind === 'system-state' && o.sources.length > 0) throw new UsageError(`a system-state seed takes no SOURCE (got ${o.sources.join(' ')}): it collects what docs/system-state.md lists`);
  if (o.kind !== 'system-state' && o.sources.length === 0) throw new UsageError(`a ${o.kind} seed needs a SOURCE (${o.kind === 'volume' ? 'a block device or image file' : 'paths to back up'})`);
  if (o.kind === 'volume' && o.sources.length !== 1) throw new UsageError('a volume seed takes exactly one SOURCE (a block device or image file)');
  if (o.databox !== undefined && !/^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$/.test(o.databox)) {
    throw new UsageError(`--databox ${JSON.stringify(o.databox)} is not a valid Azure container name (3-63 lowercase letters, digits and single hyphens)`);
  }
  const vault = o.vault;
  const prefix = o.databox ? `BlockBlob/${o.databox}/` : '';
  // (through symbolic links and bind mounts too; another vault as well)
  for (const d of o.disks) await checkDiskPlace(d, vault.location);
  // What would only fail at import, after the disks have travelled, fails here, before they are written.
  const existing = await readItem(vault, machine, o.item);
  if (existing && existing.kind !== o.kind) {
    throw new FerryError('ITEM_KIND_MISMATCH', `the vault holds item ${machine}/${o.item} as kind ${existing.kind}, not ${o.kind}: seed it with --kind ${existing.kind}, or give this one another --item name`, { machine, item: o.item });
  }
  if (o.kind === 'files') await checkSources(o.sources);
  const volumeBytes = o.kind === 'volume' ? await volumeSourceBytes(o.sources[0]) : undefined;

  // the disk is whole sectors; a raw restore gives back the volume's own length
  const size = volumeBytes !== undefined ? Math.ceil(volumeBytes / 512) * 512 : MAX_VHD_SIZE;
  // as given (a trailing slash means something), made absolute
  const sources = o.sources.map((src) => resolve(src) + (src.endsWith('/') && src.length > 1 ? '/' : ''));
  /** A seed on the disks is this command's own (to resume, finish or find complete) only with the same kind, size and sources. */
  const checkSame = (m: SeedManifest, state: string) => {
    if (m.kind !== o.kind || (m.kind === 'volume' && m.params.size !== size)) {
      throw new FerryError('SEED_DISK_IN_USE', `the disks hold ${state} ${m.kind} seed of ${machine}/${o.item}, not this ${o.kind} one; run that seed again, or use empty disks for this one`);
    }
    if (m.sources && m.sources.join('\0') !== sources.join('\0')) {
      throw new FerryError(
        'SEED_DISK_IN_USE',
        `the disks hold ${state} seed of ${machine}/${o.item} from ${m.sources.join(' ') || '(system state)'}, not ${sources.join(' ') || '(system state)'}: run that seed again, or use empty disks for this one`,
      );
    }
  };
  const resumable = await SeedTargets.findResumable(o.disks, vault.id, machine, o.item);
  // The same command run again after it finished: nothing to do, and said so (exit 0)
  if (resumable?.complete) return alreadyComplete(vault, machine, resumable.complete, (m) => checkSame(m, 'a complete'));
  if (resumable && resumable.manifest.prefix !== prefix) {
    const was = resumable.manifest.prefix ? `--databox ${resumable.manifest.prefix.split('/')[1]}` : 'no --databox';
    throw new UsageError(`the disks hold a seed of ${machine}/${o.item} written with ${was}; run it again the same way`);
  }
  if (resumable) checkSame(resumable.manifest, resumable.finishOnly ? 'a nearly complete' : 'an unfinished');
  if (resumable?.finishOnly) return finishMarking(o, vault, machine, resumable.manifest);
  const previous = resumable?.manifest;
  const params = previous?.params ?? {
    diskId: randomBytes(16).toString('hex'),
    volumeUuid: randomBytes(16).toString('hex'),
    time: new Date().toISOString(),
    size,
  };
  // A new seed id for every run that builds the data, the disk image's
  // identity kept: only the run that seals a point record marks disks with
  // it, so one seed id never stands for two records (see findResumable).
  const seedId = randomBytes(8).toString('hex');
  let targetsProgress: TargetsProgress = { disk: 1, disks: o.disks.length, written: 0, kept: 0 };
  let files = 0;
  let bytes = 0;
  // Files: count what there is beside the seed, for a total and an ETA.
  const scan = o.kind === 'files' && o.onProgress ? scanTotals(o.sources, o.excludes ?? [], o.oneFileSystem) : undefined;
  const report = (phase: SeedProgress['phase']) =>
    o.onProgress?.({
      phase,
      files,
      bytes,
      totalBytes: o.kind === 'volume' ? size : scan ? Math.max(scan.totals.bytes, bytes) : undefined,
      totalFiles: scan?.totals.files,
      totalsFinal: o.kind === 'volume' || !!scan?.totals.done,
      disk: targetsProgress.disk,
      disks: targetsProgress.disks,
    });
  const targets = await SeedTargets.open(o.disks, {
    capacity: o.diskCapacity,
    pool: vault.pool,
    id: { seedId, vaultId: vault.id, machine, item: o.item, kind: o.kind, prefix, params, sources },
    onProgress: (p) => {
      targetsProgress = p;
    },
  });

  try {
    const spool = newSpool(params, targets);
    spool.pin(0); // the volume's superblock is rewritten at the end
    const disk: Disk = await VhdDisk.fromStorage(spool, {});
    let warnings = 0;
    const warn = (w: { path?: string; message: string }) => {
      warnings++;
      o.onWarning?.(w);
    };
    let dataBytes = 0;
    const stats: Record<string, number> = {};
    if (o.kind === 'volume') {
      for (const at of await writableMounts(o.sources[0])) {
        warn({ path: o.sources[0], message: `${o.sources[0]} is mounted read-write at ${at}: blocks written while it is copied make an inconsistent image; seed from a snapshot (lvcreate --snapshot), or unmount it or remount it read-only first` });
      }
      for await (const chunk of volumeChunks(o.sources[0])) {
        await disk.write(chunk.offset, chunk.data);
        bytes = chunk.offset + chunk.data.length;
        dataBytes += chunk.data.length;
        report('data');
      }
      bytes = size;
      stats.allocatedBytes = dataBytes;
    } else {
      const nowNs = BigInt(Date.parse(params.time)) * 1_000_000n;
      // the seed disks and the vault are never part of what they hold (a disk folder inside the source)
      const skipDirs = new Set<string>();
      for (const d of [...o.disks, vault.location]) {
        const st = await stat(d, { bigint: true }).catch(() => null);
        if (st?.isDirectory()) skipDirs.add(`${st.dev}:${st.ino}`);
      }
      const entries: AsyncIterable<SourceEntry> = sourceEntries(o.kind, o.sources, {
        excludes: o.excludes ?? [],
        oneFileSystem: o.oneFileSystem ?? false,
        skipDirs,
        onWarning: warn,
        onNote: o.onNote,
      });
      const r = await writeVolume(disk, entries, {
        uuid: Buffer.from(params.volumeUuid, 'hex'),
        now: () => nowNs,
        meta: { kind: o.kind, machine, item: o.item, sources: JSON.stringify(sources) },
        onWarning: (w: EntryWarning) => warn({ path: w.path?.toString(), message: w.message }),
        onProgress: (p) => {
          files = p.files;
          bytes = p.bytes;
          report('data');
        },
      });
      files = r.entries; // the progress counts entries; the result (stats.files) counts files
      bytes = r.bytes;
      dataBytes = r.bytes;
      Object.assign(stats, { entries: r.entries, files: r.files, bytes: r.bytes, catalogBytes: r.catalogBytes, skipped: r.skipped });
    }
    report('finish');
    await spool.finish();
    const summaries = await targets.seal();

    // absolute, as the seed manifests hold them: a later `ferry backup --item` runs from any folder
    const itemDef: ItemDef = { machine, item: o.item, kind: o.kind, sources, excludes: o.excludes ?? [], created: params.time };
    const record: SeedPointRecord = {
      item: itemDef,
      point: {
        time: params.time,
        machine,
        item: o.item,
        kind: o.kind,
        source: 'seed',
        chain: [params.diskId],
        diskSize: params.size,
        size: dataBytes,
        ...(volumeBytes !== undefined && volumeBytes !== params.size ? { volumeBytes } : {}),
        stats,
        seedId,
        sources,
      },
      disks: summaries,
    };
    const sealedPoint = await vault.pool.seal(seedPointName(seedId), Buffer.from(JSON.stringify(record)));
    const used = await targets.finish(sealedPoint.toString('base64'));
    return {
      seedId,
      machine,
      item: o.item,
      kind: o.kind,
      disks: used,
      diskCount: used.length,
      objects: targets.stats.written + targets.stats.kept,
      kept: targets.stats.kept,
      sealedBytes: targets.stats.sealedBytes,
      files: stats.files ?? files,
      bytes,
      warnings,
      resumed: !!previous,
      ...(targets.madeDisks.length ? { madeDisks: targets.madeDisks } : {}),
    };
  } catch (err) {
    // a disk given up on with nothing of the seed on it is left as it was
    await targets.abandon();
    throw err;
  } finally {
    targets.release();
  }
}

/** The result of a seed whose disks, all given, already hold it complete: nothing is written. */
async function alreadyComplete(
  vault: VaultReader,
  machine: string,
  held: Array<{ dir: string; m: SeedManifest }>,
  checkSame: (m: SeedManifest) => void,
): Promise<SeedResult> {
  const m = held[0].m;
  if (!m.point || m.of === null || held.length !== m.of) {
    // not all its disks given: which ones are wanted is the user's call
    throw new FerryError('SEED_COMPLETE', `${held[0].dir} holds a complete seed ${m.seedId} of ${machine}/${m.item}; import it with ferry import, or use empty disks for a new seed`, { disk: held[0].dir });
  }
  checkSame(m);
  const disks = [...held].sort((a, b) => a.m.disk - b.m.disk);
  for (const h of disks) await checkObjectsThere(h.dir, h.m);
  const rec = await openSeedRecord(vault.pool, m.seedId, m.point);
  const objects = disks.reduce((n, h) => n + h.m.objects.length, 0);
  return {
    seedId: m.seedId, machine, item: m.item, kind: m.kind as ItemKind, disks: disks.map((h) => h.dir), diskCount: m.of,
    objects, kept: objects, sealedBytes: 0, files: rec.point.stats.files ?? 0, bytes: rec.point.size, warnings: 0, resumed: true, already: true,
  };
}

/**
 * A complete seed run again: each disk still holds its objects, at their
 * sizes (a stat each; import reads and verifies them). A disk that lost one
 * after the seed finished cannot be mended from here: its data was built
 * from the source as it was then.
 */
async function checkObjectsThere(dir: string, m: SeedManifest): Promise<void> {
  for (const o of m.objects) {
    const st = await lstat(join(dir, m.prefix + o.name)).catch((err: NodeJS.ErrnoException) => err);
    // not damage: the disk is sound, this user may not read it (as import says)
    if (st instanceof Error && (st.code === 'EACCES' || st.code === 'EPERM')) {
      throw new FerryError('SEED_NO_ACCESS', `object ${o.name} on seed disk ${dir} (disk ${m.disk} of ${m.of}) cannot be read (permission denied): run ferry as a user who may read the seed disk`, { disk: dir, object: o.name });
    }
    const why =
      st instanceof Error
        ? st.code === 'ENOENT' || st.code === 'ENOTDIR'
          ? 'is missing'
          : `cannot be read (${st.code ?? st.message})`
        : !st.isFile()
          ? 'is not a regular file'
          : st.size !== o.size
            ? `holds ${st.size} bytes, not ${o.size}`
            : null;
    if (!why) continue;
    throw new FerryError(
      st instanceof Error && why === 'is missing' ? 'SEED_OBJECT_MISSING' : 'SEED_OBJECT_CORRUPT',
      `seed ${m.seedId} is complete, but object ${o.name} on ${dir} (disk ${m.disk} of ${m.of}) ${why} since: if this disk is a copy, copy it again from the original; if not, seed again onto empty disks`,
      { disk: dir, object: o.name },
    );
  }
}

/**
 * A run stopped while it marked the disks complete: some say so, some not.
 * The data and the sealed point record are final; the marking is done again
 * with the record the complete disks carry.
 */
async function finishMarking(o: SeedOptions, vault: VaultReader, machine: string, m: SeedManifest): Promise<SeedResult> {
  let rec: SeedPointRecord;
  try {
    rec = await openSeedRecord(vault.pool, m.seedId, m.point ?? '');
  } catch (err) {
    throw new FerryError('SEED_BAD_MANIFEST', `seed ${m.seedId}: the point record on its complete disks does not open (${(err as Error).message}); use empty disks for a new seed`);
  }
  if (!rec.disks) throw new FerryError('SEED_COMPLETE', `seed ${m.seedId} was written by an older ferry and is marked complete on some disks; import those, or use empty disks for a new seed`);
  const targets = await SeedTargets.open(o.disks, {
    capacity: o.diskCapacity,
    pool: vault.pool,
    id: { seedId: m.seedId, vaultId: m.vaultId, machine: m.machine, item: m.item, kind: m.kind, prefix: m.prefix, params: m.params, sources: m.sources },
    finishing: rec.disks,
  });
  let used: string[];
  try {
    used = await targets.finish(m.point!);
  } finally {
    targets.release();
  }
  return {
    seedId: m.seedId,
    machine,
    item: m.item,
    kind: m.kind as ItemKind,
    disks: used,
    diskCount: used.length,
    objects: targets.heldObjects,
    kept: targets.heldObjects,
    sealedBytes: 0,
    files: rec.point.stats.files ?? 0,
    bytes: rec.point.size,
    warnings: 0,
    resumed: true,
    missingDisks: targets.missing,
    ofDisks: rec.disks.length,
  };
}
