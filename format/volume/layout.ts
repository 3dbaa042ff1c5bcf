// The files-kind volume: ferry's own small filesystem inside a virtual disk.
// Prose spec: docs/volume-format.md. All integers little-endian.
//
//   disk offset 0          superblock (4096 bytes, table below)
//   4096 .. 1 MiB          reserved (zero)
//   1 MiB ..               data area: file data extents and the catalog's
//                          extents, each starting on a 4 KiB boundary, laid
//                          out in the order they were written; the
//                          allocation pointer is the first never-used byte.
//
// Superblock (4096 bytes at offset 0):
//    0   8  magic        "FERRYVOL"
//    8   4  version      1
//   12   4  sbSize       4096
//   16  16  uuid         volume id (random)
//   32   8  generation   1 for a fresh volume, +1 for every writer that updates it
//   40   8  writtenNs    time of the write, ns since the epoch (signed)
//   48   4  chunkSize    bytes of file data per checksum (1 MiB)
//   52   4  align        alignment of every extent start on the disk (4096)
//   56   8  dataStart    first byte of the data area (1 MiB)
//   64   8  allocPtr     first byte of the data area never written
//   72   8  catalogSize  bytes of the serialized SQLite catalog
//   80   4  catalogExtentCount
//   84   4  flags        0
//   88  32  catalogSha256  SHA-256 of the catalog's bytes
//  120   8  diskSize     virtual size of the disk the volume was made on
//  128 128  reserved (zero)
//  256 16*n catalog extents {diskOffset u64, length u64}, n <= 236, rest zero
// 4032  32  reserved (zero)
// 4064  32  sbSha256     SHA-256 of bytes 0..4063
import { createHash } from 'node:crypto';

export const MAGIC = 'FERRYVOL';
export const VERSION = 1;
export const SUPERBLOCK_SIZE = 4096;
export const ALIGN = 4096;
export const DATA_START = 1024 * 1024;
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
export const HASH_SIZE = 32;
export const MAX_CATALOG_EXTENTS = 236;
const EXTENTS_AT = 256;
const SB_SUM_AT = 4064;

type FieldType = 'u32' | 'u64' | 'i64' | 'bytes' | 'ascii';
interface Field {
  name: keyof SuperblockFields;
  offset: number;
  size: number;
  type: FieldType;
}

export interface SuperblockFields {
  magic: string;
  version: number;
  sbSize: number;
  uuid: Buffer;
  generation: number;
  writtenNs: bigint;
  chunkSize: number;
  align: number;
  dataStart: number;
  allocPtr: number;
  catalogSize: number;
  catalogExtentCount: number;
  flags: number;
  catalogSha256: Buffer;
  diskSize: number;
}

export interface DiskRange {
  diskOffset: number;
  length: number;
}

export interface Superblock extends SuperblockFields {
  catalogExtents: DiskRange[];
}

const FIELDS: Field[] = [
  { name: 'magic', offset: 0, size: 8, type: 'ascii' },
  { name: 'version', offset: 8, size: 4, type: 'u32' },
  { name: 'sbSize', offset: 12, size: 4, type: 'u32' },
  { name: 'uuid', offset: 16, size: 16, type: 'bytes' },
  { name: 'generation', offset: 32, size: 8, type: 'u64' },
  { name: 'writtenNs', offset: 40, size: 8, type: 'i64' },
  { name: 'chunkSize', offset: 48, size: 4, type: 'u32' },
  { name: 'align', offset: 52, size: 4, type: 'u32' },
  { name: 'dataStart', offset: 56, size: 8, type: 'u64' },
  { name: 'allocPtr', offset: 64, size: 8, type: 'u64' },
  { name: 'catalogSize', offset: 72, size: 8, type: 'u64' },
  { name: 'catalogExtentCount', offset: 80, size: 4, type: 'u32' },
  { name: 'flags', offset: 84, size: 4, type: 'u32' },
  { name: 'catalogSha256', offset: 88, size: 32, type: 'bytes' },
  { name: 'diskSize', offset: 120, size: 8, type: 'u64' },
];

// Checked when the module loads: fields in order and clear of the extent table.
{
  let end = 0;
  for (const f of FIELDS) {
    if (f.offset < end) throw new Error(`superblock.${f.name} overlaps the previous field`);
    end = f.offset + f.size;
  }
  if (end > EXTENTS_AT) throw new Error('superblock fields run into the extent table');
  if (EXTENTS_AT + MAX_CATALOG_EXTENTS * 16 > SB_SUM_AT - 32) throw new Error('superblock extent table too large');
}

