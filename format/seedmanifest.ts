// FERRY-SEED.json: the plain manifest on every seed disk. It names the seed,
// the vault it belongs to, which disk of how many this is, and every object
// on it with its size and SHA-256 (of the sealed bytes, as stored). The
// point to register travels in it too, sealed, so only key holders read it.
// Spec: docs/seed-format.md.
import { createHash } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { open } from 'node:fs/promises';
import { FerryError } from './errors.js';

export const SEED_MANIFEST = 'FERRY-SEED.json';
export const SEED_FORMAT = 'ferry-seed';

export interface SeedObject {
  name: string;
  size: number;
  sha256: string;
  /** SHA-256 of the plaintext: written by ferry before 2026-11-24, read and ignored now. */
  plain?: string;
}

export interface SeedManifest {
  format: typeof SEED_FORMAT;
  version: 1;
  seedId: string;
  vaultId: string;
  machine: string;
  item: string;
  kind: string;
  /** 1-based number of this disk; `of` is known once the seed is complete. */
  disk: number;
  of: number | null;
  complete: boolean;
  /** Object names on disk are prefixed with this (Data Box layout: BlockBlob/<container>/). */
  prefix: string;
  /** What a resumed seed must reuse to rebuild the same bytes. */
  params: { diskId: string; volumeUuid: string; time: string; size: number };
  /** The SOURCEs as given, made absolute: a run with others is not a resume of this one (absent before 2026-12). */
  sources?: string[];
  objects: SeedObject[];
  /** The sealed point record (base64), present when complete. */
  point?: string;
}

/** No seed spans more disks than this: a bound on what an edited manifest can make import loop over. */
export const MAX_SEED_DISKS = 10_000;

/** What the sealed point record says of one disk, so that an edited manifest is caught at import. */
export interface SeedDiskSummary {
  objects: number;
  /** SHA-256 of the disk's object list: a line `name<TAB>size<TAB>sha256<LF>` per object, sorted by name. */
  list: string;
}

export function summarizeObjects(objects: readonly SeedObject[]): SeedDiskSummary {
  const sorted = [...objects].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const h = createHash('sha256');
  for (const o of sorted) h.update(`${o.name}\t${o.size}\t${o.sha256}\n`);
  return { objects: objects.length, list: h.digest('hex') };
}

/** A manifest lists at most a disk's objects: a few hundred bytes each. */
const MAX_MANIFEST_BYTES = 512 * 1024 * 1024;

/**
 * Reads a manifest file: a regular file only (a fifo under the name would
 * block, a device never end). Errors of the open (ENOENT ...) are thrown as
 * they are, for the caller to word.
 */
export async function readManifestText(file: string): Promise<string> {
  const fh = await open(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.size > MAX_MANIFEST_BYTES) {
      throw new FerryError('SEED_BAD_MANIFEST', `${file} is not a ferry seed manifest (${st.isFile() ? 'too large' : 'not a regular file'}); is this a ferry seed disk?`, { file });
    }
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}

export function parseSeedManifest(file: string, text: string): SeedManifest {
  const bad = (why: string) => new FerryError('SEED_BAD_MANIFEST', `${file}: not a ferry seed manifest (${why}); is this a ferry seed disk?`, { file });
  let m: SeedManifest;
  try {
    m = JSON.parse(text) as SeedManifest;
  } catch {
    throw bad('unreadable JSON');
  }
  if (m?.format !== SEED_FORMAT) throw bad('no "format": "ferry-seed"');
  if (m.version !== 1) throw bad(`unknown version ${String(m.version)}`);
  for (const k of ['seedId', 'vaultId', 'machine', 'item', 'kind', 'prefix'] as const) if (typeof m[k] !== 'string') throw bad(`field ${k} missing`);
  // These name folders and objects on the disk: nothing may lead out of it.
  if (!/^[0-9a-f]{16}$/.test(m.seedId)) throw bad('seedId is not 16 hex digits');
  const p = m.params;
  if (!p || !/^[0-9a-f]{32}$/.test(p.diskId ?? '') || !/^[0-9a-f]{32}$/.test(p.volumeUuid ?? '') || typeof p.time !== 'string' || Number.isNaN(Date.parse(p.time)) || !Number.isSafeInteger(p.size) || p.size <= 0) {
    throw bad('field params is not diskId, volumeUuid, time and size');
  }
  if (!Number.isInteger(m.disk) || m.disk < 1 || m.disk > MAX_SEED_DISKS) throw bad('field disk missing or out of range');
  if (m.of !== null && (!Number.isInteger(m.of) || m.of < m.disk || m.of > MAX_SEED_DISKS)) throw bad(`field of is ${JSON.stringify(m.of)}, not a disk count of at least ${m.disk}`);
  if (m.complete !== true && m.complete !== false) throw bad('field complete missing');
  if (m.complete && m.of === null) throw bad('a complete seed must say how many disks it has');
  // Names become paths on the disk: nothing may lead outside it.
  if (m.prefix !== '' && !/^BlockBlob\/[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}\/$/.test(m.prefix)) throw bad(`prefix ${JSON.stringify(m.prefix).slice(0, 80)} is neither empty nor BlockBlob/<container>/`);
  if (!Array.isArray(m.objects)) throw bad('field objects missing');
  for (const o of m.objects) {
    if (typeof o?.name !== 'string' || !Number.isSafeInteger(o.size) || o.size < 0 || !/^[0-9a-f]{64}$/.test(o.sha256 ?? '')) throw bad(`bad object entry ${JSON.stringify(o).slice(0, 80)}`);
    if (!o.name.startsWith(`disks/${p.diskId}/`) || !/^disks\/[0-9a-f]{32}\/(?:head|blocks\/[0-9]{1,10})$/.test(o.name)) throw bad(`object name ${JSON.stringify(o.name).slice(0, 80)} is not one this seed writes`);
  }
  return m;
}
