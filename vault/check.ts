// `ferry check`: is everything the vault's points need there, and (with
// readData) does every object of it still read and authenticate? Problems
// name the object and stop nothing: the check goes on and lists them all.
// What no point needs (a disk stored by `vhd import`, the objects an
// interrupted write left, a seed not fully imported) is a note, not a problem.
import type { VaultReader } from './vault.js';
import { diskPrefix, eachBlock, headName, listStoredDisks, readStoredBlock, storedBlocks, type StoredBlock } from './diskstore.js';
import { vaultObjects } from './putter.js';
import { listPoints } from './registry.js';
import { counted } from '../format/errors.js';

export interface VaultProblem {
  code: string;
  /** The object the problem is in (or missing). */
  object: string;
  message: string;
}

export interface VaultCheck {
  points: number;
  items: number;
  disks: number;
  /** Block objects the disks refer to. */
  blocks: number;
  /** Whether every block was read and authenticated (else: only that it exists). */
  readData: boolean;
  /** Plaintext bytes read and authenticated. */
  bytesRead: number;
  problems: VaultProblem[];
  notes: string[];
}

export interface CheckOptions {
  readData?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export async function checkVault(vault: VaultReader, opts: CheckOptions = {}): Promise<VaultCheck> {
  const objects = vaultObjects(vault);
  const problems: VaultProblem[] = [];
  const notes: string[] = [];
  const all = new Set<string>();
  for await (const n of vault.list('')) all.add(n);

  // Items and points: each readable, each point's chain held by the vault.
  const itemNames = [...all].filter((n) => /^items\/[^/]+\/[^/]+\/item$/.test(n));
  for (const name of itemNames) {
    try {
      JSON.parse((await vault.getSealed(name)).toString('utf8'));
    } catch (err) {
      problems.push({ code: 'ITEM_DAMAGED', object: name, message: `item definition ${name} cannot be read: ${(err as Error).message}` });
    }
  }
  // An item whose definition is gone while points of it remain (seed and import read it for the item's kind).
  const pointsOf = new Map<string, number>();
  for (const n of all) {
    const m = /^(items\/[^/]+\/[^/]+)\/points\/\d{8}$/.exec(n);
    if (m) pointsOf.set(m[1], (pointsOf.get(m[1]) ?? 0) + 1);
  }
  for (const [dir, count] of pointsOf) {
    const name = `${dir}/item`;
    if (all.has(name)) continue;
    const [, machine, item] = dir.split('/');
    problems.push({ code: 'ITEM_MISSING', object: name, message: `item ${machine}/${item} has ${counted(count, 'point')} but its definition ${name} is missing: its points still restore; put it back from a copy of the vault (same name), else the next import of a seed of ${machine}/${item} writes it again` });
  }
  const points = await listPoints(vault, {}, (d) =>
    problems.push({ code: 'POINT_DAMAGED', object: d.name, message: `point ${d.seq} of ${d.machine}/${d.item} cannot be read: ${d.error.message}` }),
  );

  const disks = await listStoredDisks(objects, vault.list('disks/'), (id, err) =>
    problems.push({ code: 'DISK_DAMAGED', object: headName(id), message: `disk ${id} cannot be read: ${err.message}` }),
  );
  const byId = new Map(disks.map((d) => [d.id, d]));
  const used = new Set<string>();
  for (const p of points) {
    const of = `${p.machine}/${p.item} point ${p.seq}`;
    p.chain.forEach((id, k) => {
      used.add(id);
      const d = byId.get(id);
      if (!d) {
        // a damaged head is named above already
        if (!all.has(headName(id))) problems.push({ code: 'DISK_MISSING', object: headName(id), message: `${of} needs disk ${id}, which the vault does not hold` });
        return;
      }
      const parent = k === 0 ? undefined : p.chain[k - 1];
      if (d.parent !== parent) {
        problems.push({
          code: 'CHAIN_MISMATCH',
          object: headName(id),
          message: `${of}: disk ${id} ${d.parent ? `differs from ${d.parent}` : 'is no differencing disk'}, but the point puts it ${parent ? `over ${parent}` : 'at the base'}`,
        });
      }
    });
  }
  for (const d of disks) {
    if (d.parentMissing) problems.push({ code: 'DISK_PARENT_MISSING', object: headName(d.id), message: `disk ${d.id} is a differencing disk over ${d.parent}, which the vault does not hold` });
  }

  // Import's records of seed disks: each object's size as imported (absent in records before 2026-12-07).
  const seedDocs = new Map<string, { seq?: number; sizes?: Record<string, number> } | Error>();
  const importedSize = new Map<string, number>();
  for (const n of all) {
    if (!n.startsWith('seeds/')) continue;
    try {
      const doc = JSON.parse((await vault.getSealed(n)).toString('utf8')) as { seq?: number; sizes?: Record<string, number> };
      seedDocs.set(n, doc);
      if (/^seeds\/[^/]+\/disks\/\d+$/.test(n) && doc.sizes && typeof doc.sizes === 'object') {
        for (const [name, size] of Object.entries(doc.sizes)) if (Number.isSafeInteger(size)) importedSize.set(name, size);
      }
    } catch (err) {
      seedDocs.set(n, err as Error);
    }
  }

  // Blocks: every one a disk refers to is there, as large as imported (and with readData, reads and authenticates).
  const blocksOf = new Map<string, StoredBlock[]>();
  for (const d of disks) {
    try {
      blocksOf.set(d.id, await storedBlocks(objects, d.id));
    } catch (err) {
      problems.push({ code: 'DISK_DAMAGED', object: headName(d.id), message: `disk ${d.id} cannot be read: ${(err as Error).message}` });
    }
  }
  const total = [...blocksOf.values()].reduce((n, b) => n + b.reduce((m, x) => m + x.size, 0), 0);
  let done = 0;
  let bytesRead = 0;
  let blockCount = 0;
  const unneededMissing = new Map<string, number>();
  for (const [id, blocks] of blocksOf) {
    blockCount += blocks.length;
    await eachBlock(blocks, async (blk) => {
      const want = importedSize.get(blk.name);
      const has = want === undefined || !all.has(blk.name) ? undefined : (await vault.stat(blk.name).catch(() => undefined))?.size;
      if (!all.has(blk.name)) {
        // a disk no point names (a seed whose other disks are not imported yet): what it lacks no point needs
        if (!used.has(id)) unneededMissing.set(id, (unneededMissing.get(id) ?? 0) + 1);
        else problems.push({ code: 'BLOCK_MISSING', object: blk.name, message: `block ${blk.index} of disk ${id} is missing (object ${blk.name})` });
      } else if (has !== undefined && has !== want) {
        problems.push({ code: 'BLOCK_DAMAGED', object: blk.name, message: `block ${blk.index} of disk ${id}: object ${blk.name} holds ${has} bytes, but ${want} were imported` });
      } else if (opts.readData) {
        try {
          const n = await readStoredBlock(objects, blk);
          bytesRead += n; // not `+= await`: that adds to the value read before the wait
        } catch (err) {
          problems.push({ code: 'BLOCK_DAMAGED', object: blk.name, message: `block ${blk.index} of disk ${id}: ${(err as Error).message}` });
        }
      }
      done += blk.size;
      opts.onProgress?.(done, total);
    });
  }

  // What nothing needs.
  for (const d of disks) {
    if (used.has(d.id)) continue;
    notes.push(`disk ${d.id} is in no point (stored by ferry vhd import, or by an import that has not registered its point yet)`);
    const n = unneededMissing.get(d.id);
    if (n) notes.push(`disk ${d.id}: ${n} of its block objects are not in the vault (no point needs them; a seed's come with its other disks)`);
  }
  const referenced = new Set([...blocksOf.values()].flatMap((b) => b.map((x) => x.name)));
  const stray = new Map<string, number>();
  for (const n of all) {
    const m = /^disks\/([^/]+)\/blocks\//.exec(n);
    // a disk whose head cannot be read: which blocks it refers to is unknown
    if (m && !referenced.has(n) && (blocksOf.has(m[1]) || !all.has(headName(m[1])))) {
      stray.set(m[1], (stray.get(m[1]) ?? 0) + 1);
    }
  }
  for (const [id, count] of stray) {
    const why = blocksOf.has(id) ? 'that its head does not refer to' : 'of a disk with no head (its head comes with another disk of a seed not yet imported, or an import was interrupted)';
    notes.push(`${count} block object${count === 1 ? '' : 's'} under ${diskPrefix(id)} ${why}`);
  }
  // Seeds: import's records (which disks are in, who owns a disk image, what is registered) read;
  // a registered seed has its point.
  const seedsWithPoint = new Set(points.map((p) => p.seedId).filter((x): x is string => !!x));
  const seeds = new Map<string, number>();
  const registeredSeq = new Map<string, number>();
  for (const n of all) {
    if (!n.startsWith('seeds/')) continue;
    const doc = seedDocs.get(n)!;
    if (doc instanceof Error) {
      problems.push({ code: 'SEED_RECORD_DAMAGED', object: n, message: `import's record ${n} cannot be read: ${doc.message}` });
    } else {
      const r = /^seeds\/([^/]+)\/registered$/.exec(n);
      if (r && typeof doc.seq === 'number') registeredSeq.set(r[1], doc.seq);
    }
    const m = /^seeds\/([^/]+)\/disks\/\d+$/.exec(n);
    if (m) seeds.set(m[1], (seeds.get(m[1]) ?? 0) + 1);
  }
  for (const [seed, count] of seeds) {
    if (seedsWithPoint.has(seed)) continue;
    if (all.has(`seeds/${seed}/registered`)) {
      const object = `seeds/${seed}/registered`;
      // (not when that record, or its point, is named as damaged above already)
      const seq = registeredSeq.get(seed);
      const pointDamaged = problems.some((p) => p.code === 'POINT_DAMAGED' && seq !== undefined && p.object.endsWith(`/points/${String(seq).padStart(8, '0')}`));
      if (!pointDamaged && !problems.some((p) => p.object === object)) {
        problems.push({ code: 'POINT_MISSING', object, message: `seed ${seed} was registered, but its point is gone: import its disks again to register it again` });
      }
    } else notes.push(`seed ${seed}: ${count} disk${count === 1 ? '' : 's'} imported, its point not registered yet (import the other disks)`);
  }
  const known = /^(vault\.json|items\/[^/]+\/[^/]+\/(item|points\/\d{8})$|disks\/|seeds\/|locks\/)/;
  for (const n of all) if (!known.test(n)) notes.push(`object ${n} is not ferry's`);

  return { points: points.length, items: itemNames.length, disks: disks.length, blocks: blockCount, readData: !!opts.readData, bytesRead, problems, notes };
}
