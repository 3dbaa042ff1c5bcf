// The sealed-object container. Every object ferry stores (in a vault or on a
// seed disk) is one of these; docs/seal-format.md is the prose spec.
//
//   offset  size  field      type     value
//   0       5     magic      bytes    "FERRY" (46 45 52 52 59)
//   5       1     version    u8       1
//   6       1     codec      u8       0 none, 1 zstd, 2 deflate (raw, RFC 1951)
//   7       1     flags      u8       0 (reserved: readers refuse anything else)
//   8       8     length     u64 BE   plaintext length, before compression
//   16      12    nonce      bytes    AES-GCM IV, random per object
//   28      n     ciphertext          AES-256-GCM of the (compressed) body
//   28+n    16    tag                 GCM tag over AAD = header[0..28) || UTF-8(name)
//
// The header is in the AAD, so no header byte can change unnoticed; the name
// is in the AAD, so an object cannot be moved to another name. The
// ciphertext length is not stored: it is what remains between header and
// tag, and truncation breaks the tag.
import { FerryError } from '../errors.js';

export const MAGIC = Buffer.from('FERRY', 'latin1');
export const VERSION = 1;
export const HEADER_SIZE = 28;
export const TAG_SIZE = 16;
export const NONCE_SIZE = 12;
export const KEY_SIZE = 32;
/** The smallest possible sealed object: an empty body. */
export const MIN_SEALED_SIZE = HEADER_SIZE + TAG_SIZE;
/**
 * Readers refuse to allocate more than this for one object unless told
 * otherwise: vault objects are VHD blocks (2 MiB) and small manifests, so a
 * larger length is far more likely an attack or a bug than data.
 */
export const DEFAULT_MAX_LENGTH = 256 * 2 ** 20;

export const CODECS = { none: 0, zstd: 1, deflate: 2 } as const;
export type CodecName = keyof typeof CODECS;
export const CODEC_NAMES: readonly CodecName[] = ['none', 'zstd', 'deflate'];

type FieldType = 'bytes' | 'u8' | 'u64';
interface Field {
  name: keyof SealHeader;
  offset: number;
  size: number;
  type: FieldType;
}

/** The header as one table: the codec below and the docs follow it. */
export const HEADER_FIELDS: readonly Field[] = [
  { name: 'magic', offset: 0, size: 5, type: 'bytes' },
  { name: 'version', offset: 5, size: 1, type: 'u8' },
  { name: 'codec', offset: 6, size: 1, type: 'u8' },
  { name: 'flags', offset: 7, size: 1, type: 'u8' },
  { name: 'length', offset: 8, size: 8, type: 'u64' },
  { name: 'nonce', offset: 16, size: NONCE_SIZE, type: 'bytes' },
];

// Checked at load: contiguous, in order, exactly HEADER_SIZE bytes.
{
  let end = 0;
  for (const f of HEADER_FIELDS) {
    if (f.offset !== end) throw new Error(`seal header field ${f.name} at ${f.offset}, expected ${end}`);
    if (f.type === 'u8' && f.size !== 1) throw new Error(`seal header field ${f.name}: u8 must be 1 byte`);
    if (f.type === 'u64' && f.size !== 8) throw new Error(`seal header field ${f.name}: u64 must be 8 bytes`);
    end += f.size;
  }
  if (end !== HEADER_SIZE) throw new Error(`seal header fields end at ${end}, not ${HEADER_SIZE}`);
}

export interface SealHeader {
  magic: Buffer;
  version: number;
  codec: number;
  flags: number;
  /** Plaintext length; a bigint because the field is 64 bits wide. */
  length: bigint;
  nonce: Buffer;
}

/** Reads the header fields as they are, checking nothing. `buf` must hold HEADER_SIZE bytes. */
export function readHeader(buf: Buffer): SealHeader {
  const out: Record<string, unknown> = {};
  for (const f of HEADER_FIELDS) {
    if (f.type === 'u8') out[f.name] = buf.readUInt8(f.offset);
    else if (f.type === 'u64') out[f.name] = buf.readBigUInt64BE(f.offset);
    else out[f.name] = buf.subarray(f.offset, f.offset + f.size);
  }
  return out as unknown as SealHeader;
}

