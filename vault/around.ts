// Whether a path lies in a vault folder: seed disks and restored files
// never go there (a vault holds only sealed objects, and its check counts
// anything else as damage).
import { readFileSync, realpathSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { VAULT_FORMAT } from './keys.js';

/** Whether `dir` holds a ferry vault's vault.json. */
function holdsVault(dir: string): boolean {
  try {
    return (JSON.parse(readFileSync(join(dir, 'vault.json'), 'utf8')) as { format?: unknown }).format === VAULT_FORMAT;
  } catch {
    return false;
  }
}

/**
 * The vault folder `path` is in (or is), found through the real path of
 * the part of it that exists (so a symlink or a bind mount into a vault is
 * seen through); null when it lies in none.
 */
export function vaultAround(path: string): string | null {
  let real: string | null = null;
  for (let p = resolve(path); ; p = dirname(p)) {
    try {
      real = realpathSync(p);
      break;
    } catch {
      if (p === dirname(p)) return null;
    }
  }
  for (let p = real; ; p = dirname(p)) {
    if (holdsVault(p)) return p;
    if (p === dirname(p)) return null;
  }
}
