// Where a catalog is built (seed) or spooled (restore of a large catalog):
// a folder of its own under the temporary directory, named after the process
// (ferry-catalog-<pid>-XXXXXX), so that one left behind by a process that was
// killed can be told apart from one in use. Every new one first removes
// those of processes that are gone, when nothing in them has changed for an
// hour (a shared /tmp across PID namespaces could show a live process as gone).
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FerryError } from '../errors.js';
import { pidAlive } from '../fsio.js';

const PREFIX = 'ferry-catalog-';
const STALE_MS = 60 * 60 * 1000;

/** Latest change of the folder or anything directly in it. */
function lastChange(dir: string): number {
  let t = statSync(dir).mtimeMs;
  for (const name of readdirSync(dir)) {
    try {
      t = Math.max(t, statSync(join(dir, name)).mtimeMs);
    } catch {
      /* gone meanwhile */
    }
  }
  return t;
}

/** Removes catalog folders left by processes that are gone (best effort: never fails). */
export function sweepCatalogDirs(parent: string, now = Date.now()): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return removed;
  }
  for (const name of names) {
    const m = /^ferry-catalog-(\d+)-[A-Za-z0-9]{6}$/.exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    const dir = join(parent, name);
    try {
      if (now - lastChange(dir) < STALE_MS) continue;
      rmSync(dir, { recursive: true, force: true });
      removed.push(dir);
    } catch {
      /* not ours to remove, or gone: leave it */
    }
  }
  return removed;
}

/** A new folder for one catalog, after sweeping those of dead processes. */
export function makeCatalogDir(parent = tmpdir()): string {
  sweepCatalogDirs(parent);
  return mkdtempSync(join(parent, `${PREFIX}${process.pid}-`));
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
