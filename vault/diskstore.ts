// A VHD kept as objects: `disks/<id>/head` plus one object per allocated
// block (`disks/<id>/blocks/<index>`: the block's sector bitmap then its
// data, exactly as in the file). Like Xen Orchestra's VhdDirectory, a merge
// or an incremental then costs what the child holds, not what the base holds.
//
// Head object layout (plaintext, before sealing):
//   0   8  magic "FRRYHEAD"
//   8   4  length J of the JSON that follows (u32 BE)
//   12  J  JSON: { v: 1, fileSize, type: 'dynamic'|'differencing'|'fixed',
//              regions: [{ offset, length }], fixedBlocks?: number[] }
//   ..     the bytes of each region, in order
// For dynamic and differencing disks the regions are the file's prefix (footer
// copy, dynamic header, parent locators, BAT) and the footer at the end; the
// blocks lie at their BAT offsets; anything else reads as zeros. For fixed
// disks the one region is the footer and `fixedBlocks` lists the stored
// 2 MiB data chunks. The exact VHD file comes back from head + blocks.
//
// Reading goes through VhdDisk over a storage that maps file offsets to these
// objects, so a vault disk reads (and chains) exactly like a file.
import { open as fsOpen, rename, rm, stat } from 'node:fs/promises';
import type { Disk } from '../format/disk.js';
import { FerryError, checkArg } from '../format/errors.js';
import { freeBuffer, returnTo } from '../format/buffers.js';
import { type FileRange, mappingAvailable, prefetchRange, sourceChanged } from '../format/filerange.js';
import { type ByteSource, type Decoded, decodeVhd } from '../format/vhd/decode.js';
import { inspectDecoded, type Inspection } from '../format/vhd/check.js';
import type { EmptyImage } from '../format/vhd/create.js';
import { HeaderStruct, SECTOR, UNUSED, bitmapSize } from '../format/vhd/layout.js';
import { type Problem, VhdError } from '../format/vhd/problems.js';
import { openChain } from '../format/vhd/chain.js';
import { VhdDisk, notAFile, openError, type VhdStorage } from '../format/vhd/vhd.js';
import { isZero, readAhead } from '../format/vhd/create.js';
import { fileEquals, writeError, tempBeside, writeAll } from '../format/fsio.js';

const MAGIC = Buffer.from('FRRYHEAD', 'latin1');
const FIXED_CHUNK = 2 * 1024 * 1024;

/** Where plaintext objects come from (a vault or a seed, unsealing on the way). */
export interface ObjectGetter {
  get(name: string): Promise<Buffer>;
  /** Every get gives a buffer of the caller's own (nothing else holds it): a reader may free it when done. */
  readonly fresh?: boolean;
}
/** Where plaintext objects go (sealed on the way). */
export interface ObjectPutter {
  /** With `give`, the putter may take `data`'s memory: the caller must not use it again. */
  put(name: string, data: Buffer, give?: boolean): Promise<void>;
  /** Puts bytes of an open file (the putter's sealing thread maps them); the file stays open until idle() resolves. */
  putRange?(name: string, range: FileRange): Promise<void>;
  /** Resolves when nothing put is still being read (never rejects). */
  idle?(): Promise<void>;
  /** Everything put so far is stored and durable before anything put after (a putter that batches durability needs it). */
  barrier?(): Promise<void>;
}

/** How far ahead of the sealing threads vhd import has the disk read (in blocks: 64 MiB of 2 MiB blocks). */
const PREFETCH_BLOCKS = 32;

export const diskPrefix = (id: string) => `disks/${id}/`;
export const headName = (id: string) => `disks/${id}/head`;
export const blockName = (id: string, index: number) => `disks/${id}/blocks/${index}`;

interface HeadMeta {
  v: 1;
  fileSize: number;
  type: 'dynamic' | 'differencing' | 'fixed';
  regions: Array<{ offset: number; length: number }>;
  fixedBlocks?: number[];
}

export interface Head {
  meta: HeadMeta;
  regions: Array<{ offset: number; data: Buffer }>;
}

export function encodeHead(meta: HeadMeta, regionData: Buffer[]): Buffer {
  const json = Buffer.from(JSON.stringify(meta));
  const len = Buffer.alloc(4);
  len.writeUInt32BE(json.length);
  return Buffer.concat([MAGIC, len, json, ...regionData]);
}

export function decodeHead(name: string, buf: Buffer): Head {
  const bad = (why: string) => new FerryError('DISK_BAD_HEAD', `${name}: not a disk head object (${why})`, { object: name });
  if (buf.length < 12 || !buf.subarray(0, 8).equals(MAGIC)) throw bad('no FRRYHEAD magic');
  const jl = buf.readUInt32BE(8);
  if (12 + jl > buf.length) throw bad('truncated metadata');
  let meta: HeadMeta;
  try {
    meta = JSON.parse(buf.toString('utf8', 12, 12 + jl)) as HeadMeta;
  } catch {
    throw bad('unreadable metadata');
  }
  if (meta.v !== 1 || !Array.isArray(meta.regions) || !Number.isSafeInteger(meta.fileSize)) throw bad('unknown version or fields');
  let at = 12 + jl;
  const regions = meta.regions.map((r) => {
    const data = buf.subarray(at, at + r.length);
    if (data.length !== r.length) throw bad('truncated region');
    at += r.length;
    return { offset: r.offset, data };
  });
  return { meta, regions };
}

