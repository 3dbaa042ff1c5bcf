// Tolerant decoding of a VHD's metadata: footer, dynamic header, BAT and
// parent locators. Nothing here throws on bad input; every oddity becomes a
// Problem, and the caller decides what is fatal.
import {
  DiskType,
  DynamicHeader,
  Footer,
  FOOTER_CHECKSUM_OFFSET,
  FOOTER_COOKIE,
  FooterStruct,
  HEADER_CHECKSUM_OFFSET,
  HEADER_COOKIE,
  HeaderStruct,
  LocatorStruct,
  ParentLocator,
  SECTOR,
  UNUSED,
  bitmapSize,
  diskTypeName,
  vhdChecksum,
} from './layout.js';
import type { Problem, ProblemCode } from './problems.js';

/** Random access to the bytes of a VHD: a file, or a head object in a vault. */
export interface ByteSource {
  readonly name: string;
  size(): Promise<number>;
  /** Reads up to `length` bytes at `position`; fewer only at end of file. */
  read(position: number, length: number): Promise<Buffer>;
}

export interface DecodedLocator extends ParentLocator {
  index: number;
  /** The path it holds, decoded per platform code; undefined when unreadable. */
  path?: string;
}

export interface Decoded {
  name: string;
  fileSize: number;
  footer?: Footer;
  /** Where the footer in use was found. */
  footerOffset?: number;
  /** Whether a valid footer sits at the end of the file (else the copy at 0 is used). */
  footerAtEnd: boolean;
  header?: DynamicHeader;
  headerOffset?: number;
  /** Virtual size in bytes (the footer's current size, as Hyper-V and libvhdi read it). */
  size?: number;
  type?: 'fixed' | 'dynamic' | 'differencing';
  blockSize?: number;
  bat?: Uint32Array;
  parentName?: string;
  locators: DecodedLocator[];
  problems: Problem[];
}

/** Largest BAT we agree to load: 2040 GiB in 512 KiB blocks. */
const MAX_BAT_ENTRIES = 0x1000000;

