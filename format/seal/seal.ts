// Sealing in the calling thread: compress, then AES-256-GCM with the header
// and the object's name as associated data. The pool (pool.ts) runs the same
// code in worker threads.
import { freeBuffer } from '../buffers.js';
import { createCipheriv, createDecipheriv, createSecretKey, KeyObject, randomFillSync } from 'node:crypto';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import zstd from 'zstd-napi/binding.js';
import { checkArg, FerryError } from '../errors.js';
import { nativeAddon, type Native } from '../native.js';
import {
  CODECS,
  CodecName,
  decodeSealed,
  DEFAULT_MAX_LENGTH,
  HEADER_SIZE,
  KEY_SIZE,
  NONCE_SIZE,
  sealError,
  TAG_SIZE,
  VERSION,
  writeHeader,
} from './layout.js';

/** Fills `buf` with random bytes. Injected in tests; never used to pass a nonce in. */
export type RandomSource = (buf: Buffer) => void;

export interface SealOptions {
  /** Default zstd. Whatever is asked, a body that does not shrink is stored raw (codec none). */
  codec?: CodecName;
  /** zstd 1..19 (default 1), deflate 1..9 (default 6). */
  level?: number;
}

export interface SealerOptions extends SealOptions {
  random?: RandomSource;
  /** Largest plaintext unseal will allocate (default 256 MiB). */
  maxLength?: number;
}

export const DEFAULT_LEVEL: Record<CodecName, number> = { none: 0, zstd: 1, deflate: 6 };

const defaultRandom: RandomSource = (buf) => {
  randomFillSync(buf);
};

// One compression context per thread: creating one costs more than
// compressing a small object.
let cctx: zstd.CCtx | undefined;
let dctx: zstd.DCtx | undefined;
// Compression output for ordinary block sizes is reused; bigger objects get a
// one-off buffer so a rare huge object does not pin memory for good.
const SCRATCH_LIMIT = 16 * 2 ** 20;
let scratch: Buffer | undefined;

// A lone surrogate has no UTF-8 form: two different names would give the same AAD.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export function checkName(name: unknown): asserts name is string {
  checkArg(typeof name === 'string' && name.length > 0 && !LONE_SURROGATE.test(name), 'name', 'a non-empty string of valid Unicode', name);
}

export function checkOptions(o: SealOptions, codec = o.codec): void {
  if (o.codec !== undefined) checkArg(typeof o.codec === 'string' && Object.hasOwn(CODECS, o.codec), 'codec', 'one of none, zstd, deflate', o.codec);
  if (o.level !== undefined) {
    const max = codec === 'deflate' ? 9 : 22;
    checkArg(Number.isInteger(o.level) && o.level >= 1 && o.level <= max, 'level', `an integer from 1 to ${max}`, o.level);
  }
}

// Already-compressed data (archives, media, encrypted files) does not shrink:
// a few small samples tell, at a fraction of the cost of compressing it all.
const PROBE_MIN = 256 * 1024;
const PROBE_SIZE = 16 * 1024;
const PROBE_COUNT = 4;
let probeOut: Buffer | undefined;
/** node:crypto's update() in slices of this (see seal()). */
const CIPHER_SLICE = 64 * 1024;

function incompressible(ctx: zstd.CCtx, data: Buffer): boolean {
  probeOut ??= Buffer.allocUnsafe(zstd.compressBound(PROBE_SIZE));
  const step = Math.floor((data.length - PROBE_SIZE) / (PROBE_COUNT - 1));
  let packed = 0;
  for (let i = 0; i < PROBE_COUNT; i++) {
    const at = i * step;
    packed += ctx.compress(probeOut, data.subarray(at, at + PROBE_SIZE), 1);
  }
  return packed > PROBE_COUNT * PROBE_SIZE * 0.97;
}

function compress(codec: CodecName, level: number, data: Buffer): Buffer | null {
  if (codec === 'none' || data.length === 0) return null;
  let out: Buffer;
  if (codec === 'zstd') {
    cctx ??= new zstd.CCtx();
    if (data.length >= PROBE_MIN && incompressible(cctx, data)) return null;
    const bound = zstd.compressBound(data.length);
    let dst: Buffer;
    if (bound <= SCRATCH_LIMIT) {
      if (!scratch || scratch.length < bound) scratch = Buffer.allocUnsafe(Math.max(bound, 2 ** 20 + 2 ** 16));
      dst = scratch;
    } else {
      dst = Buffer.allocUnsafe(bound);
    }
    out = dst.subarray(0, cctx.compress(dst, data, level));
  } else {
    out = deflateRawSync(data, { level });
  }
  return out.length < data.length ? out : null;
}