/** Block index of each file position that starts a block, from the BAT inside the prefix. */
function batFromPrefix(prefix: Buffer, footer: Buffer | undefined): { bat: Uint32Array; span: number } | undefined {
  // The dynamic header is where the footer's Data Offset says (512 in what
  // qemu, Hyper-V and ferry write; the format allows more): the footer at the
  // end, else its copy at 0. storeVhdFile keeps the header and BAT in the prefix.
  const at = footer && footer.length >= 24 ? footer.readBigUInt64BE(16) : prefix.length >= 24 ? prefix.readBigUInt64BE(16) : -1n;
  if (at < 0n || at + 1024n > BigInt(prefix.length)) return undefined;
  const h = HeaderStruct.decode(prefix, Number(at));
  const t = Number(h.tableOffset);
  if (t + h.maxTableEntries * 4 > prefix.length) return undefined;
  const bat = new Uint32Array(h.maxTableEntries);
  for (let i = 0; i < bat.length; i++) bat[i] = prefix.readUInt32BE(t + i * 4);
  return { bat, span: bitmapSize(h.blockSize) + h.blockSize };
}

/** Read-only bytes of a stored VHD, fetched object by object, with a small block cache. */
export class StoredVhdStorage implements VhdStorage {
  readonly writable = false;
  private readonly starts: Array<{ pos: number; index: number }> = [];
  private span = 0;
  private readonly cache = new Map<number, Promise<Buffer>>();

  constructor(
    readonly name: string,
    readonly id: string,
    private readonly head: Head,
    private readonly objects: ObjectGetter,
    // 5 unsealed 2 MiB blocks: the read-ahead (1) and what a reader in data
    // order (restore) is still copying from. A restore of the bench tree
    // fetches each of its 976 blocks once with 5, 6, 8 or 16 (981-987
    // fetches), in the same time, and peaks 6 MiB lower with 5 than with 6,
    // 19 MiB lower than with 8. Random readers may want more.
    private readonly cacheBlocks = 5,
    private readonly readAhead = Math.max(0, Math.min(4, cacheBlocks - 4)),
  ) {
    checkArg(Number.isInteger(cacheBlocks) && cacheBlocks >= 1, 'cacheBlocks', 'an integer of at least 1', cacheBlocks);
    if (head.meta.type === 'fixed') {
      this.span = FIXED_CHUNK;
      for (const i of head.meta.fixedBlocks ?? []) this.starts.push({ pos: i * FIXED_CHUNK, index: i });
    } else {
      const b = batFromPrefix(head.regions[0]?.data ?? Buffer.alloc(0), head.regions[1]?.data);
      if (b) {
        this.span = b.span;
        b.bat.forEach((e, index) => {
          if (e !== UNUSED) this.starts.push({ pos: e * SECTOR, index });
        });
      }
    }
    this.starts.sort((a, b) => a.pos - b.pos);
  }

  async size(): Promise<number> {
    return this.head.meta.fileSize;
  }

  private block(index: number): Promise<Buffer> {
    let p = this.cache.get(index);
    if (p) {
      this.cache.delete(index);
      this.cache.set(index, p);
      return p;
    }
    const fetched = this.objects.get(blockName(this.id, index));
    p = fetched;
    fetched.catch(() => {
      if (this.cache.get(index) === fetched) this.cache.delete(index); // not a newer fetch of the same block
    });
    this.cache.set(index, p);
    // (cacheBlocks >= 1, checked in the constructor: the fetch just added is never the one evicted)
    if (this.cache.size > this.cacheBlocks) {
      const [old, gone] = this.cache.entries().next().value!;
      this.cache.delete(old);
      this.release(gone);
    }
    return p;
  }

  /** Copies in progress from each block (by its fetch). */
  private readonly users = new Map<Promise<Buffer>, number>();
  /** Evicted blocks still being copied from: freed when the last copy ends. */
  private readonly evicted = new Set<Promise<Buffer>>();

  private use(p: Promise<Buffer>): void {
    this.users.set(p, (this.users.get(p) ?? 0) + 1);
  }

  private done(p: Promise<Buffer>): void {
    const n = (this.users.get(p) ?? 1) - 1;
    if (n > 0) {
      this.users.set(p, n);
      return;
    }
    this.users.delete(p);
    if (this.evicted.delete(p)) this.release(p);
  }

  /**
   * Frees an evicted block's memory at once, when the getter hands out
   * buffers of the caller's own (a vault does): 2 MiB each, and the
   * collector lets dozens of them pile up before it runs.
   */
  private release(p: Promise<Buffer>): void {
    if (!this.objects.fresh) return;
    if (this.users.has(p)) this.evicted.add(p);
    else p.then(freeBuffer, () => {});
  }

  async read(position: number, length: number): Promise<Buffer> {
    const end = Math.min(position + length, this.head.meta.fileSize);
    if (end <= position) return Buffer.alloc(0);
    const out = Buffer.allocUnsafe(end - position);
    await this.fill(out, position);
    return out;
  }

