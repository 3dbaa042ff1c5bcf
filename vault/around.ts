// Whether a path lies in a vault folder: seed disks and restored files
// never go there (a vault holds only sealed objects, and its check counts
// anything else as damage). Paths are compared as the kernel sees them:
// real paths, symbolic links resolved.
import { lstat, open, realpath } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { VAULT_CONFIG_NAME, VAULT_FORMAT } from './keys.js';

/** The real path of `p`; when it does not exist yet, its nearest existing ancestor's real path with the rest joined on. */
export async function realPlace(p: string): Promise<{ real: string; existing: string }> {
  let cur = resolve(p);
  const rest: string[] = [];
  for (;;) {
    try {
      const r = await realpath(cur);
      return { real: rest.length ? join(r, ...rest) : r, existing: r };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // anything else (a loop of links, no permission): the path as given, left to the writes to refuse
      if (code !== 'ENOENT' && code !== 'ENOTDIR') return { real: cur, existing: cur };
    }
    const up = dirname(cur);
    if (up === cur) return { real: resolve(p), existing: up };
    rest.unshift(basename(cur));
    cur = up;
  }
}

/** Whether folder `dir` is a ferry vault: it holds a vault.json of ferry's (damaged or not). */
export async function isVault(dir: string): Promise<boolean> {
  const file = join(dir, VAULT_CONFIG_NAME);
  const st = await lstat(file).catch(() => null);
  if (!st?.isFile()) return false;
  // another program's vault.json is not a vault; a ferry one with a damaged byte still is
  let fh;
  try {
    fh = await open(file, 'r');
    const b = Buffer.alloc(Math.min(st.size, 1 << 20));
    const { bytesRead } = await fh.read(b, 0, b.length, 0);
    return b.subarray(0, bytesRead).includes(`"${VAULT_FORMAT}"`);
  } catch {
    return true; // unreadable: taken for what its name says
  } finally {
    await fh?.close();
  }
}

/**
 * The vault folder `path` is in (or is), found through the real path of
 * the part of it that exists (so a symlink into a vault is seen through);
 * null when it lies in none.
 */
export async function vaultAround(path: string): Promise<string | null> {
  const { existing } = await realPlace(path);
  for (let p = existing; ; p = dirname(p)) {
    if (await isVault(p)) return p;
    if (p === dirname(p)) return null;
  }
}