export async function decodeVhd(src: ByteSource): Promise<Decoded> {
  const d: Decoded = { name: src.name, fileSize: await src.size(), footerAtEnd: false, locators: [], problems: [] };
  const add = (code: ProblemCode, severity: Problem['severity'], message: string, extra: Partial<Problem> = {}) => {
    d.problems.push({ code, severity, file: src.name, message, ...extra });
  };

  if (d.fileSize < SECTOR - 1) {
    add('VHD_NO_FOOTER', 'fatal', `file of ${d.fileSize} bytes is too small to be a VHD (no 512-byte footer)`);
    return d;
  }

  // The footer: at end - 512, or end - 511 (very old files), else the copy at 0.
  const tail = await src.read(Math.max(0, d.fileSize - SECTOR), SECTOR);
  const candidates: Array<{ offset: number; buf: Buffer }> = [];
  if (tail.length === SECTOR && tail.toString('latin1', 0, 8) === FOOTER_COOKIE) {
    candidates.push({ offset: d.fileSize - SECTOR, buf: tail });
  } else if (tail.length === SECTOR && tail.toString('latin1', 1, 9) === FOOTER_COOKIE) {
    const buf = Buffer.alloc(SECTOR);
    tail.copy(buf, 0, 1);
    candidates.push({ offset: d.fileSize - SECTOR + 1, buf });
  }
  const head = await src.read(0, SECTOR);
  const headIsFooter = head.length === SECTOR && head.toString('latin1', 0, 8) === FOOTER_COOKIE;
  if (candidates.length === 0) {
    if (!headIsFooter) {
      add('VHD_NO_FOOTER', 'fatal', 'no "conectix" footer at the end of the file or at offset 0: not a VHD', {
        offset: Math.max(0, d.fileSize - SECTOR),
        field: 'cookie',
      });
      return d;
    }
    add('VHD_NO_FOOTER', 'error', 'no footer at the end of the file (torn write?); using the copy at offset 0', {
      offset: d.fileSize - SECTOR,
      field: 'cookie',
    });
    candidates.push({ offset: 0, buf: head });
  } else {
    d.footerAtEnd = true;
  }

  const { offset: footerOffset, buf: footerBuf } = candidates[0];
  const footer = FooterStruct.decode(footerBuf);
  d.footer = footer;
  d.footerOffset = footerOffset;
  const sum = vhdChecksum(footerBuf, FOOTER_CHECKSUM_OFFSET);
  if (sum !== footer.checksum) {
    add('VHD_BAD_CHECKSUM', 'warning', 'footer checksum does not match its content', {
      offset: footerOffset + FOOTER_CHECKSUM_OFFSET,
      field: 'footer.checksum',
      expected: sum,
      actual: footer.checksum,
    });
  }
  if (footer.version >>> 16 !== 1) {
    add('VHD_BAD_VERSION', 'warning', `footer format version 0x${footer.version.toString(16)} is not 1.x`, {
      offset: footerOffset + 12,
      field: 'footer.version',
      actual: footer.version,
    });
  }
  const typeName = diskTypeName(footer.diskType);
  if (!typeName) {
    add('VHD_BAD_DISK_TYPE', 'fatal', `disk type ${footer.diskType} is not fixed (2), dynamic (3) or differencing (4)`, {
      offset: footerOffset + 60,
      field: 'footer.diskType',
      actual: footer.diskType,
    });
    return d;
  }
  d.type = typeName;
  if (footer.currentSize > BigInt(Number.MAX_SAFE_INTEGER) || footer.currentSize % 512n !== 0n) {
    add('VHD_BAD_SIZE', 'fatal', `virtual size ${footer.currentSize} is not a usable multiple of 512`, {
      offset: footerOffset + 48,
      field: 'footer.currentSize',
      actual: String(footer.currentSize),
    });
    return d;
  }
  d.size = Number(footer.currentSize);

  if (typeName === 'fixed') {
    if (d.footerAtEnd && d.fileSize - SECTOR < d.size) {
      add('VHD_TRUNCATED', 'error', `fixed disk holds ${d.fileSize - SECTOR} data bytes but its size is ${d.size}`, {
        offset: d.fileSize,
        field: 'footer.currentSize',
        expected: d.size + SECTOR,
        actual: d.fileSize,
      });
    }
    return d;
  }

  // Dynamic and differencing: the copy at 0 should equal the footer in use.
  if (footerOffset !== 0) {
    if (!headIsFooter) {
      add('VHD_FOOTER_MISMATCH', 'warning', 'the footer copy at offset 0 is missing', { offset: 0, field: 'footer copy' });
    } else if (!head.equals(footerBuf)) {
      add('VHD_FOOTER_MISMATCH', 'warning', 'the footer copy at offset 0 differs from the footer at the end', {
        offset: 0,
        field: 'footer copy',
      });
    }
  }

  if (footer.dataOffset > BigInt(d.fileSize) || footer.dataOffset % 1n !== 0n) {
    add('VHD_BAD_HEADER', 'fatal', `dynamic header offset ${footer.dataOffset} is outside the file`, {
      offset: footerOffset + 16,
      field: 'footer.dataOffset',
      actual: String(footer.dataOffset),
    });
    return d;
  }
  const headerOffset = Number(footer.dataOffset);
  const hbuf = await src.read(headerOffset, 1024);
  if (hbuf.length < 1024 || hbuf.toString('latin1', 0, 8) !== HEADER_COOKIE) {
    add('VHD_BAD_HEADER', 'fatal', 'no "cxsparse" dynamic header where the footer points', {
      offset: headerOffset,
      field: 'header.cookie',
    });
    return d;
  }
  const header = HeaderStruct.decode(hbuf);
  d.header = header;
  d.headerOffset = headerOffset;
  const hsum = vhdChecksum(hbuf, HEADER_CHECKSUM_OFFSET);
  if (hsum !== header.checksum) {
    add('VHD_BAD_CHECKSUM', 'warning', 'dynamic header checksum does not match its content', {
      offset: headerOffset + HEADER_CHECKSUM_OFFSET,
      field: 'header.checksum',
      expected: hsum,
      actual: header.checksum,
    });
  }
  const bs = header.blockSize;
  if (bs < SECTOR || bs > 256 * 1024 * 1024 || (bs & (bs - 1)) !== 0) {
    add('VHD_BAD_BLOCK_SIZE', 'fatal', `block size ${bs} is not a power of two between 512 bytes and 256 MiB`, {
      offset: headerOffset + 32,
      field: 'header.blockSize',
      actual: bs,
    });
    return d;
  }
  d.blockSize = bs;

  const needed = Math.ceil(d.size / bs);
  const entries = header.maxTableEntries;
  if (entries > MAX_BAT_ENTRIES) {
    add('VHD_BAT_TRUNCATED', 'fatal', `block table of ${entries} entries is larger than any VHD needs`, {
      offset: headerOffset + 28,
      field: 'header.maxTableEntries',
      actual: entries,
    });
    return d;
  }
  if (entries < needed) {
    add('VHD_BAT_TOO_SMALL', 'error', `block table has ${entries} entries; a ${d.size}-byte disk needs ${needed}; the rest reads as zeros`, {
      offset: headerOffset + 28,
      field: 'header.maxTableEntries',
      expected: needed,
      actual: entries,
    });
  }
  const tableOffset = header.tableOffset;
  if (tableOffset > BigInt(d.fileSize) || Number(tableOffset) + entries * 4 > d.fileSize) {
    add('VHD_BAT_TRUNCATED', 'fatal', `block table (${entries} entries at ${tableOffset}) runs past the end of the file`, {
      offset: headerOffset + 16,
      field: 'header.tableOffset',
      actual: String(tableOffset),
    });
    return d;
  }
  const batBuf = await src.read(Number(tableOffset), entries * 4);
  const bat = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) bat[i] = batBuf.readUInt32BE(i * 4);
  d.bat = bat;

  // Parent name and locators (differencing disks only carry meaningful ones).
  if (typeName === 'differencing') {
    d.parentName = decodeUtf16(header.parentName, 'utf16be');
    for (let i = 0; i < 8; i++) {
      const loc = LocatorStruct.decode(header.locators, i * 24);
      if (loc.platformCode === '\0\0\0\0' || (loc.dataLength === 0 && loc.dataOffset === 0n)) continue;
      const dl: DecodedLocator = { ...loc, index: i };
      const at = headerOffset + 576 + i * 24;
      // Windows, Virtual PC and blktap store data space in bytes although the
      // spec says sectors: a value that is a non-zero multiple of 512 is bytes.
      const space = loc.dataSpace >= SECTOR && loc.dataSpace % SECTOR === 0 ? loc.dataSpace : loc.dataSpace * SECTOR;
      if (loc.dataLength > space || loc.dataLength > 64 * 1024 || loc.dataOffset + BigInt(loc.dataLength) > BigInt(d.fileSize)) {
        add('VHD_BAD_LOCATOR', 'warning', `parent locator ${i} (${printable(loc.platformCode)}) points outside the file or is too long`, {
          offset: at,
          field: `header.locators[${i}]`,
        });
      } else {
        const raw = await src.read(Number(loc.dataOffset), loc.dataLength);
        dl.path = decodeLocator(loc.platformCode, raw);
        if (dl.path === undefined) {
          add('VHD_BAD_LOCATOR', 'warning', `parent locator ${i} has unknown platform code ${printable(loc.platformCode)}`, {
            offset: at,
            field: `header.locators[${i}].platformCode`,
          });
        }
      }
      d.locators.push(dl);
    }
  }

  checkBlocks(d, add);
  return d;
}