  /** Reads into `buf` at `offset` (what VhdDisk uses when it can: no buffer of our own, no second copy); returns the bytes read. */
  async readInto(buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    const end = Math.min(position + length, this.head.meta.fileSize);
    if (end <= position) return 0;
    const n = end - position;
    const out = offset === 0 && n === buf.length ? buf : buf.subarray(offset, offset + n);
    await this.fill(out, position);
    return out.length;
  }

  /** Writes every byte of `out` with the stored bytes at `position`: what no region or block holds is zeroed (only that: the rest is copied over). */
  private fill(out: Buffer, position: number): Promise<void> {
    return this.fillFromOne(out, position) ?? this.fillMany(out, position);
  }

  private async fillMany(out: Buffer, position: number): Promise<void> {
    const end = position + out.length;
    const copied: number[] = []; // [from, to) in out, pairs
    const copy = (srcPos: number, src: Buffer) => {
      const a = Math.max(srcPos, position);
      const b = Math.min(srcPos + src.length, end);
      if (b <= a) return;
      src.copy(out, a - position, a - srcPos, b - srcPos);
      copied.push(a - position, b - position);
    };
    for (const r of this.head.regions) copy(r.offset, r.data);
    // Blocks overlapping [position, end): binary search for the first start <= position.
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid].pos + this.span <= position) lo = mid + 1;
      else hi = mid;
    }
    let k = lo;
    const pending: Array<{ pos: number; data: Promise<Buffer> }> = [];
    try {
      for (; k < this.starts.length && this.starts[k].pos < end; k++) {
        const data = this.block(this.starts[k].index);
        this.use(data);
        pending.push({ pos: this.starts[k].pos, data });
      }
    } catch (err) {
      for (const p of pending) this.done(p.data); // a getter that threw at once: release what we hold
      throw err;
    }
    // Sequential readers (restore, export) come back for the next blocks:
    // fetch and unseal them now, so the seal pool works on several at once.
    this.fetchAhead(k);
    try {
      for (const p of pending) copy(p.pos, await p.data);
    } finally {
      for (const p of pending) this.done(p.data);
    }
    zeroGaps(out, copied);
  }

  /** Starts fetching the blocks from the k-th on (readAhead of them) that the cache does not hold. */
  private fetchAhead(k: number): void {
    for (let n = 0; n < this.readAhead && k < this.starts.length; n++, k++) {
      const index = this.starts[k].index;
      if (!this.cache.has(index)) this.block(index).catch(() => {});
    }
  }

  /**
   * The k of the block that alone holds [position, end) (starts[k]), clear
   * of the head's regions; -1 when there is none such.
   */
  private oneBlock(position: number, end: number): number {
    for (const r of this.head.regions) if (r.offset < end && r.offset + r.data.length > position) return -1;
    // the last block starting at or before position
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid].pos <= position) lo = mid + 1;
      else hi = mid;
    }
    const at = this.starts[lo - 1];
    if (!at || at.pos + this.span < end || (lo < this.starts.length && this.starts[lo].pos < end)) return -1;
    return lo - 1;
  }

  /**
   * fill() for the common read, inside one block and clear of the head's
   * regions: one copy, none of fillMany's lists. Null when it does not apply.
   */
  private fillFromOne(out: Buffer, position: number): Promise<void> | null {
    const k = this.oneBlock(position, position + out.length);
    if (k < 0) return null;
    const data = this.block(this.starts[k].index);
    this.use(data);
    this.fetchAhead(k + 1);
    return this.copyOut(data, this.starts[k].pos, out, position);
  }

  /**
   * The bytes at [position, position + length) as a view into the block
   * that holds them, no copy (VhdStorage.view): the block stays in memory,
   * also once evicted, until freeBuffer(view) gives it back.
   */
  async view(position: number, length: number): Promise<Buffer | null> {
    const k = this.oneBlock(position, position + length);
    if (k < 0 || length === 0) return null;
    const pos = this.starts[k].pos;
    const data = this.block(this.starts[k].index);
    this.use(data);
    this.fetchAhead(k + 1);
    let b: Buffer;
    try {
      b = await data;
    } catch (err) {
      this.done(data);
      throw err;
    }
    if (b.length < position - pos + length) {
      this.done(data); // a short last block: read() zero-fills past its end
      return null;
    }
    const v = b.subarray(position - pos, position - pos + length);
    returnTo(v, () => this.done(data));
    return v;
  }

  private async copyOut(data: Promise<Buffer>, pos: number, out: Buffer, position: number): Promise<void> {
    let got: number;
    try {
      const b = await data;
      got = Math.max(0, Math.min(b.length - (position - pos), out.length));
      if (got > 0) b.copy(out, 0, position - pos, position - pos + got);
    } finally {
      this.done(data);
    }
    if (got < out.length) out.fill(0, got); // past the end of a short last block
  }

  async write(): Promise<void> {
    throw new Error(`${this.name} is read-only`);
  }
  async sync(): Promise<void> {}
  async close(): Promise<void> {
    this.cache.clear();
  }
}

function copyOverlap(srcPos: number, src: Buffer, dstPos: number, dst: Buffer): void {
  const a = Math.max(srcPos, dstPos);
  const b = Math.min(srcPos + src.length, dstPos + dst.length);
  if (b > a) src.copy(dst, a - dstPos, a - srcPos, b - srcPos);
}

