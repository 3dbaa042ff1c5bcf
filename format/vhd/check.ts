// Inspection without throwing: what `ferry vhd info` and `ferry vhd check`
// show. Decoding already collected the problems; here the chain is followed
// and each layer's facts are gathered.
import { decodeVhd, type Decoded } from './decode.js';
import { openChain } from './chain.js';
import { diskTypeName, UNUSED } from './layout.js';
import { type Problem, VhdError } from './problems.js';
import { FileStorage, type VhdDisk } from './vhd.js';
import { FerryError } from '../errors.js';
import { HOST_TAG, pidAlive } from '../fsio.js';
import { readFile } from 'node:fs/promises';

export interface LayerInfo {
  file: string;
  type?: string;
  size?: number;
  blockSize?: number;
  blocks?: number;
  allocatedBlocks?: number;
  fileSize: number;
  uniqueId?: string;
  creator?: string;
  creatorOs?: string;
  timestamp?: string;
  geometry?: { cylinders: number; heads: number; sectorsPerTrack: number };
  parentName?: string;
  parentUniqueId?: string;
  locators?: Array<{ index: number; code: string; path?: string }>;
}

export interface Inspection {
  layers: LayerInfo[];
  problems: Problem[];
}

function layerInfo(d: Decoded): LayerInfo {
  const f = d.footer;
  const info: LayerInfo = { file: d.name, fileSize: d.fileSize };
  if (!f) return info;
  info.type = diskTypeName(f.diskType) ?? `unknown (${f.diskType})`;
  info.size = d.size;
  info.uniqueId = f.uniqueId.toString('hex');
  info.creator = `${f.creatorApp.replace(/\0/g, '\\0')} ${f.creatorVersion >>> 16}.${f.creatorVersion & 0xffff}`;
  info.creatorOs = f.creatorOs.replace(/\0/g, '\\0');
  info.timestamp = new Date((f.timestamp + 946684800) * 1000).toISOString();
  info.geometry = { cylinders: f.cylinders, heads: f.heads, sectorsPerTrack: f.sectorsPerTrack };
  if (d.blockSize) info.blockSize = d.blockSize;
  if (d.bat) {
    info.blocks = d.bat.length;
    let n = 0;
    for (const e of d.bat) if (e !== UNUSED) n++;
    info.allocatedBlocks = n;
  }
  if (d.type === 'differencing' && d.header) {
    info.parentName = d.parentName;
    info.parentUniqueId = d.header.parentUniqueId.toString('hex');
    info.locators = d.locators.map((l) => ({ index: l.index, code: l.platformCode, path: l.path }));
  }
  return info;
}

/** Decodes `path` and every parent it can find; never throws for bad content. */
export async function inspectVhd(path: string): Promise<Inspection> {
  const storage = await FileStorage.open(path, false);
  let d: Decoded;
  try {
    d = await decodeVhd(storage);
  } finally {
    await storage.close();
  }
  const r = await inspectDecoded(d, () => openChain(path));
  const merge = await mergeLockOn(path);
  if (merge) r.problems.push(merge);
  return r;
}

/**
 * A `vhd merge` that holds, or held until it was killed, the lock of `path`
 * (as the child or the parent): the disk is half-merged until it is run
 * again, which finishes it.
 */
async function mergeLockOn(path: string): Promise<Problem | undefined> {
  let holder: { pid?: number; task?: string; host?: string };
  try {
    holder = JSON.parse(await readFile(`${path}.ferry-lock`, 'utf8'));
  } catch {
    return undefined;
  }
  if (typeof holder.task !== 'string' || !holder.task.startsWith('vhd merge of ')) return undefined;
  const child = holder.task.slice('vhd merge of '.length).replace(/ into it$/, '');
  const live = holder.host === HOST_TAG && typeof holder.pid === 'number' && pidAlive(holder.pid);
  return {
    code: 'VHD_MERGE_UNFINISHED',
    severity: live ? 'warning' : 'error',
    file: path,
    message: live
      ? `ferry process ${holder.pid} is merging ${child} now; check again when it is done`
      : `a merge of ${child} was interrupted and its blocks may be half written; run ferry vhd merge ${child} again to finish it`,
  };
}

/**
 * The inspection of a decoded disk (a file, or a disk stored in a vault):
 * its own facts and problems, then, for a differencing disk, each parent's,
 * from the chain `openTop` opens (its parents found however the caller finds
 * them: by locator for files, by unique id in a vault).
 */
export async function inspectDecoded(d: Decoded, openTop: () => Promise<VhdDisk>): Promise<Inspection> {
  const layers: LayerInfo[] = [layerInfo(d)];
  const problems: Problem[] = [...d.problems];
  if (d.type !== 'differencing' || d.problems.some((p) => p.severity === 'fatal')) return { layers, problems };
  // Follow the chain; problems of the parents count too.
  try {
    const top = await openTop();
    try {
      for (let p = top.parent as VhdDisk | null; p; p = p.parent as VhdDisk | null) {
        layers.push(layerInfo(p.info));
        problems.push(...p.info.problems);
      }
      problems.push(...top.info.problems.filter((x) => !d.problems.some((y) => y.code === x.code && y.message === x.message) && x.code === 'VHD_PARENT_SIZE'));
    } finally {
      await top.close();
    }
  } catch (err) {
    if (err instanceof VhdError) problems.push(err.problem);
    else if (err instanceof FerryError) problems.push({ code: 'VHD_PARENT_MISSING', severity: 'fatal', file: d.name, message: err.message });
    else throw err;
  }
  return { layers, problems };
}
