// FERRY-SEED.json: the plain manifest on every seed disk. It names the seed,
// the vault it belongs to, which disk of how many this is, and every object
// on it with its size and SHA-256 (of the sealed bytes, as stored). The
// point to register travels in it too, sealed, so only key holders read it.
// Spec: docs/seed-format.md.
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
  objects: SeedObject[];
  /** The sealed point record (base64), present when complete. */
  point?: string;
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
  if (!Number.isInteger(m.disk) || m.disk < 1) throw bad('field disk missing');
  if (!Array.isArray(m.objects)) throw bad('field objects missing');
  for (const o of m.objects) {
    if (typeof o?.name !== 'string' || !Number.isSafeInteger(o.size) || !/^[0-9a-f]{64}$/.test(o.sha256 ?? '')) throw bad(`bad object entry ${JSON.stringify(o).slice(0, 80)}`);
  }
  return m;
}
