// Where a catalog is built (seed) or spooled (restore of a large catalog):
// a folder of its own under the temporary directory, named after the process
// (ferry-catalog-<host>-<pid>-XXXXXX), so that one left behind by a process that was
// killed can be told apart from one in use. Every new one first removes
// those of processes that are gone, when nothing in them has changed for an
// hour (a shared /tmp across PID namespaces could show a live process as gone).
import { tmpdir } from 'node:os';
import { dirname } from 'node:path';
import { FerryError } from '../errors.js';
import { sweepLeftovers, tempDirIn, tempDirPattern } from '../fsio.js';

const PREFIX = 'ferry-catalog-';
const STALE_MS = 60 * 60 * 1000;

/** Removes catalog folders left by processes that are gone, untouched for an hour. */
export function sweepCatalogDirs(parent: string, now = Date.now()): string[] {
  return sweepLeftovers(parent, tempDirPattern(PREFIX), STALE_MS, now);
}

/** A new folder for one catalog, after sweeping those of dead processes. */
export function makeCatalogDir(parent = tmpdir()): string {
  return tempDirIn(parent, PREFIX, STALE_MS);
}

/**
 * A one-line error for a catalog folder that ran out of room (a small /tmp),
 * naming the folder and the way out; null for any other error.
 */
export function catalogSpaceError(err: unknown, dir: string): FerryError | null {
  const code = (err as { code?: string })?.code ?? '';
  if (!['ENOSPC', 'EDQUOT', 'SQLITE_FULL'].includes(code)) return null;
  const parent = dirname(dir);
  return new FerryError(
    'CATALOG_TMP_FULL',
    `no room left in ${parent} for the catalog ferry keeps there while it works; free some space there or point TMPDIR at a folder with more room, then run the same command again`,
    { dir: parent },
  );
}