/** Writes header fields into `buf` at 0 (the nonce is left to the caller, who draws it in place). */
export function writeHeader(buf: Buffer, h: Omit<SealHeader, 'nonce' | 'magic'>): void {
  for (const f of HEADER_FIELDS) {
    if (f.name === 'magic') MAGIC.copy(buf, f.offset);
    else if (f.name === 'nonce') continue;
    else if (f.type === 'u8') buf.writeUInt8(h[f.name as 'version' | 'codec' | 'flags'], f.offset);
    else if (f.type === 'u64') buf.writeBigUInt64BE(h.length, f.offset);
  }
}

export type SealProblemCode =
  | 'SEAL_TRUNCATED'
  | 'SEAL_BAD_MAGIC'
  | 'SEAL_BAD_VERSION'
  | 'SEAL_CORRUPT'
  | 'SEAL_TOO_LARGE'
  | 'SEAL_WRONG_NAME_OR_KEY';

export interface SealProblem {
  code: SealProblemCode;
  field?: keyof SealHeader;
  offset?: number;
  expected?: unknown;
  actual?: unknown;
  message: string;
}

export interface DecodedSealed {
  /** Undefined only when the object is too short to hold a header. */
  header?: SealHeader;
  codecName?: CodecName;
  /** Bytes between header and tag. */
  bodyLength: number;
  problems: SealProblem[];
}

/**
 * Tolerant decode: the header fields plus everything wrong with them, without
 * the key. `ferry check` reports these; `unseal` refuses on the first.
 */
export function decodeSealed(sealed: Buffer, maxLength = DEFAULT_MAX_LENGTH): DecodedSealed {
  const problems: SealProblem[] = [];
  if (sealed.length < MIN_SEALED_SIZE) {
    problems.push({
      code: 'SEAL_TRUNCATED',
      expected: `at least ${MIN_SEALED_SIZE} bytes`,
      actual: sealed.length,
      message: `${sealed.length} bytes, shorter than the ${MIN_SEALED_SIZE} of an empty sealed object`,
    });
    if (sealed.length < HEADER_SIZE) return { bodyLength: 0, problems };
  }
  const header = readHeader(sealed);
  const bodyLength = Math.max(0, sealed.length - MIN_SEALED_SIZE);
  if (!header.magic.equals(MAGIC)) {
    problems.push({
      code: 'SEAL_BAD_MAGIC',
      field: 'magic',
      offset: 0,
      expected: MAGIC.toString('hex'),
      actual: header.magic.toString('hex'),
      message: `magic is ${header.magic.toString('hex')}, not ${MAGIC.toString('hex')} ("FERRY"): not a ferry sealed object`,
    });
    // Nothing else in a foreign object means anything.
    return { header, bodyLength, problems };
  }
  if (header.version !== VERSION) {
    problems.push({
      code: 'SEAL_BAD_VERSION',
      field: 'version',
      offset: 5,
      expected: VERSION,
      actual: header.version,
      message: `sealed with format version ${header.version}; this ferry reads version ${VERSION} (a newer ferry may read it)`,
    });
    return { header, bodyLength, problems };
  }
  const codecName = CODEC_NAMES[header.codec];
  if (codecName === undefined) {
    problems.push({
      code: 'SEAL_CORRUPT',
      field: 'codec',
      offset: 6,
      actual: header.codec,
      message: `unknown codec id ${header.codec} (known: 0 none, 1 zstd, 2 deflate)`,
    });
  }
  if (header.flags !== 0) {
    problems.push({
      code: 'SEAL_CORRUPT',
      field: 'flags',
      offset: 7,
      expected: 0,
      actual: header.flags,
      message: `reserved flags byte is ${header.flags}, not 0`,
    });
  }
  if (header.length > BigInt(maxLength)) {
    problems.push({
      code: 'SEAL_TOO_LARGE',
      field: 'length',
      offset: 8,
      expected: `at most ${maxLength}`,
      actual: header.length.toString(),
      message: `plaintext length ${header.length} is over the limit of ${maxLength} bytes`,
    });
  } else if (codecName === 'none' && header.length !== BigInt(bodyLength)) {
    problems.push({
      code: 'SEAL_CORRUPT',
      field: 'length',
      offset: 8,
      expected: bodyLength,
      actual: header.length.toString(),
      message: `stored uncompressed, but the length field says ${header.length} and the body holds ${bodyLength} bytes`,
    });
  }
  return { header, codecName, bodyLength, problems };
}

/** Turns a problem into the error unseal throws; the message starts with the object's name. */
export function sealError(name: string, p: SealProblem): FerryError {
  const { message, ...rest } = p;
  return new FerryError(p.code, `object ${name}: ${message}`, { object: name, ...rest });
}
