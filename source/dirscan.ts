// A folder listed and its entries lstat'd in one call of ferry's addon.
//
// The walk of a source spent a seventh of its main thread on one fs/promises
// lstat per entry (a pool round trip, a promise, a BigIntStats of 18 BigInts)
// and one readdir per folder. The addon's scanDir does both for a whole
// folder on libuv's pool and hands back one packed buffer; this reads it.
// Without the addon, or for a folder it cannot open, the walk goes on with
// readdir and lstat (and so reports an error in Node's own words).
import type { BigIntStats } from 'node:fs';
import { constants as C } from 'node:fs';
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

/** Record sizes of the reply, in 8-byte words (SCAN_NUM, SCAN_BIG in native/ferry_native.c). */
const NUM = 8;
const BIG = 7;

/** A folder's entries, sorted by name bytes. */
export interface Scanned {
  count: number;
  name(i: number): Buffer;
  /** The entry's lstat, or null when it failed (or a time does not fit): the caller lstats it again itself. */
  stat(i: number): WalkStat | null;
}

function decode(reply: Buffer): Scanned {
  // an 8-byte aligned copy, should the buffer not start on one
  const b = reply.byteOffset % 8 === 0 ? reply : Buffer.from(reply);
  const count = new Float64Array(b.buffer, b.byteOffset, 1)[0];
  const num = new Float64Array(b.buffer, b.byteOffset + 8, count * NUM);
  const bigAt = b.byteOffset + 8 + count * NUM * 8;
  const big = new BigInt64Array(b.buffer, bigAt, count * BIG);
  const ubig = new BigUint64Array(b.buffer, bigAt, count * BIG);
  const names = b.subarray(8 + count * (NUM + BIG) * 8);
  return {
    count,
    name: (i) => names.subarray(num[i * NUM], num[i * NUM] + num[i * NUM + 1]),
    stat: (i) => {
      const r = i * NUM;
      if (num[r + 2] !== 0) return null;
      const k = i * BIG;
      return {
        mode: num[r + 3], uid: num[r + 4], gid: num[r + 5], nlink: num[r + 6], size: num[r + 7],
        blocks: big[k], ino: ubig[k + 1], dev: ubig[k + 2], rdev: ubig[k + 3], atimeNs: big[k + 4], mtimeNs: big[k + 5], ctimeNs: big[k + 6],
      };
    },
  };
}

/** The folder's entries through the addon, or null without it or when the folder cannot be listed so. */
export function scanDir(path: Buffer): Promise<Scanned | null> {
  const native = nativeAddon();
  if (!native?.scanDir) return Promise.resolve(null);
  return new Promise((resolve) => {
    native.scanDir(path, (errno, reply) => resolve(errno === null && reply ? decode(reply) : null));
  });
}