function checkBlocks(d: Decoded, add: (code: ProblemCode, sev: Problem['severity'], msg: string, extra?: Partial<Problem>) => void) {
  const bat = d.bat!;
  const bs = d.blockSize!;
  const span = bitmapSize(bs) + bs;
  const dataLimit = d.footerAtEnd ? d.footerOffset! : d.fileSize;
  const used: Array<{ start: number; end: number; what: string }> = [];
  const headerStart = d.headerOffset!;
  used.push({ start: headerStart, end: headerStart + 1024, what: 'dynamic header' });
  const tStart = Number(d.header!.tableOffset);
  used.push({ start: tStart, end: tStart + bat.length * 4, what: 'block table' });
  let reported = 0;
  for (let i = 0; i < bat.length; i++) {
    if (bat[i] === UNUSED) continue;
    const start = bat[i] * SECTOR;
    if (start + span > dataLimit) {
      // The last block of a disk whose size is not a whole number of blocks
      // may legally stop short; it must still hold what the disk can address.
      const needed = Math.min(span, bitmapSize(bs) + (d.size! - i * bs));
      if (start + needed > dataLimit) {
        if (reported++ < 20) {
          add('VHD_BAT_PAST_END', 'error', `block ${i} at byte ${start} runs past the end of the data (${dataLimit})`, {
            offset: Number(d.header!.tableOffset) + i * 4,
            field: `bat[${i}]`,
            actual: bat[i],
          });
        }
        continue;
      }
    }
    used.push({ start, end: start + span, what: `block ${i}` });
  }
  used.sort((a, b) => a.start - b.start);
  for (let k = 1; k < used.length; k++) {
    const prev = used[k - 1];
    const cur = used[k];
    if (cur.start < prev.end && reported++ < 40) {
      add('VHD_BAT_OVERLAP', 'error', `${cur.what} at byte ${cur.start} overlaps ${prev.what} (${prev.start}..${prev.end})`, {
        offset: cur.start,
        field: cur.what.startsWith('block ') ? `bat[${cur.what.slice(6)}]` : cur.what,
      });
    }
  }
  if (d.fileSize % SECTOR !== 0 && d.footerOffset !== d.fileSize - SECTOR + 1) {
    // Not a problem for reading; noted so check explains odd tails.
  }
}

export function decodeUtf16(buf: Buffer, enc: 'utf16be' | 'utf16le'): string {
  let b = buf;
  if (enc === 'utf16be') {
    b = Buffer.from(buf);
    b.swap16();
  }
  const s = b.toString('utf16le');
  const nul = s.indexOf('\0');
  return nul >= 0 ? s.slice(0, nul) : s;
}

function decodeLocator(code: string, raw: Buffer): string | undefined {
  switch (code) {
    case 'W2ku':
    case 'W2ru':
      return decodeUtf16(raw.subarray(0, raw.length & ~1), 'utf16le');
    case 'Wi2k':
    case 'Wi2r':
      return stripNul(raw.toString('latin1'));
    case 'MacX': {
      let s = stripNul(raw.toString('utf8'));
      if (s.startsWith('file://')) s = s.slice(7);
      try {
        return decodeURIComponent(s);
      } catch {
        return s;
      }
    }
    default:
      return undefined;
  }
}

function stripNul(s: string): string {
  const i = s.indexOf('\0');
  return i >= 0 ? s.slice(0, i) : s;
}

function printable(code: string): string {
  return JSON.stringify(code);
}

export function isFatal(d: Decoded): boolean {
  return d.problems.some((p) => p.severity === 'fatal');
}

export { DiskType };
