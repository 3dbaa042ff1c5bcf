// VHD 1.0 on-disk structures (all big-endian).
//
// Footer (512 bytes; dynamic and differencing disks also keep a copy at 0):
//   0 cookie "conectix" | 8 features | 12 version 0x00010000 | 16 data offset u64
//   24 timestamp (s since 2000-01-01) | 28 creator app | 32 creator version
//   36 creator OS | 40 original size u64 | 48 current size u64
//   56 cylinders u16 | 58 heads u8 | 59 sectors/track u8 | 60 disk type
//   64 checksum | 68 unique id (16) | 84 saved state | 85..511 reserved
// Dynamic header (1024 bytes, at footer.dataOffset):
//   0 cookie "cxsparse" | 8 data offset (all ones) | 16 table offset u64
//   24 version | 28 max table entries | 32 block size | 36 checksum
//   40 parent unique id (16) | 56 parent timestamp | 60 reserved
//   64 parent name (512, UTF-16BE) | 576 parent locators 8 x 24 | 768 reserved
// Parent locator entry (24 bytes):
//   0 platform code | 4 platform data space | 8 data length | 12 reserved
//   16 platform data offset u64
// BAT: u32 sector offset of each block (its bitmap), 0xFFFFFFFF = absent.
// Block: sector bitmap (MSB first, rounded up to 512 bytes) then data.
import { defineStruct } from './struct.js';

export const SECTOR = 512;
export const DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024;
export const MAX_VHD_SIZE = 0xff000000 * SECTOR; // 2040 GiB
export const UNUSED = 0xffffffff;
export const FOOTER_COOKIE = 'conectix';
export const HEADER_COOKIE = 'cxsparse';
export const VHD_VERSION = 0x00010000;
export const FIXED_DATA_OFFSET = 0xffffffffffffffffn;
/** Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC). */
export const VHD_EPOCH = 946684800;

export const DiskType = { fixed: 2, dynamic: 3, differencing: 4 } as const;
export type DiskTypeName = keyof typeof DiskType;
export function diskTypeName(n: number): DiskTypeName | undefined {
  return (Object.keys(DiskType) as DiskTypeName[]).find((k) => DiskType[k] === n);
}

export interface Footer {
  cookie: string;
  features: number;
  version: number;
  dataOffset: bigint;
  timestamp: number;
  creatorApp: string;
  creatorVersion: number;
  creatorOs: string;
  originalSize: bigint;
  currentSize: bigint;
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
  diskType: number;
  checksum: number;
  uniqueId: Buffer;
  savedState: number;
}

export const FooterStruct = defineStruct<Footer>('footer', 512, [
  { name: 'cookie', offset: 0, size: 8, type: 'ascii' },
  { name: 'features', offset: 8, size: 4, type: 'u32' },
  { name: 'version', offset: 12, size: 4, type: 'u32' },
  { name: 'dataOffset', offset: 16, size: 8, type: 'u64' },
  { name: 'timestamp', offset: 24, size: 4, type: 'u32' },
  { name: 'creatorApp', offset: 28, size: 4, type: 'ascii' },
  { name: 'creatorVersion', offset: 32, size: 4, type: 'u32' },
  { name: 'creatorOs', offset: 36, size: 4, type: 'ascii' },
  { name: 'originalSize', offset: 40, size: 8, type: 'u64' },
  { name: 'currentSize', offset: 48, size: 8, type: 'u64' },
  { name: 'cylinders', offset: 56, size: 2, type: 'u16' },
  { name: 'heads', offset: 58, size: 1, type: 'u8' },
  { name: 'sectorsPerTrack', offset: 59, size: 1, type: 'u8' },
  { name: 'diskType', offset: 60, size: 4, type: 'u32' },
  { name: 'checksum', offset: 64, size: 4, type: 'u32' },
  { name: 'uniqueId', offset: 68, size: 16, type: 'bytes' },
  { name: 'savedState', offset: 84, size: 1, type: 'u8' },
]);
export const FOOTER_CHECKSUM_OFFSET = 64;

export interface ParentLocator {
  platformCode: string;
  dataSpace: number;
  dataLength: number;
  reserved: number;
  dataOffset: bigint;
}

export const LocatorStruct = defineStruct<ParentLocator>('parent locator', 24, [
  { name: 'platformCode', offset: 0, size: 4, type: 'ascii' },
  { name: 'dataSpace', offset: 4, size: 4, type: 'u32' },
  { name: 'dataLength', offset: 8, size: 4, type: 'u32' },
  { name: 'reserved', offset: 12, size: 4, type: 'u32' },
  { name: 'dataOffset', offset: 16, size: 8, type: 'u64' },
]);

export interface DynamicHeader {
  cookie: string;
  dataOffset: bigint;
  tableOffset: bigint;
  version: number;
  maxTableEntries: number;
  blockSize: number;
  checksum: number;
  parentUniqueId: Buffer;
  parentTimestamp: number;
  parentName: Buffer;
  locators: Buffer;
}

export const HeaderStruct = defineStruct<DynamicHeader>('dynamic header', 1024, [
  { name: 'cookie', offset: 0, size: 8, type: 'ascii' },
  { name: 'dataOffset', offset: 8, size: 8, type: 'u64' },
  { name: 'tableOffset', offset: 16, size: 8, type: 'u64' },
  { name: 'version', offset: 24, size: 4, type: 'u32' },
  { name: 'maxTableEntries', offset: 28, size: 4, type: 'u32' },
  { name: 'blockSize', offset: 32, size: 4, type: 'u32' },
  { name: 'checksum', offset: 36, size: 4, type: 'u32' },
  { name: 'parentUniqueId', offset: 40, size: 16, type: 'bytes' },
  { name: 'parentTimestamp', offset: 56, size: 4, type: 'u32' },
  { name: 'parentName', offset: 64, size: 512, type: 'bytes' },
  { name: 'locators', offset: 576, size: 8 * 24, type: 'bytes' },
]);
export const HEADER_CHECKSUM_OFFSET = 36;

/** The VHD checksum: one's complement of the byte sum, the checksum field counted as zero. */
export function vhdChecksum(buf: Buffer, checksumOffset: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) {
    if (i >= checksumOffset && i < checksumOffset + 4) continue;
    sum += buf[i];
  }
  return ~sum >>> 0;
}

export function encodeFooter(f: Footer): Buffer {
  const buf = FooterStruct.encode({ ...f, checksum: 0 });
  buf.writeUInt32BE(vhdChecksum(buf, FOOTER_CHECKSUM_OFFSET), FOOTER_CHECKSUM_OFFSET);
  return buf;
}

export function encodeHeader(h: DynamicHeader): Buffer {
  const buf = HeaderStruct.encode({ ...h, checksum: 0 });
  buf.writeUInt32BE(vhdChecksum(buf, HEADER_CHECKSUM_OFFSET), HEADER_CHECKSUM_OFFSET);
  return buf;
}

export function bitmapSize(blockSize: number): number {
  const bytes = Math.ceil(blockSize / SECTOR / 8);
  return Math.ceil(bytes / SECTOR) * SECTOR;
}

export function vhdTimestamp(date: Date = new Date()): number {
  return Math.max(0, Math.floor(date.getTime() / 1000) - VHD_EPOCH) >>> 0;
}