/** Zeroes what of `out` the [from, to) pairs of `copied` (any order, overlapping or not) leave out. */
export function zeroGaps(out: Buffer, copied: number[]): void {
  const spans: [number, number][] = [];
  for (let i = 0; i < copied.length; i += 2) spans.push([copied[i], copied[i + 1]]);
  spans.sort((x, y) => x[0] - y[0]);
  let at = 0;
  for (const [a, b] of spans) {
    if (a > at) out.fill(0, at, a);
    at = Math.max(at, b);
  }
  if (at < out.length) out.fill(0, at);
}

/** Opens stored disk `id` as a Disk; `parent` is the disk it differs from (found by the caller). */
export async function openStoredDisk(objects: ObjectGetter, id: string, parent: Disk | null = null, label = `disk ${id}`): Promise<VhdDisk> {
  const head = decodeHead(headName(id), await objects.get(headName(id)));
  const storage = new StoredVhdStorage(label, id, head, objects);
  const disk = await VhdDisk.fromStorage(storage, { parent });
  if (disk.type === 'differencing' && !parent) {
    throw new VhdError({ code: 'VHD_PARENT_MISSING', severity: 'fatal', file: label, message: 'a differencing disk was opened without its parent' });
  }
  if (parent && disk.parentUniqueId && !disk.parentUniqueId.equals((parent as VhdDisk).uniqueId ?? disk.parentUniqueId)) {
    throw new VhdError({ code: 'VHD_PARENT_MISMATCH', severity: 'fatal', file: label, message: `parent ${parent.name} is not the disk this one was made from` });
  }
  return disk;
}

/**
 * `objects` with each disk head fetched (and unsealed) once: walking a chain
 * by its heads and then opening it read the same heads. Heads are shared
 * between the readers, which never free them (only blocks are freed).
 */
function headsOnce(objects: ObjectGetter): ObjectGetter {
  const heads = new Map<string, Promise<Buffer>>();
  return {
    fresh: objects.fresh,
    get: (name) => {
      if (!name.endsWith('/head')) return objects.get(name);
      let p = heads.get(name);
      if (!p) heads.set(name, (p = objects.get(name)));
      return p;
    },
  };
}

/** Stored disk `id` and the stored disks under it, each parent found by the unique id its child names. */
export async function openStoredChain(getter: ObjectGetter, id: string): Promise<VhdDisk> {
  const objects = headsOnce(getter);
  const ids: string[] = [];
  for (let cur: string | undefined = id; cur; ) {
    if (ids.includes(cur) || ids.length > 256) throw new FerryError('VHD_PARENT_CYCLE', `stored disk ${id}: its chain loops at ${cur}`);
    ids.push(cur);
    const d = await decodeStored(objects, cur);
    cur = d.type === 'differencing' && d.header ? d.header.parentUniqueId.toString('hex') : undefined;
  }
  let disk: VhdDisk | null = null;
  try {
    for (const x of ids.reverse()) disk = await openStoredDisk(objects, x, disk);
  } catch (err) {
    await disk?.close();
    throw err;
  }
  return disk!;
}

/** Decodes stored disk `id`'s VHD structures (footer, header, BAT, locators), reading no block. */
async function decodeStored(objects: ObjectGetter, id: string, withHead?: (h: Head) => void): Promise<Decoded> {
  const head = decodeHead(headName(id), await objects.get(headName(id)));
  withHead?.(head);
  return decodeVhd(new StoredVhdStorage(`disk ${id}`, id, head, objects));
}

/**
 * `ferry vhd info|check --vault V --disk ID`: as inspectVhd for a file, with
 * the parents found in the vault. With `readBlocks` (check), every block
 * object of every disk in the chain is also read and authenticated: a
 * missing or damaged one is a problem naming the object.
 */
export async function inspectStoredDisk(getter: ObjectGetter, id: string, readBlocks = false): Promise<Inspection> {
  const objects = headsOnce(getter);
  const r = await inspectDecoded(await decodeStored(objects, id), () => openStoredChain(objects, id));
  if (!readBlocks || r.problems.some((p) => p.severity === 'fatal')) return r;
  for (const layer of r.layers) {
    const disk = layer.uniqueId;
    if (!disk) continue;
    const blocks = await storedBlocks(objects, disk);
    await eachBlock(blocks, async (blk) => {
      try {
        await readStoredBlock(objects, blk);
      } catch (err) {
        r.problems.push({ code: 'VHD_BLOCK_UNREADABLE', severity: 'error', file: layer.file, message: `block ${blk.index}: ${(err as Error).message}` });
      }
    });
  }
  return r;
}

/** One block object of a stored disk, and the plaintext size it must have. */
export interface StoredBlock {
  index: number;
  name: string;
  size: number;
}

