// scrypt (RFC 7914) with its p lanes on all the cores.
//
// scrypt(P, S, N, r, p) is PBKDF2-HMAC-SHA256(P, S, 1, p*128*r), then ROMix
// on each of the p lanes of 128*r bytes, each independent of the others, then
// PBKDF2-HMAC-SHA256(P, lanes, 1, dkLen). Node's crypto.scrypt (OpenSSL) runs
// the lanes one after the other on one thread: with ferry's default p = 6 a
// vault took 0.45-0.7 s to open here while the second core sat idle. With the
// native addon the lanes run on libuv's pool, as many at once as there are
// cores, each thread taking its share of the lanes with one table: the same
// parameters, the same key (tests compare it with Node's and RFC 7914's
// vectors) and the same work for anyone trying passphrases, in about half the
// wait on two cores. Memory: one 128*N*r table per thread (32 MiB with the
// default cost). Without the addon, or for p = 1, it is Node's crypto.scrypt.
import { pbkdf2Sync, scrypt as nodeScrypt, ScryptOptions } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { nativeAddon, Native } from '../format/native.js';

export interface ScryptCost {
  N: number;
  r: number;
  p: number;
}

/**
 * RFC 7914 (section 2) wants N < 2^(128 r / 8); Node refuses the others, so a
 * key the lanes derived from them would not open without the addon.
 */
export function nTooLarge(c: ScryptCost): boolean {
  return 16 * c.r < 53 && c.N >= 2 ** (16 * c.r);
}

const cores = Math.max(1, availableParallelism());
let running = 0;
const waiting: (() => void)[] = [];

/** Runs fn when fewer than `cores` threads compute lanes in the process (slots unlocked at once share the cores). */
async function onACore<T>(fn: () => Promise<T>): Promise<T> {
  if (running >= cores) await new Promise<void>((resolve) => waiting.push(resolve));
  else running++;
  try {
    return await fn();
  } finally {
    const next = waiting.shift();
    if (next) next(); // the slot passes on; running is unchanged
    else running--;
  }
}

function romix(n: Native, lanes: Buffer, N: number, r: number): Promise<void> {
  return new Promise((resolve, reject) =>
    n.scryptRomix(lanes, N, r, (errno) => (errno === null ? resolve() : reject(new Error(`scrypt: ${errno === 12 ? 'out of memory' : `error ${errno}`} (N=${N} r=${r})`)))),
  );
}

/** The scrypt key of `password`; the cost must have been checked (checkCost) for size. */
export async function scrypt(password: Buffer, salt: Buffer, c: ScryptCost, dkLen: number): Promise<Buffer> {
  const n = nativeAddon();
  if (!n?.scryptRomix || c.p < 2) {
    // (also an addon built from older sources, without scryptRomix)
    // Node refuses above maxmem (32 MiB by default); the need is 128*N*r*p plus a little.
    const opts: ScryptOptions = { N: c.N, r: c.r, p: c.p, maxmem: 128 * c.N * c.r * c.p + 2 ** 20 };
    return new Promise((resolve, reject) => nodeScrypt(password, salt, dkLen, opts, (err, key) => (err ? reject(err) : resolve(key))));
  }
  if (nTooLarge(c)) throw new RangeError(`Invalid scrypt params: N=${c.N} must be less than 2^(16 r) = 2^${16 * c.r}`);
  const laneBytes = 128 * c.r;
  const lanes = pbkdf2Sync(password, salt, 1, c.p * laneBytes, 'sha256');
  try {
    // p lanes in `cores` shares as even as can be (6 on 2 cores: 3 and 3)
    const shares = Math.min(cores, c.p);
    const bounds = Array.from({ length: shares + 1 }, (_, i) => Math.round((i * c.p) / shares));
    // every share settled before the lanes are wiped (a failed one must not leave others writing after it)
    const done = await Promise.allSettled(bounds.slice(1).map((end, i) => onACore(() => romix(n, lanes.subarray(bounds[i] * laneBytes, end * laneBytes), c.N, c.r))));
    const failed = done.find((d): d is PromiseRejectedResult => d.status === 'rejected');
    if (failed) throw failed.reason;
    return pbkdf2Sync(password, lanes, 1, dkLen, 'sha256');
  } finally {
    lanes.fill(0);
  }
}