export function encodeSuperblock(sb: Superblock): Buffer {
  if (sb.catalogExtents.length > MAX_CATALOG_EXTENTS) {
    throw new Error(`catalog has ${sb.catalogExtents.length} extents, at most ${MAX_CATALOG_EXTENTS} fit`);
  }
  const buf = Buffer.alloc(SUPERBLOCK_SIZE);
  const v = { ...sb, catalogExtentCount: sb.catalogExtents.length } as unknown as Record<string, unknown>;
  for (const f of FIELDS) {
    const x = v[f.name];
    switch (f.type) {
      case 'u32': buf.writeUInt32LE(x as number, f.offset); break;
      case 'u64': buf.writeBigUInt64LE(BigInt(x as number), f.offset); break;
      case 'i64': buf.writeBigInt64LE(x as bigint, f.offset); break;
      case 'ascii': buf.write(x as string, f.offset, f.size, 'latin1'); break;
      case 'bytes': (x as Buffer).copy(buf, f.offset, 0, f.size); break;
    }
  }
  sb.catalogExtents.forEach((e, i) => {
    buf.writeBigUInt64LE(BigInt(e.diskOffset), EXTENTS_AT + i * 16);
    buf.writeBigUInt64LE(BigInt(e.length), EXTENTS_AT + i * 16 + 8);
  });
  createHash('sha256').update(buf.subarray(0, SB_SUM_AT)).digest().copy(buf, SB_SUM_AT);
  return buf;
}

export interface DecodedSuperblock {
  sb: Superblock;
  /** What is wrong, empty when the superblock is sound. */
  problems: { code: string; field: string; message: string }[];
}

/** Tolerant decode: returns the fields and every problem found; `checkSuperblock` decides. */
export function decodeSuperblock(buf: Buffer): DecodedSuperblock {
  const problems: DecodedSuperblock['problems'] = [];
  // Problems in the documented order: magic, checksum, version, then the
  // ranges of fields (a block of other data is "no ferry volume here", not
  // "generation is too large").
  const ranges: DecodedSuperblock['problems'] = [];
  const out: Record<string, unknown> = {};
  for (const f of FIELDS) {
    switch (f.type) {
      case 'u32': out[f.name] = buf.readUInt32LE(f.offset); break;
      case 'u64': {
        const n = buf.readBigUInt64LE(f.offset);
        if (n > BigInt(Number.MAX_SAFE_INTEGER)) ranges.push({ code: 'VOLUME_BAD_FIELD', field: f.name, message: `${f.name} is too large (${n})` });
        out[f.name] = Number(n);
        break;
      }
      case 'i64': out[f.name] = buf.readBigInt64LE(f.offset); break;
      case 'ascii': out[f.name] = buf.toString('latin1', f.offset, f.offset + f.size); break;
      case 'bytes': out[f.name] = Buffer.from(buf.subarray(f.offset, f.offset + f.size)); break;
    }
  }
  const sb = out as unknown as Superblock;
  sb.catalogExtents = [];
  if (sb.magic !== MAGIC) {
    problems.push({ code: 'VOLUME_BAD_MAGIC', field: 'magic', message: `no ferry volume here (magic ${JSON.stringify(sb.magic)}, expected "${MAGIC}")` });
  }
  const sum = createHash('sha256').update(buf.subarray(0, SB_SUM_AT)).digest();
  if (!sum.equals(buf.subarray(SB_SUM_AT, SB_SUM_AT + 32))) {
    problems.push({ code: 'VOLUME_BAD_CHECKSUM', field: 'sbSha256', message: 'superblock checksum does not match' });
  }
  if (sb.version !== VERSION) {
    problems.push({ code: 'VOLUME_BAD_VERSION', field: 'version', message: `volume format version ${sb.version} is not supported (this ferry reads ${VERSION})` });
  }
  problems.push(...ranges);
  if (sb.catalogExtentCount > MAX_CATALOG_EXTENTS) {
    problems.push({ code: 'VOLUME_BAD_FIELD', field: 'catalogExtentCount', message: `catalogExtentCount ${sb.catalogExtentCount} exceeds ${MAX_CATALOG_EXTENTS}` });
  } else {
    for (let i = 0; i < sb.catalogExtentCount; i++) {
      sb.catalogExtents.push({
        diskOffset: Number(buf.readBigUInt64LE(EXTENTS_AT + i * 16)),
        length: Number(buf.readBigUInt64LE(EXTENTS_AT + i * 16 + 8)),
      });
    }
  }
  const total = sb.catalogExtents.reduce((a, e) => a + e.length, 0);
  if (problems.length === 0 && total !== sb.catalogSize) {
    problems.push({ code: 'VOLUME_BAD_FIELD', field: 'catalogExtents', message: `catalog extents hold ${total} bytes, catalogSize says ${sb.catalogSize}` });
  }
  if (problems.length === 0 && (sb.chunkSize === 0 || sb.chunkSize % sb.align !== 0)) {
    problems.push({ code: 'VOLUME_BAD_FIELD', field: 'chunkSize', message: `chunkSize ${sb.chunkSize} is not a multiple of the alignment ${sb.align}` });
  }
  return { sb, problems };
}

export function alignUp(n: number, a: number = ALIGN): number {
  return Math.ceil(n / a) * a;
}