/**
 * Seals and unseals with one key. There is no way to pass a nonce: each
 * seal() draws a fresh random one, so a nonce cannot be reused by mistake.
 */
export class Sealer {
  readonly #key: KeyObject;
  readonly #random: RandomSource;
  readonly #codec: CodecName;
  readonly #level: number | undefined;
  readonly maxLength: number;
  #native: Native['gcm'] | null | undefined;
  #rawKey: Buffer | undefined;

  constructor(key: Uint8Array | KeyObject, opts: SealerOptions = {}) {
    if (key instanceof KeyObject) {
      checkArg(key.type === 'secret' && key.symmetricKeySize === KEY_SIZE, 'key', `a ${KEY_SIZE}-byte secret key`, key.type);
      this.#key = key;
    } else {
      checkArg(key instanceof Uint8Array && key.length === KEY_SIZE, 'key', `${KEY_SIZE} bytes`, key);
      this.#key = createSecretKey(key);
    }
    checkOptions(opts);
    this.#random = opts.random ?? defaultRandom;
    this.#codec = opts.codec ?? 'zstd';
    this.#level = opts.level;
    this.maxLength = opts.maxLength ?? DEFAULT_MAX_LENGTH;
    checkArg(Number.isSafeInteger(this.maxLength) && this.maxLength >= 0, 'maxLength', 'a non-negative integer', this.maxLength);
  }

  /** The KeyObject, for handing to worker threads. */
  get key(): KeyObject {
    return this.#key;
  }

