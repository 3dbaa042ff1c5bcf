// Items and recovery points in a vault:
//   items/<machine>/<item>/item          item definition (kind, sources, excludes)
//   items/<machine>/<item>/points/<seq>  point manifest, written last
// A point becomes visible only when its manifest is written, after every
// object it needs.
import { FerryError, UsageError } from '../format/errors.js';
import type { Disk } from '../format/disk.js';
import type { VaultReader, VaultWriter } from './vault.js';
import { openStoredDisk } from './diskstore.js';
import { vaultObjects } from './putter.js';

export type ItemKind = 'files' | 'volume' | 'system-state';

export interface ItemDef {
  machine: string;
  item: string;
  kind: ItemKind;
  sources: string[];
  excludes: string[];
  created: string;
}

export interface PointManifest {
  seq: number;
  time: string;
  machine: string;
  item: string;
  kind: ItemKind;
  source: 'seed' | 'backup';
  /** Disk ids from the base to this point's disk. */
  chain: string[];
  /** Virtual disk size in bytes. */
  diskSize: number;
  /** Bytes of data the point holds (file bytes, or used volume bytes). */
  size: number;
  /** A volume's own length, when it is not whole sectors (the disk is rounded up; a raw restore is not). */
  volumeBytes?: number;
  stats: Record<string, number>;
  seedId?: string;
  sources: string[];
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$/;

export function checkName(what: 'machine' | 'item', name: string): void {
  if (!NAME_RE.test(name)) throw new UsageError(`--${what} ${JSON.stringify(name)} is not valid: use letters, digits and . _ - @ + (up to 128)`);
}

export const itemName = (m: string, i: string) => `items/${m}/${i}/item`;
export const pointName = (m: string, i: string, seq: number) => `items/${m}/${i}/points/${String(seq).padStart(8, '0')}`;

async function getJson<T>(vault: VaultReader, name: string): Promise<T> {
  return JSON.parse((await vault.getSealed(name)).toString('utf8')) as T;
}

export async function putJson(vault: VaultWriter, name: string, doc: unknown): Promise<void> {
  await vault.putSealed(name, Buffer.from(JSON.stringify(doc)));
}

export async function readItem(vault: VaultReader, machine: string, item: string): Promise<ItemDef | undefined> {
  if (!(await vault.exists(itemName(machine, item)))) return undefined;
  return getJson<ItemDef>(vault, itemName(machine, item));
}

/** Every point, oldest first, optionally of one machine and item. */
/** A point object that cannot be read (damaged, cut short): its name, its seq, and why. */
export interface DamagedPoint {
  name: string;
  machine: string;
  item: string;
  seq: number;
  error: Error;
}

/**
 * Every point (of a machine, of an item), oldest first. A point object that
 * cannot be read stops the listing, unless `onDamaged` takes it: then the
 * others are listed.
 */
export async function listPoints(
  vault: VaultReader,
  filter: { machine?: string; item?: string } = {},
  onDamaged?: (d: DamagedPoint) => void,
): Promise<PointManifest[]> {
  if (filter.machine !== undefined) checkName('machine', filter.machine);
  if (filter.item !== undefined) checkName('item', filter.item);
  const prefix = filter.machine ? (filter.item ? `items/${filter.machine}/${filter.item}/points/` : `items/${filter.machine}/`) : 'items/';
  const names: string[] = [];
  for await (const n of vault.list(prefix)) {
    const parts = n.split('/');
    // (a file there that is not a point's, 8 digits, is not ferry's: ferry check names it)
    if (parts.length === 5 && parts[3] === 'points' && /^\d{8}$/.test(parts[4]) && (!filter.item || parts[2] === filter.item)) names.push(n);
  }
  const read = await Promise.all(
    names.map((n) =>
      getJson<PointManifest>(vault, n).catch((error: Error) => {
        if (!onDamaged) throw error;
        const [, machine, item, , seq] = n.split('/');
        onDamaged({ name: n, machine, item, seq: Number(seq), error });
        return null;
      }),
    ),
  );
  const points = read.filter((p): p is PointManifest => p !== null);
  return points.sort((a, b) => a.time.localeCompare(b.time) || a.machine.localeCompare(b.machine) || a.item.localeCompare(b.item) || a.seq - b.seq);
}

/** Picks a point by seq, `latest`, or a time (the newest at or before it). */
export async function resolvePoint(vault: VaultReader, machine: string, item: string, which = 'latest'): Promise<PointManifest> {
  // A damaged point stops only what may need it: itself, `latest`, or a time.
  const damaged: DamagedPoint[] = [];
  const points = await listPoints(vault, { machine, item }, (d) => damaged.push(d));
  const named = /^\d+$/.test(which) ? damaged.find((d) => d.seq === Number(which)) : damaged[0];
  if (named) {
    const readable = points.length ? ` (readable: ${points.map((x) => x.seq).join(', ')})` : '';
    const hint = /^\d+$/.test(which) ? '' : `; which point is ${which} cannot be told: name one with --point${readable}`;
    throw new FerryError('POINT_DAMAGED', `point ${named.seq} of ${machine}/${item} cannot be read: ${named.error.message}${hint}`, { object: named.name });
  }
  if (points.length === 0) {
    // the item under another machine name (restoring on another machine without --machine)
    const elsewhere = [...new Set((await listPoints(vault, {}, () => {})).filter((p) => p.item === item).map((p) => p.machine))];
    const hint = elsewhere.length
      ? `; ${elsewhere.length === 1 ? `machine ${elsewhere[0]} has` : `machines ${elsewhere.join(', ')} have`} an item ${item}: add --machine ${elsewhere[0]}`
      : `; see ferry points --vault ${vault.location}`;
    throw new FerryError('NO_SUCH_ITEM', `no recovery point of item ${item} on machine ${machine} in ${vault.location}${hint}`, { machine, item });
  }
  if (which === 'latest') return points[points.length - 1];
  if (/^\d+$/.test(which)) {
    const p = points.find((x) => x.seq === Number(which));
    if (!p) throw new FerryError('NO_SUCH_POINT', `item ${machine}/${item} has no point ${which} (points: ${points.map((x) => x.seq).join(', ')})`);
    return p;
  }
  const t = /^\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?)?$/.test(which) ? Date.parse(which) : NaN;
  if (Number.isNaN(t)) throw new UsageError(`--point must be a number, latest, or a time such as 2026-11-23T10:00 (got ${JSON.stringify(which)})`);
  const before = points.filter((x) => Date.parse(x.time) <= t);
  if (before.length === 0) throw new FerryError('NO_SUCH_POINT', `item ${machine}/${item} has no point at or before ${which} (${new Date(t).toISOString()}); its first is ${points[0].seq}, of ${points[0].time}`);
  return before[before.length - 1];
}

/** Opens a point's disk chain read-only. */
export async function openPointDisk(vault: VaultReader, p: PointManifest): Promise<Disk> {
  let disk: Disk | null = null;
  const objects = vaultObjects(vault);
  for (const id of p.chain) disk = await openStoredDisk(objects, id, disk, `disk ${id} of ${p.machine}/${p.item} point ${p.seq}`);
  return disk!;
}
