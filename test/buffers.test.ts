// format/buffers.ts: block buffers the seal workers (or the addon) hand back are used again,
// zeroed, and only in the sizes asked for; nothing else can still reach them.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { recycleBuffer, SPARE_MAX, spareCount, takeZeroed } from '../format/buffers.js';
import { SealPool } from '../format/seal/pool.js';
import { Sealer } from '../format/seal/seal.js';

const BLOCK = 2 * 1024 * 1024 + 512;

test('takeZeroed gives zeros, also when the buffer comes back dirty; other sizes are not kept', (t) => {
  const a = takeZeroed(BLOCK);
  t.is(a.length, BLOCK);
  a.fill(0xaa);
  recycleBuffer(a);
  const b = takeZeroed(BLOCK);
  t.is(b.buffer, a.buffer, 'the same memory again');
  t.true(b.every((x) => x === 0), 'zeroed');
  // a size nobody asked for is freed at once: the caller's buffer is empty after
  const odd = Buffer.alloc(3 * 1024 * 1024 + 1, 1);
  recycleBuffer(odd);
  t.is(odd.length, 0);
  const fresh = takeZeroed(3 * 1024 * 1024 + 1);
  t.true(fresh.every((x) => x === 0));
  t.not(fresh.buffer, odd.buffer);
});

for (const native of [false, true]) test(`a block sealed ${native ? 'through the addon' : 'by a worker'} comes back to be used again; the sealed bytes are right`, async (t) => {
  const key = randomBytes(32);
  const pool = new SealPool(key, { size: 2, native });
  if (native && !pool.native) {
    await pool.close();
    // (npm test's setup builds it; FERRY_NATIVE=0 runs the suite without it)
    if (process.env.FERRY_NATIVE === '0') t.pass('the addon is switched off');
    else t.fail('the addon is not built, or lacks sealObject (libzstd.so.1 not found?)');
    return;
  }
  try {
    // drain what earlier tests left, so that what comes back is the blocks sealed here
    const before = new Set<ArrayBufferLike>();
    const blocks = Array.from({ length: 6 }, (_, i) => {
      const b = takeZeroed(BLOCK);
      before.add(b.buffer);
      b.fill(i + 1, 512, 512 + 4096 * (i + 1));
      return b;
    });
    const want = blocks.map((b) => Buffer.from(b));
    const sealed = await Promise.all(blocks.map((b, i) => pool.seal(`blk/${i}`, b, undefined, true)));
    for (const b of blocks) t.is(b.length, 0, 'handed over: the caller holds nothing of it');
    const local = new Sealer(key);
    sealed.forEach((s, i) => t.true(local.unseal(`blk/${i}`, s).equals(want[i])));
    t.is(spareCount(BLOCK), SPARE_MAX, 'the blocks came back (as many as are kept)');
    const again = takeZeroed(BLOCK);
    t.true(again.every((x) => x === 0), 'a block used again is zero');
    // the worker (or the pool thread) zeroed them: taking one costs the main thread no fill
    const filled: Buffer[] = [];
    const fill0 = Buffer.prototype.fill;
    Buffer.prototype.fill = function (this: Buffer, ...a: Parameters<Buffer['fill']>) {
      filled.push(this);
      return fill0.apply(this, a);
    };
    try {
      takeZeroed(BLOCK);
    } finally {
      Buffer.prototype.fill = fill0;
    }
    t.is(filled.length, 0, 'not filled again on the taking thread');
    t.false(before.has(again.buffer), 'a new ArrayBuffer object (transferred back), not a view a caller kept');
    // it is sealed memory no result shares
    for (const s of sealed) t.not(s.buffer, again.buffer);
  } finally {
    await pool.close();
  }
});
