// Review of the addon's sealObject/openObject path (format/seal/pool.ts
// #sealNative/#openNative): the addon must behave as the worker threads do,
// for bad options, long names, and a caller's buffer after unseal() returned.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { lstatSync, readFileSync } from 'node:fs';
import { FerryError } from '../format/errors.js';
import { SealPool } from '../format/seal/index.js';
import { nativePool } from './helpers/sealed.js';

async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return err instanceof FerryError ? `${err.code}: ${err.message}` : `${(err as Error).constructor.name}: ${(err as Error).message}`;
  }
}

test('through the addon: seal options are checked as the workers check them (FerryError USAGE, nothing sealed)', async (t) => {
  const k = randomBytes(32);
  const pool = nativePool(t, k);
  if (!pool) return;
  const workers = new SealPool(k, { size: 2, native: false });
  try {
    const data = Buffer.alloc(1000, 'a');
    for (const opts of [{ level: 0 }, { level: 23 }, { level: 1.5 }, { level: -1 }, { codec: 'lz4' as never }, { codec: 'none' as const, level: 50 }]) {
      const want = await outcome(workers.seal('a', data, opts));
      t.regex(want, /^USAGE: /, `workers, ${JSON.stringify(opts)}`);
      t.is(await outcome(pool.seal('a', data, opts)), want, `addon, ${JSON.stringify(opts)}`);
    }
  } finally {
    await pool.close();
    await workers.close();
  }
});

test('through the addon: a name longer than 4096 bytes seals and opens, as with the workers', async (t) => {
  const k = randomBytes(32);
  const pool = nativePool(t, k);
  if (!pool) return;
  const workers = new SealPool(k, { size: 2, native: false });
  try {
    const name = `files/${'é'.repeat(3000)}`; // 6006 bytes of UTF-8
    const data = Buffer.from('some bytes');
    const sealed = await workers.seal(name, data);
    t.is(await outcome(pool.seal(name, data)), 'ok');
    t.is(await outcome(pool.unseal(name, sealed)), 'ok');
  } finally {
    await pool.close();
    await workers.close();
  }
});

test('through the addon: the caller\'s buffer is its own again once unseal()/verify() returned (the workers copy it)', async (t) => {
  const k = randomBytes(32);
  for (const native of [false, true]) {
    const pool = native ? nativePool(t, k, { size: 1 }) : new SealPool(k, { size: 1, native: false });
    if (!pool) return;
    try {
      const data = randomBytes(2 * 2 ** 20);
      const sealed = Buffer.from(await pool.seal('blocks/1', data));
      // the pool is busy: the unseal waits in the queue
      const busy = [pool.seal('x', randomBytes(8 * 2 ** 20)), pool.seal('y', randomBytes(8 * 2 ** 20))];
      const opening = pool.unseal('blocks/1', sealed);
      const verifying = pool.verify('blocks/1', sealed);
      // the caller reuses its read buffer for the next object (with freeBuffer(sealed)
      // instead, a pool thread reads freed memory: ASan reports heap-use-after-free)
      sealed.fill(0);
      t.is(await outcome(opening), 'ok', native ? 'addon: unseal' : 'workers: unseal');
      t.is(await outcome(verifying), 'ok', native ? 'addon: verify' : 'workers: verify');
      await Promise.all(busy);
    } finally {
      await pool.close();
    }
  }
});

test('bin/ferry, the package\'s command, is a file npm packs (npm never packs a symbolic link)', (t) => {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { bin: Record<string, string> };
  for (const [cmd, file] of Object.entries(pkg.bin)) {
    t.false(lstatSync(new URL(`../../${file}`, import.meta.url)).isSymbolicLink(), `${cmd}: ${file} is a symbolic link`);
  }
});
