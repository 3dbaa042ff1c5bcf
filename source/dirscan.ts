// A folder listed and its entries lstat'd in one call of ferry's addon.
//
// The walk of a source spent a seventh of its main thread on one fs/promises
// lstat per entry (a pool round trip, a promise, a BigIntStats of 18 BigInts)
// and one readdir per folder. The addon's scanFolder does both for a whole
// folder on libuv's pool and hands back one packed buffer; this reads it.
// Without the addon (or with one built from older sources, which lacks
// scanFolder or refuses its arguments) the walk goes on with readdir and
// lstat. A folder the addon cannot open is warned about in Node's words
// (errnoText, format/native.ts) and not listed through Node, which would follow a symlink
// swapped in for it.
import type { BigIntStats } from 'node:fs';
import { constants as C } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { nativeAddon } from '../format/native.js';

/** What the walk takes of an lstat. */
export interface WalkStat {
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  size: number;
  blocks: bigint;
  ino: bigint;
  dev: bigint;
  rdev: bigint;
  atimeNs: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

export function walkStat(st: BigIntStats): WalkStat {
  return {
    mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), nlink: Number(st.nlink), size: Number(st.size),
    blocks: st.blocks, ino: st.ino, dev: st.dev, rdev: st.rdev, atimeNs: st.atimeNs, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs,
  };
}

export const isDir = (st: WalkStat): boolean => (st.mode & C.S_IFMT) === C.S_IFDIR;

/** Record sizes of the reply, in 8-byte words, and its header in bytes (SCAN_* in native/ferry_native.c). */
const NUM = 8;
const BIG = 7;
const HEAD = 24;
const SCAN_ALL = 0;
const SCAN_LIST = 1;
const SCAN_GIVEN = 2;

/** A folder's entries, sorted by name bytes. */
export interface Scanned {
  count: number;
  /** The folder as it was opened. */
  dev: bigint;
  ino: bigint;
  name(i: number): Buffer;
  /** The entry's lstat, or null when it failed (or a time does not fit): the caller lstats it again itself. */
  stat(i: number): WalkStat | null;
}

/** Reads a reply of the addon's scanFolder (exported for tests). */
export function decodeScan(reply: Buffer): Scanned {
  // an 8-byte aligned copy, should the buffer not start on one
  const b = reply.byteOffset % 8 === 0 ? reply : Buffer.from(reply);
  const count = new Float64Array(b.buffer, b.byteOffset, 1)[0];
  const self = new BigInt64Array(b.buffer, b.byteOffset + 8, 2);
  const num = new Float64Array(b.buffer, b.byteOffset + HEAD, count * NUM);
  // ino, dev and rdev signed, as Node's bigint stats give them: the walk compares them with fstat's
  const big = new BigInt64Array(b.buffer, b.byteOffset + HEAD + count * NUM * 8, count * BIG);
  const names = b.subarray(HEAD + count * (NUM + BIG) * 8);
  return {
    count,
    dev: self[0],
    ino: self[1],
    name: (i) => names.subarray(num[i * NUM], num[i * NUM] + num[i * NUM + 1]),
    stat: (i) => {
      const r = i * NUM;
      if (num[r + 2] !== 0) return null;
      const k = i * BIG;
      return {
        mode: num[r + 3], uid: num[r + 4], gid: num[r + 5], nlink: num[r + 6], size: num[r + 7],
        blocks: big[k], ino: big[k + 1], dev: big[k + 2], rdev: big[k + 3], atimeNs: big[k + 4], mtimeNs: big[k + 5], ctimeNs: big[k + 6],
      };
    },
  };
}

/** Why a folder could not be scanned: the errno of its open or listing. */
export interface ScanFailure {
  errno: number;
}

function call(path: Buffer, mode: number, names: Buffer | null): Promise<Scanned | ScanFailure | null> {
  return new Promise((resolve) => {
    try {
      nativeAddon()!.scanFolder!(path, mode, names, (errno, reply) => resolve(errno === null && reply ? decodeScan(reply) : { errno: errno ?? 0 }));
    } catch {
      resolve(null); // an addon that does not take these arguments: Node's calls instead
    }
  });
}

/**
 * The folder's entries through the addon, or null without it. With `keep`,
 * only the names it keeps are lstat'd (an excluded entry is never touched:
 * a hung mount there would hang the walk), in a second call that checks it
 * is still the folder first listed.
 */
export async function scanDir(path: Buffer, keep?: (name: Buffer) => boolean): Promise<Scanned | ScanFailure | null> {
  if (!nativeAddon()?.scanFolder) return null;
  if (!keep) return call(path, SCAN_ALL, null);
  const listed = await call(path, SCAN_LIST, null);
  if (!listed || 'errno' in listed) return listed;
  const kept: Buffer[] = [];
  for (let i = 0; i < listed.count; i++) {
    const name = listed.name(i);
    if (keep(name)) kept.push(name, NUL);
  }
  const stated = await call(path, SCAN_GIVEN, Buffer.concat(kept));
  if (!stated || 'errno' in stated) return stated;
  if (stated.dev !== listed.dev || stated.ino !== listed.ino) return { errno: osConstants.errno.ESTALE };
  return stated;
}

const NUL = Buffer.alloc(1);

