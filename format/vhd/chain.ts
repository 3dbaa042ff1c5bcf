// Opening a differencing chain: find each parent from its locators (relative
// first, as the child may have moved with its parent), then by the parent
// name's basename in the child's folder (what libvhdi does); check that the
// parent is the one the child was made from (unique id); refuse cycles.
import { access, realpath } from 'node:fs/promises';
import { readdirSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import type { Problem } from './problems.js';
import { VhdError } from './problems.js';
import { FerryError } from '../errors.js';
import { VhdDisk } from './vhd.js';

const MAX_DEPTH = 256;

export interface ChainOptions {
  /** Open the top disk for writing (parents are always read-only). */
  writable?: boolean;
  /** Open a differencing disk without its parent (its parent's data reads as zeros). */
  noParent?: boolean;
}

/** The places a differencing disk's locators and parent name point to, best first. */
export function parentCandidates(disk: VhdDisk): string[] {
  const dir = dirname(resolve(disk.name));
  const out: string[] = [];
  const add = (p: string | undefined) => {
    if (!p) return;
    const full = isAbsolute(p) ? p : resolve(dir, p);
    if (!out.includes(full)) out.push(full);
  };
  const locs = disk.info.locators;
  const order = ['W2ru', 'MacX', 'Wi2r', 'W2ku', 'Wi2k'];
  for (const code of order) {
    for (const l of locs) {
      if (l.platformCode !== code || !l.path) continue;
      const p = l.path;
      if (/^[A-Za-z]:\\/.test(p) || p.startsWith('\\\\')) {
        // A Windows absolute path: only its file name can mean anything here.
        add(join(dir, winBasename(p)));
      } else if (code === 'W2ru' || code === 'Wi2r') {
        add(p.replace(/\\/g, '/'));
      } else {
        add(p);
      }
    }
  }
  if (disk.info.parentName) add(join(dir, winBasename(disk.info.parentName)));
  // Windows names are case-blind: C:\VMs\BASE.VHD is the base.vhd beside the child
  const wanted = new Set(out.filter((p) => dirname(p) === dir).map((p) => basename(p).toLowerCase()));
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    /* an unreadable folder: the candidates above are all there is */
  }
  for (const n of names) if (wanted.has(n.toLowerCase())) add(join(dir, n));
  return out;
}

function winBasename(p: string): string {
  return basename(p.replace(/\\/g, '/'));
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

/** Opens `path` and, for a differencing disk, its whole chain of parents. */
export async function openChain(path: string, opts: ChainOptions = {}): Promise<VhdDisk> {
  const top = await VhdDisk.open(path, { writable: opts.writable });
  if (opts.noParent) return top;
  try {
    const seen = new Set<string>([await realpath(path)]);
    let child = top;
    for (let depth = 0; child.type === 'differencing'; depth++) {
      if (depth >= MAX_DEPTH) throw chainProblem(child, 'VHD_PARENT_CYCLE', `chain deeper than ${MAX_DEPTH} disks`);
      const parent = await openParent(child, seen);
      child.parent = parent;
      child = parent;
    }
    return top;
  } catch (err) {
    await top.close();
    throw err;
  }
}

async function openParent(child: VhdDisk, seen: Set<string>): Promise<VhdDisk> {
  const candidates = parentCandidates(child);
  const want = child.parentUniqueId!;
  const mismatched: string[] = [];
  const unusable: string[] = [];
  for (const c of candidates) {
    if (!(await exists(c))) continue;
    const real = await realpath(c);
    let p: VhdDisk;
    try {
      p = await VhdDisk.open(c);
    } catch (err) {
      // A damaged locator may name a folder, a non-VHD file...: the other candidates may still lead home.
      if (err instanceof FerryError) {
        unusable.push(`${c} (${err.code})`);
        continue;
      }
      throw err;
    }
    if (!p.uniqueId.equals(want)) {
      mismatched.push(c);
      await p.close();
      continue;
    }
    if (seen.has(real)) {
      await p.close();
      throw chainProblem(child, 'VHD_PARENT_CYCLE', `its parent ${c} is already in the chain (a cycle)`);
    }
    if (p.size < child.size) {
      // Allowed (the rest reads as zeros), but worth a mention in check.
      child.info.problems.push({
        code: 'VHD_PARENT_SIZE',
        severity: 'warning',
        file: child.name,
        field: 'footer.currentSize',
        expected: child.size,
        actual: p.size,
        message: `parent ${c} is smaller (${p.size} bytes) than the child (${child.size})`,
      });
    }
    seen.add(real);
    return p;
  }
  const name = child.info.parentName || '(no parent name)';
  if (mismatched.length > 0) {
    throw chainProblem(
      child,
      'VHD_PARENT_MISMATCH',
      `parent ${mismatched[0]} is not the disk this one was made from (unique id ${fmtId(want)} wanted); put the right parent "${winBasename(name)}" beside it`,
    );
  }
  throw chainProblem(
    child,
    'VHD_PARENT_MISSING',
    `parent "${name}" not found (looked for ${unusable.length ? `${unusable.join(', ')} and ` : ''}${candidates.map((c) => JSON.stringify(c)).join(', ') || 'nothing: no locators'}); put it beside the child`,
  );
}

function fmtId(b: Buffer): string {
  return b.toString('hex');
}

function chainProblem(child: VhdDisk, code: Problem['code'], message: string): VhdError {
  return new VhdError({ code, severity: 'fatal', file: child.name, field: 'header.parentName', message });
}
