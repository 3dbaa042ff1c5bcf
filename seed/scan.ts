// A quick count of what a seed will read (lstat only, no content), run beside
// the seed so progress can show a total and an estimated time.
import { lstat, readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { compileGlobs } from '../source/files.js';
import { pseudoFilesystems } from '../source/pseudofs.js';

export interface ScanTotals {
  files: number;
  bytes: number;
  done: boolean;
}

/** Counts files and bytes under `sources`; `totals` fills in as it goes. Never throws. */
export function scanTotals(sources: string[], excludes: string[], oneFileSystem = false): { totals: ScanTotals; finished: Promise<void> } {
  const totals: ScanTotals = { files: 0, bytes: 0, done: false };
  const excluded = compileGlobs(excludes);
  const seen = new Set<string>();
  const pseudoOf = pseudoFilesystems();
  // where the walk stops: another filesystem (with --one-file-system), /proc and its kind
  const visit = async (p: string, rootDev?: bigint, parentDev?: bigint): Promise<void> => {
    if (excluded(Buffer.from(p))) return;
    let st;
    try {
      st = await lstat(p, { bigint: true });
    } catch {
      return;
    }
    const key = `${st.dev}:${st.ino}`;
    if (seen.has(key)) return;
    if (st.nlink > 1n) seen.add(key);
    totals.files++;
    if (st.isFile()) totals.bytes += Math.min(Number(st.size), Number(st.blocks) * 512);
    if (!st.isDirectory()) return;
    if (oneFileSystem && rootDev !== undefined && st.dev !== rootDev) return;
    if (parentDev !== undefined && st.dev !== parentDev && (await pseudoOf(p, st.dev))) return;
    let names: string[];
    try {
      names = await readdir(p);
    } catch {
      return;
    }
    for (let i = 0; i < names.length; i += 64) await Promise.all(names.slice(i, i + 64).map((n) => visit(join(p, n), rootDev ?? st.dev, st.dev)));
  };
  const finished = (async () => {
    for (const s of sources) await visit(resolve(s));
    totals.done = true;
  })().catch(() => {
    totals.done = true;
  });
  return { totals, finished };
}