  seal(name: string, data: Uint8Array, opts: SealOptions = {}): Buffer {
    checkName(name);
    checkArg(data instanceof Uint8Array, 'data', 'a Buffer', data);
    const codec = opts.codec ?? this.#codec;
    if (opts.codec !== undefined || opts.level !== undefined) checkOptions(opts, codec);
    const plain = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const level = opts.level ?? (opts.codec === undefined ? this.#level : undefined) ?? DEFAULT_LEVEL[codec];
    const packed = compress(codec, level, plain);
    const body = packed ?? plain;

    const out = Buffer.allocUnsafe(HEADER_SIZE + body.length + TAG_SIZE);
    writeHeader(out, { version: VERSION, codec: packed ? CODECS[codec] : CODECS.none, flags: 0, length: BigInt(plain.length) });
    const nonce = out.subarray(HEADER_SIZE - NONCE_SIZE, HEADER_SIZE);
    this.#random(nonce);
    const gcm = this.#gcm();
    if (gcm) {
      // straight into the object (node:crypto would hand back a fresh buffer to copy)
      gcm(true, this.#rawKey!, nonce, aad(out, name), body, out.subarray(HEADER_SIZE, HEADER_SIZE + body.length), out.subarray(HEADER_SIZE + body.length));
      return out;
    }
    const cipher = createCipheriv('aes-256-gcm', this.#key, nonce, { authTagLength: TAG_SIZE });
    cipher.setAAD(aad(out, name));
    // In slices: Node gives each update() a fresh, zeroed buffer, and a 2 MiB
    // one is fresh pages to fault in every time; 64 KiB ones come back from
    // the allocator warm (a store faulted in half as many pages).
    let ctLength = 0;
    for (let at = 0; at < body.length; at += CIPHER_SLICE) {
      const ct = cipher.update(body.subarray(at, at + CIPHER_SLICE));
      ct.copy(out, HEADER_SIZE + ctLength);
      ctLength += ct.length;
      freeBuffer(ct);
    }
    const fin = cipher.final();
    if (fin.length !== 0) fin.copy(out, HEADER_SIZE + ctLength);
    cipher.getAuthTag().copy(out, HEADER_SIZE + body.length);
    return out;
  }

  /**
   * Checks that `sealed` is an authentic object named `name` under this key,
   * without decompressing it (what an import needs: the bytes are copied as
   * they are). Throws like unseal().
   */
  verify(name: string, sealed: Uint8Array): void {
    this.#open(name, sealed);
  }

  /**
   * Opens a sealed object stored as `name`. Every failure is a FerryError
   * with a SEAL_* code and the object's name at the start of its message.
   */
  unseal(name: string, sealed: Uint8Array): Buffer {
    const { body, codecName, length } = this.#open(name, sealed);
    if (codecName === 'none') return body;
    const out = decompress(name, codecName, body, length);
    freeBuffer(body); // ours alone: no need to wait for a collection
    return out;
  }

  #open(name: string, sealed: Uint8Array): { body: Buffer; codecName: CodecName; length: number } {
    checkName(name);
    checkArg(sealed instanceof Uint8Array, 'sealed', 'a Buffer', sealed);
    const buf = Buffer.isBuffer(sealed) ? sealed : Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    const d = decodeSealed(buf, this.maxLength);
    if (d.problems.length > 0) throw sealError(name, d.problems[0]);
    const h = d.header!;
    const length = Number(h.length);
    const bodyEnd = buf.length - TAG_SIZE;

    const gcm = this.#gcm();
    if (gcm) {
      const body = Buffer.allocUnsafe(bodyEnd - HEADER_SIZE);
      // (the plaintext is zeroed when the tag does not match)
      if (!gcm(false, this.#rawKey!, h.nonce, aad(buf, name), buf.subarray(HEADER_SIZE, bodyEnd), body, buf.subarray(bodyEnd))) throw notAuthentic(name);
      return { body, codecName: d.codecName!, length };
    }
    const decipher = createDecipheriv('aes-256-gcm', this.#key, h.nonce, { authTagLength: TAG_SIZE });
    decipher.setAAD(aad(buf, name));
    decipher.setAuthTag(buf.subarray(bodyEnd));
    // The plaintext is not trusted, nor even looked at, until final() accepts the tag.
    const body = decipher.update(buf.subarray(HEADER_SIZE, bodyEnd));
    try {
      decipher.final();
    } catch {
      throw notAuthentic(name);
    }
    return { body, codecName: d.codecName!, length };
  }

  /** The native AES-GCM (native/, with the key's bytes), or null: node:crypto then. */
  #gcm(): NonNullable<Native['gcm']> | null {
    if (this.#native === undefined) {
      const n = nativeAddon();
      this.#native = n?.gcm ? n.gcm.bind(n) : null;
      if (this.#native) this.#rawKey = this.#key.export();
    }
    return this.#native;
  }
}

export function notAuthentic(name: string): FerryError {
  return new FerryError(
    'SEAL_WRONG_NAME_OR_KEY',
    `object ${name}: authentication failed: it was altered or truncated, stored under another name, or sealed with another key`,
    { object: name },
  );
}

/** AAD = the 28 header bytes, then the name in UTF-8. The header is fixed-size, so the split is unambiguous. */
function aad(buf: Buffer, name: string): Buffer {
  const nameLen = Buffer.byteLength(name, 'utf8');
  const a = Buffer.allocUnsafe(HEADER_SIZE + nameLen);
  buf.copy(a, 0, 0, HEADER_SIZE);
  a.write(name, HEADER_SIZE, 'utf8');
  return a;
}

/** SEAL_CORRUPT: the tag is good, so the writer was broken, not the storage. */
export function corruptBody(name: string, codec: CodecName, why: string): FerryError {
  return new FerryError('SEAL_CORRUPT', `object ${name}: authentic but does not decompress (${codec}): ${why}`, { object: name, codec });
}

function decompress(name: string, codec: CodecName, body: Buffer, length: number): Buffer {
  const corrupt = (why: string) => corruptBody(name, codec, why);
  let out: Buffer;
  try {
    if (codec === 'zstd') {
      dctx ??= new zstd.DCtx();
      // Exactly the announced size: zstd refuses to write past it, so a frame
      // claiming more cannot make us allocate more.
      out = Buffer.allocUnsafe(length);
      const n = dctx.decompress(out, body);
      if (n !== length) throw corrupt(`${n} bytes, header says ${length}`);
    } else {
      out = inflateRawSync(body, { maxOutputLength: Math.max(length, 1) });
      if (out.length !== length) throw corrupt(`${out.length} bytes, header says ${length}`);
    }
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw corrupt((err as Error).message);
  }
  return out;
}

/** One-shot helpers for callers that seal a handful of objects. */
export function seal(key: Uint8Array, name: string, data: Uint8Array, opts: SealerOptions = {}): Buffer {
  return new Sealer(key, opts).seal(name, data);
}

export function unseal(key: Uint8Array, name: string, sealed: Uint8Array, opts: SealerOptions = {}): Buffer {
  return new Sealer(key, opts).unseal(name, sealed);
}