/** The block objects stored disk `id` refers to (from its head alone), in index order. */
export async function storedBlocks(objects: ObjectGetter, id: string): Promise<StoredBlock[]> {
  let head: Head | undefined;
  const d = await decodeStored(objects, id, (h) => (head = h));
  const indexes: number[] = [];
  if (d.bat) d.bat.forEach((e, i) => e !== UNUSED && indexes.push(i));
  else indexes.push(...(head?.meta.fixedBlocks ?? []));
  const span = d.bat ? bitmapSize(d.blockSize!) + d.blockSize! : FIXED_CHUNK;
  return indexes.map((index) => ({
    index,
    name: blockName(id, index),
    size: d.bat ? span : Math.min(FIXED_CHUNK, (d.size ?? 0) - index * FIXED_CHUNK),
  }));
}

/** Reads (and so authenticates) one block object; throws naming it when it cannot be read or has the wrong size. */
export async function readStoredBlock(objects: ObjectGetter, blk: StoredBlock): Promise<number> {
  const b = await objects.get(blk.name);
  const size = b.length;
  if (objects.fresh) freeBuffer(b);
  if (size !== blk.size) throw new Error(`object ${blk.name} holds ${size} bytes, not the block's ${blk.size}`);
  return size;
}

/** Runs `fn` on every block, four at a time. */
export async function eachBlock(blocks: StoredBlock[], fn: (b: StoredBlock) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < blocks.length) await fn(blocks[next++]);
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}

export interface StoredDiskInfo {
  id: string;
  type: string;
  /** Virtual size in bytes. */
  size: number;
  /** Size of the VHD file it was (what `vhd export --vault` gives back). */
  fileSize: number;
  allocatedBlocks: number;
  /** The disk it differs from, for a differencing disk. */
  parent?: string;
  /** Its parent has no head in the vault: it cannot be read. */
  parentMissing?: true;
}

/** Every disk a vault holds (by its head object), decoded from the heads alone. */
export async function listStoredDisks(
  objects: ObjectGetter,
  names: AsyncIterable<string>,
  /** A head that cannot be read or decoded: reported here, and the listing goes on (else it throws). */
  onDamaged?: (id: string, error: Error) => void,
): Promise<StoredDiskInfo[]> {
  const ids: string[] = [];
  for await (const n of names) {
    const m = /^disks\/([^/]+)\/head$/.exec(n);
    if (m) ids.push(m[1]);
  }
  ids.sort();
  const out: StoredDiskInfo[] = [];
  for (const id of ids) {
    let d: Decoded;
    let head: Head | undefined;
    try {
      d = await decodeStored(objects, id, (h) => (head = h));
    } catch (err) {
      if (!onDamaged || !(err instanceof Error)) throw err;
      onDamaged(id, err);
      continue;
    }
    const info: StoredDiskInfo = { id, type: d.type ?? 'unknown', size: d.size ?? 0, fileSize: d.fileSize, allocatedBlocks: 0 };
    if (d.bat) {
      for (const e of d.bat) if (e !== UNUSED) info.allocatedBlocks++;
    } else if (d.type === 'fixed') {
      // a fixed disk stores its non-zero 2 MiB chunks
      info.allocatedBlocks = head?.meta.fixedBlocks?.length ?? 0;
    }
    if (d.type === 'differencing' && d.header) info.parent = d.header.parentUniqueId.toString('hex');
    out.push(info);
  }
  for (const info of out) if (info.parent && !ids.includes(info.parent)) info.parentMissing = true;
  return out;
}

