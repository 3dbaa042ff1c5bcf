// Sealed objects for tests: a SealPool through the addon, and a header made
// by hand (docs/seal-format.md) for objects other code forges.
import type { ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { HEADER_SIZE, SealPool } from '../../format/seal/index.js';

/** A pool that seals through the addon; null (the test failed, or passed when FERRY_NATIVE=0) when it cannot. */
export function nativePool(t: ExecutionContext, k: Buffer, opts: ConstructorParameters<typeof SealPool>[1] = {}): SealPool | null {
  const pool = new SealPool(k, { size: 2, ...opts });
  if (pool.native) return pool;
  void pool.close();
  // (npm test's setup builds the addon; FERRY_NATIVE=0 runs the suite without it)
  if (process.env.FERRY_NATIVE === '0') t.pass('the addon is switched off');
  else t.fail('the addon is not built, or lacks sealObject (libzstd.so.1 not found?)');
  return null;
}

/** The 28 header bytes of a sealed object with this codec and plaintext length, and a random nonce. */
export function sealedHeader(codec: number, length: number): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  h.write('FERRY', 0, 'latin1');
  h[5] = 1;
  h[6] = codec;
  h.writeBigUInt64BE(BigInt(length), 8);
  randomBytes(12).copy(h, 16);
  return h;
}
