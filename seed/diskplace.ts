// Where a seed disk may be: a folder of its own, never inside a vault (the
// one seeded for, or any other), and never one that holds the vault. Paths
// are compared as the kernel sees them: real paths (symbolic links
// resolved), folder identity (device and inode), and, for bind mounts, the
// place each path has inside its file system (from /proc/self/mountinfo).
import { readFile, stat } from 'node:fs/promises';
import { dirname, posix, relative, resolve, sep } from 'node:path';
import { UsageError } from '../format/errors.js';
import { devNumbers } from '../format/fsio.js';
import { isVault, realPlace } from '../vault/around.js';

/** `p` and each folder above it, up to `/`. */
function ancestors(p: string): string[] {
  const out = [p];
  for (let cur = p; dirname(cur) !== cur; cur = dirname(cur)) out.push(dirname(cur));
  return out;
}

const within = (p: string, top: string) => p === top || p.startsWith(top.endsWith(sep) ? top : top + sep);

const identity = async (p: string): Promise<string | undefined> => {
  const st = await stat(p, { bigint: true }).catch(() => null);
  return st ? `${st.dev}:${st.ino}` : undefined;
};

interface Mount {
  dev: string;
  root: string;
  at: string;
}

const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

async function mounts(): Promise<Mount[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const out: Mount[] = [];
  for (const line of text.split('\n')) {
    // id parent major:minor root mount-point options ...
    const f = line.split(' ');
    if (f.length < 5) continue;
    out.push({ dev: f[2], root: unescape(f[3]), at: unescape(f[4]) });
  }
  return out;
}

/**
 * Where existing path `real` lies inside its file system ("major:minor" and
 * the path from the file system's root), so that a folder seen through a
 * bind mount is recognised: the mount it lies under is the one with the
 * longest mount point above it (the last mounted, among equals), preferring
 * those of the path's own device.
 */
async function fsPlace(real: string, all: Mount[]): Promise<{ dev: string; path: string } | undefined> {
  const st = await stat(real).catch(() => null);
  const own = st ? devNumbers(st.dev).join(':') : '';
  let best: Mount | undefined;
  let bestOwn: Mount | undefined;
  for (const m of all) {
    if (!within(real, m.at)) continue;
    if (!best || m.at.length >= best.at.length) best = m;
    if (m.dev === own && (!bestOwn || m.at.length >= bestOwn.at.length)) bestOwn = m;
  }
  const m = bestOwn ?? best;
  if (!m || m.root.endsWith('//deleted')) return undefined;
  return { dev: m.dev, path: posix.join(m.root, relative(m.at, real)) };
}

/**
 * Refuses (a usage error, before anything is written) a --disk folder that
 * lies inside the vault at `vaultLocation` or inside any other ferry vault,
 * or that holds the vault: its objects and manifest would be written among
 * the vault's own.
 */
export async function checkDiskPlace(disk: string, vaultLocation: string): Promise<void> {
  const given = resolve(disk);
  const { real, existing } = await realPlace(disk);
  const vault = await realPlace(vaultLocation);
  const shown = real === given ? `--disk ${disk}` : `--disk ${disk} (${real})`;
  const inside = (v: string, other = false) =>
    new UsageError(`${shown} is inside ${other ? 'another ferry vault,' : 'the vault'} ${v}: a seed disk must be a folder of its own, outside any vault; name another folder`, { disk, vault: v });
  const holds = () => new UsageError(`${shown} holds the vault ${vaultLocation}: a seed disk must be a folder of its own, outside any vault; name another folder`, { disk, vault: vaultLocation });

  // by real path
  if (within(real, vault.real)) throw inside(vaultLocation);
  if (within(vault.real, real)) throw holds();
  // by identity: the vault's folder is the disk's or one above it (a bind mount of the vault)
  const vaultId = await identity(vault.existing);
  const up = ancestors(existing);
  if (vaultId) for (const a of up) if ((await identity(a)) === vaultId) throw inside(vaultLocation);
  if (existing === real) {
    const diskId = await identity(existing);
    if (diskId) for (const a of ancestors(vault.existing)) if ((await identity(a)) === diskId) throw holds();
  }
  // by place in the file system: a bind mount of a folder inside the vault, or of one holding it
  const all = await mounts();
  const [d, v] = await Promise.all([fsPlace(existing, all), fsPlace(vault.existing, all)]);
  if (d && v && d.dev === v.dev) {
    if (within(d.path, v.path)) throw inside(vaultLocation);
    if (existing === real && within(v.path, d.path)) throw holds();
  }
  // another vault: the disk's folder, or one above it, holds a ferry vault.json
  for (const a of up) if (await isVault(a)) throw inside(a, true);
}