/** Stores the VHD file at `path` as objects; returns its disk id (the VHD unique id in hex). */
export async function storeVhdFile(
  path: string,
  out: ObjectPutter,
  onProgress?: (done: number, total: number) => void,
  /**
   * The vault's stored disks, when storing into one: a disk it holds is
   * never replaced, and a differencing disk is stored only over its parent.
   */
  vault?: { has: (id: string) => Promise<boolean>; objects: ObjectGetter },
): Promise<{ id: string; blocks: number; bytes: number; already?: true; problems?: Problem[] }> {
  // the kind first: a fifo would block the open, a folder fails at the first read
  const kind = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw openError(path, err);
  });
  if (!kind.isFile()) throw notAFile(path, kind, 'a VHD file');
  const fh = await fsOpen(path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw openError(path, err);
  });
  let rangesOut: (() => Promise<void>) | undefined;
  try {
    const fileSize = (await fh.stat()).size;
    const src: ByteSource = {
      name: path,
      size: async () => fileSize,
      read: async (pos, len) => {
        // A buffer of its own memory: block buffers are handed to the putter (give) and move to a sealing thread uncopied.
        const b = Buffer.allocUnsafeSlow(Math.max(0, Math.min(len, fileSize - pos)));
        let done = 0;
        while (done < b.length) {
          const { bytesRead } = await fh.read(b, done, b.length - done, pos + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return done === b.length ? b : b.subarray(0, done);
      },
    };
    // What the store reads must be there: a file that ends sooner now than when
    // it was opened changed under us (else a block would be stored short).
    const readWhole = async (pos: number, len: number): Promise<Buffer> => {
      const b = await src.read(pos, len);
      if (b.length < Math.max(0, Math.min(len, fileSize - pos))) throw sourceChanged({ file: path, offset: pos, length: len }, pos + b.length);
      return b;
    };
    const d = await decodeVhd(src);
    const fatal = d.problems.find((p) => p.severity === 'fatal' || p.code === 'VHD_BAT_PAST_END' || p.code === 'VHD_BAT_OVERLAP' || p.code === 'VHD_NO_FOOTER');
    if (fatal) {
      // (the problem's own words say how it is read, not why it is refused)
      throw new VhdError(fatal.severity === 'fatal' ? fatal : { ...fatal, message: `${fatal.message.replace(/; using the copy at offset 0$/, '')}: a vault keeps only whole, sound VHDs (ferry vhd check lists every problem; ferry vhd export FILE --to NEW.vhd writes a sound copy of what it reads)` });
    }
    const id = d.footer!.uniqueId.toString('hex');
    // A stored disk is never replaced: recovery points and children stored
    // over it read it (a VHD written by Hyper-V or qemu keeps its unique id).
    // The same file again is already there; another with its id is refused.
    if (vault && (await vault.has(id))) {
      if (await storedEquals(vault.objects, id, path)) return { id, blocks: 0, bytes: 0, already: true };
      throw new FerryError(
        'VHD_ALREADY_STORED',
        `${path} has the unique id of disk ${id}, which the vault already holds with other content: a stored disk is never replaced (points and disks stored over it read it); to store it as another disk, copy it under a new unique id (ferry vhd export FILE --type dynamic --to NEW.vhd)`,
        { id, file: path },
      );
    }
    if (d.type === 'differencing' && vault && d.header) {
      const parent = d.header.parentUniqueId.toString('hex');
      if (!(await vault.has(parent))) {
        throw new FerryError(
          'VHD_PARENT_NOT_STORED',
          `${path} is a differencing disk over ${d.parentName || 'a parent'} (disk ${parent}), which is not in the vault: vhd import its parent first`,
          { file: path, parent },
        );
      }
      // The parent file beside it, when there is one, must be the disk the
      // vault holds: a merge into a parent keeps its unique id, and a child
      // made after it stored over the older copy would read wrong bytes.
      const chain = await openChain(path).catch(() => null);
      const parentFile = chain?.parent?.name;
      await chain?.close();
      if (parentFile && !(await storedEquals(vault.objects, parent, parentFile))) {
        throw new FerryError(
          'VHD_PARENT_CHANGED',
          `${path} is a differencing disk over ${parentFile}, which has changed since the vault stored it as disk ${parent} (a merge into it keeps its unique id): stored over the vault's copy it would read wrong; store the chain flattened instead (ferry vhd export ${path} --type dynamic --to NEW.vhd, then vhd import NEW.vhd)`,
          { file: path, parent, parentFile },
        );
      }
    }
    let blocks = 0;
    let bytes = 0;
    if (d.type === 'fixed') {
      const fixedBlocks: number[] = [];
      const size = d.size!;
      const count = Math.ceil(size / FIXED_CHUNK);
      const next = readAhead(count, (i) => readWhole(i * FIXED_CHUNK, Math.min(FIXED_CHUNK, size - i * FIXED_CHUNK)));
      for (let i = 0; i < count; i++) {
        const b = await next();
        if (!isZero(b)) {
          bytes += b.length;
          await out.put(blockName(id, i), b, true);
          fixedBlocks.push(i);
          blocks++;
        }
        onProgress?.(Math.min((i + 1) * FIXED_CHUNK, size), size);
      }
      const footer = await readWhole(fileSize - SECTOR, SECTOR);
      await out.barrier?.(); // the blocks are durable before the head that makes them a disk
      await out.put(headName(id), encodeHead({ v: 1, fileSize, type: 'fixed', regions: [{ offset: fileSize - SECTOR, length: SECTOR }], fixedBlocks }, [footer]));
      return { id, blocks, bytes, problems: d.problems.filter((p) => p.severity === 'error') };
    }
    const bat = d.bat!;
    const span = bitmapSize(d.blockSize!) + d.blockSize!;
    let firstBlock = d.footerOffset!;
    for (const e of bat) if (e !== UNUSED) firstBlock = Math.min(firstBlock, e * SECTOR);
    unstorableLayout(path, d, firstBlock);
    const used: number[] = [];
    for (let i = 0; i < bat.length; i++) if (bat[i] !== UNUSED) used.push(i);
    // With a putter that can, the sealing threads map each block where the
    // page cache holds it (no copy through this thread), and the disk reads
    // PREFETCH_BLOCKS ahead of them; else this thread reads each block.
    const viaRanges = out.putRange !== undefined && out.idle !== undefined && mappingAvailable();
    // (within the file: a BAT entry past its end was refused above)
    const rangeOf = (k: number): FileRange => ({ fd: fh.fd, offset: bat[used[k]] * SECTOR, length: Math.min(span, fileSize - bat[used[k]] * SECTOR), file: path });
    const prefetching = new Set<Promise<void>>();
    if (viaRanges) rangesOut = async () => void (await Promise.all([out.idle!(), ...prefetching]));
    const next = viaRanges ? null : readAhead(used.length, (k) => readWhole(bat[used[k]] * SECTOR, span));
    let prefetched = 0;
    for (let k = 0; k < used.length; k++) {
      const i = used[k];
      if (next) {
        const b = await next();
        bytes += b.length;
        await out.put(blockName(id, i), b, true);
      } else {
        for (; prefetched < Math.min(used.length, k + PREFETCH_BLOCKS); prefetched++) {
          const p = prefetchRange(rangeOf(prefetched)).then(() => void prefetching.delete(p));
          prefetching.add(p);
        }
        const range = rangeOf(k);
        bytes += range.length;
        await out.putRange!(blockName(id, i), range);
      }
      blocks++;
      onProgress?.(i + 1, bat.length);
    }
    const prefix = await readWhole(0, firstBlock);
    const tailLen = fileSize - d.footerOffset!;
    const tail = await readWhole(d.footerOffset!, tailLen);
    await out.barrier?.(); // the blocks are durable before the head that makes them a disk
    await out.put(
      headName(id),
      encodeHead({ v: 1, fileSize, type: d.type!, regions: [{ offset: 0, length: prefix.length }, { offset: d.footerOffset!, length: tailLen }] }, [prefix, tail]),
    );
    return { id, blocks, bytes, problems: d.problems.filter((p) => p.severity === 'error') };
  } finally {
    await rangesOut?.(); // (the sealing threads and the prefetches use fh)
    await fh.close();
  }
}

/**
 * A stored disk keeps the bytes before its first block and the footer; the
 * blocks are objects. A VHD whose dynamic header, BAT or parent locators lie
 * after its first block (the format allows it; qemu-img, Hyper-V and ferry
 * never write it) would lose them: refused, with the way to a storable copy.
 */
function unstorableLayout(path: string, d: Decoded, firstBlock: number): void {
  const h = d.header!;
  const parts: Array<[string, number, number]> = [
    ['dynamic header', d.headerOffset!, 1024],
    ['block allocation table', Number(h.tableOffset), Math.ceil((h.maxTableEntries * 4) / SECTOR) * SECTOR],
  ];
  for (const l of d.locators) if (l.dataLength > 0) parts.push([`parent locator ${l.index + 1} (${l.platformCode})`, Number(l.dataOffset), l.dataLength]);
  const late = parts.find(([, at, len]) => at + len > firstBlock);
  if (!late) return;
  const [what, at] = late;
  throw new FerryError(
    'VHD_LAYOUT_UNSTORABLE',
    `${path} keeps its ${what} at offset ${at}, after its first data block (offset ${firstBlock}): a vault keeps a VHD's metadata from the bytes before its blocks, so it could not give this file back; write a copy laid out as qemu-img and Hyper-V write VHDs (ferry vhd export ${path} --type dynamic --to NEW.vhd, a differencing disk flattened) and vhd import that`,
    { file: path, part: what, offset: at, firstBlock },
  );
}

/**
 * Whether stored disk `id` is byte for byte the VHD file at `path` (a
 * second import of the same file). Stops at the first difference.
 */
export async function storedEquals(objects: ObjectGetter, id: string, path: string): Promise<boolean> {
  const head = decodeHead(headName(id), await objects.get(headName(id)));
  const storage = new StoredVhdStorage(path, id, head, objects, 12);
  return fileEquals(path, head.meta.fileSize, (pos, len) => storage.read(pos, len), 8 * 1024 * 1024);
}

/** Writes stored disk `id` back as the exact VHD file it was. */
export async function exportStoredVhd(objects: ObjectGetter, id: string, to: string): Promise<void> {
  const head = decodeHead(headName(id), await objects.get(headName(id)));
  const storage = new StoredVhdStorage(to, id, head, objects, 12);
  // under a temporary name until whole: a damaged object leaves no partial VHD at `to`
  const tmp = tempBeside(to);
  const fh = await fsOpen(tmp, 'w').catch((err: unknown) => Promise.reject(writeError(err, to, `nothing was written at ${to}`)));
  try {
    const chunk = 8 * 1024 * 1024;
    for (let pos = 0; pos < head.meta.fileSize; pos += chunk) {
      const b = await storage.read(pos, Math.min(chunk, head.meta.fileSize - pos));
      await writeAll(fh, b, pos);
    }
    await fh.truncate(head.meta.fileSize);
    await fh.sync();
    await fh.close();
    await rename(tmp, to);
  } catch (err) {
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
    throw writeError(err, to, `free space there or write it elsewhere; nothing was written at ${to}`, `nothing was written at ${to}`);
  }
}

/**
 * Storage for a new stored disk being written (seed, backup): VhdDisk writes
 * into it as into a file; finished blocks go out as objects as soon as more
 * than `keep` blocks are in memory; `finish()` writes the head last.
 * A block written again after it went out is fetched back and re-sent.
 */
export class SpoolStorage implements VhdStorage {
  readonly writable = true;
  private prefix: Buffer;
  private fileSize: number;
  private readonly span: number;
  private readonly blocksAt = new Map<number, number>(); // file position -> block index
  private readonly live = new Map<number, Buffer>(); // block index -> bytes, insertion = recency
  private readonly pendingAt = new Map<number, Buffer>(); // written, index not yet known
  private readonly sent = new Set<number>();
  private readonly pinned = new Set<number>();
  private batOffset: number;
  private batEnd: number;
  private inflight: Promise<void>[] = [];

  constructor(
    readonly name: string,
    readonly id: string,
    img: EmptyImage,
    private readonly objects: ObjectPutter & Partial<ObjectGetter>,
    private readonly keep = 8,
  ) {
    this.prefix = Buffer.from(img.prefix);
    this.fileSize = img.prefix.length + 512;
    const h = HeaderStruct.decode(this.prefix, 512);
    this.span = bitmapSize(h.blockSize) + h.blockSize;
    this.batOffset = Number(h.tableOffset);
    this.batEnd = this.batOffset + h.maxTableEntries * 4;
    this.footer = img.footer;
  }
  private readonly footer: Buffer;

  /** Keeps block `index` in memory until finish() (e.g. a superblock rewritten at the end). */
  pin(index: number): void {
    this.pinned.add(index);
  }

  async size(): Promise<number> {
    return this.fileSize;
  }

  private indexAt(pos: number): { index: number | undefined; start: number } | undefined {
    // Blocks start at prefix.length + k * span.
    if (pos < this.prefix.length) return undefined;
    const start = this.prefix.length + Math.floor((pos - this.prefix.length) / this.span) * this.span;
    return { index: this.blocksAt.get(start), start };
  }

  private async blockBytes(index: number): Promise<Buffer> {
    let b = this.live.get(index);
    if (b) {
      this.live.delete(index);
      this.live.set(index, b);
      return b;
    }
    if (!this.sent.has(index) || !this.objects.get) throw new Error(`${this.name}: block ${index} is gone`);
    b = Buffer.from(await this.objects.get(blockName(this.id, index)));
    this.live.set(index, b);
    // (a catalog read back at the end of a seed fetches its blocks one after another: held to `keep` too)
    await this.evict();
    return b;
  }

  async read(position: number, length: number): Promise<Buffer> {
    const end = Math.min(position + length, this.fileSize);
    const out = Buffer.alloc(Math.max(0, end - position));
    copyOverlap(0, this.prefix, position, out);
    for (let p = position; p < end; ) {
      const at = this.indexAt(p);
      if (!at) {
        p = this.prefix.length;
        continue;
      }
      if (at.index !== undefined) copyOverlap(at.start, await this.blockBytes(at.index), position, out);
      else {
        const pend = this.pendingAt.get(at.start);
        if (pend) copyOverlap(at.start, pend, position, out);
      }
      p = at.start + this.span;
    }
    if (end > this.fileSize - 512) copyOverlap(this.fileSize - 512, this.footer, position, out);
    return out;
  }

  async write(position: number, data: Buffer): Promise<void> {
    if (position < this.prefix.length) {
      // Header or BAT update; a BAT entry tells which block a new block is.
      data.copy(this.prefix, position);
      if (position >= this.batOffset && position + data.length <= this.batEnd) {
        for (let o = position - ((position - this.batOffset) % 4); o < position + data.length; o += 4) {
          const index = (o - this.batOffset) / 4;
          const e = this.prefix.readUInt32BE(o);
          if (e === UNUSED) continue;
          const start = e * SECTOR;
          const pend = this.pendingAt.get(start);
          if (pend) {
            this.pendingAt.delete(start);
            this.blocksAt.set(start, index);
            this.live.set(index, pend);
            await this.evict();
          }
        }
      }
      return;
    }
    const at0 = this.indexAt(position)!;
    if (data.length === 512 && position === at0.start && at0.index === undefined && !this.pendingAt.has(at0.start)) {
      // The footer VhdDisk moves to the new end after each allocation.
      this.fileSize = Math.max(this.fileSize, position + 512);
      return;
    }
    const at = this.indexAt(position)!;
    if (position === at.start && data.length === this.span && at.index === undefined) {
      // A new block from VhdDisk.allocate, which never touches the buffer again: kept without a copy.
      this.pendingAt.set(at.start, data);
      this.fileSize = Math.max(this.fileSize, position + data.length + 512);
      return;
    }
    if (at.index === undefined) throw new Error(`${this.name}: write at ${position} outside any block`);
    const b = await this.blockBytes(at.index);
    data.copy(b, position - at.start);
    this.sent.delete(at.index);
  }

  private async evict(): Promise<void> {
    while (this.live.size - this.pinnedLive() > this.keep) {
      const victim = [...this.live.keys()].find((i) => !this.pinned.has(i))!;
      await this.send(victim);
    }
  }

  private pinnedLive(): number {
    let n = 0;
    for (const i of this.pinned) if (this.live.has(i)) n++;
    return n;
  }

  private async send(index: number): Promise<void> {
    const b = this.live.get(index)!;
    this.live.delete(index);
    if (this.sent.has(index)) return; // unchanged since it went out
    this.sent.add(index);
    await this.objects.put(blockName(this.id, index), b);
  }

  /** Sends every block still in memory, then the head. Returns what was stored. */
  async finish(): Promise<{ blocks: number }> {
    for (const index of [...this.live.keys()]) await this.send(index);
    const tailOffset = this.fileSize - 512;
    await this.objects.put(
      headName(this.id),
      encodeHead(
        { v: 1, fileSize: this.fileSize, type: this.prefix.readUInt32BE(60) === 4 ? 'differencing' : 'dynamic', regions: [{ offset: 0, length: this.prefix.length }, { offset: tailOffset, length: 512 }] },
        [this.prefix, this.footer],
      ),
    );
    return { blocks: this.sent.size };
  }

  async sync(): Promise<void> {}
  async close(): Promise<void> {}
}
