// The addon's putFile (format/native.ts putFileNative): a seed disk's object
// written to a temporary, then renamed into place, in one trip to libuv's
// pool; on failure the errno comes back as Node's fs errors do and no
// temporary is left.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { nativeAddon, putFileNative } from '../format/native.js';

function addonOrSkip(t: import('ava').ExecutionContext): boolean {
  if (nativeAddon()?.putFile) return true;
  // (npm test's setup builds the addon; FERRY_NATIVE=0 runs the suite without it)
  if (process.env.FERRY_NATIVE === '0') t.pass('the addon is switched off');
  else t.fail('the addon is not built, or lacks putFile');
  return false;
}

test('putFile writes the bytes under the final name, replaces what was there, and leaves no temporary', async (t) => {
  if (!addonOrSkip(t)) return;
  const dir = mkdtempSync(join(tmpdir(), 'ferry-put-'));
  try {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    t.true(await putFileNative(join(dir, '.tmp-1'), join(dir, 'obj'), data));
    t.true(readFileSync(join(dir, 'obj')).equals(data));
    t.is(statSync(join(dir, 'obj')).mode & 0o777, 0o666 & ~process.umask());
    // again over it, and an empty one
    t.true(await putFileNative(join(dir, '.tmp-2'), join(dir, 'obj'), Buffer.from('second')));
    t.is(readFileSync(join(dir, 'obj'), 'utf8'), 'second');
    t.true(await putFileNative(join(dir, '.tmp-3'), join(dir, 'empty'), Buffer.alloc(0)));
    t.is(statSync(join(dir, 'empty')).size, 0);
    t.deepEqual(readdirSync(dir).sort(), ['empty', 'obj']);
    // a view into a larger buffer: only its bytes
    const big = Buffer.from('0123456789');
    t.true(await putFileNative(join(dir, '.tmp-4'), join(dir, 'view'), big.subarray(3, 7)));
    t.is(readFileSync(join(dir, 'view'), 'utf8'), '3456');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('putFile: a missing folder, a temporary that exists, a final name that is a folder: Node-style errors, nothing left behind', async (t) => {
  if (!addonOrSkip(t)) return;
  const dir = mkdtempSync(join(tmpdir(), 'ferry-put-'));
  try {
    const gone = join(dir, 'gone');
    const e1 = (await t.throwsAsync(putFileNative(join(gone, '.tmp'), join(gone, 'obj'), Buffer.from('x')))) as NodeJS.ErrnoException;
    t.is(e1.code, 'ENOENT');
    t.regex(e1.message, /^ENOENT: no such file or directory, write '.*gone\/\.tmp'$/);
    // O_EXCL: a temporary name in use is not written through (nor removed: it is not ours)
    writeFileSync(join(dir, '.taken'), 'someone else');
    const e2 = (await t.throwsAsync(putFileNative(join(dir, '.taken'), join(dir, 'obj'), Buffer.from('x')))) as NodeJS.ErrnoException;
    t.is(e2.code, 'EEXIST');
    t.is(readFileSync(join(dir, '.taken'), 'utf8'), 'someone else');
    rmSync(join(dir, '.taken'));
    // the rename fails: the temporary is removed
    const folder = join(dir, 'folder');
    mkdirSync(folder);
    writeFileSync(join(folder, 'inside'), 'keep');
    const e3 = (await t.throwsAsync(putFileNative(join(dir, '.tmp-5'), folder, Buffer.from('x')))) as NodeJS.ErrnoException;
    t.true(['EISDIR', 'ENOTEMPTY', 'EEXIST'].includes(e3.code!), e3.code);
    t.deepEqual(readdirSync(dir).sort(), ['folder']);
    t.is(readFileSync(join(folder, 'inside'), 'utf8'), 'keep');
    // paths with a NUL inside are refused before any trip to the pool
    t.throws(() => nativeAddon()!.putFile!(Buffer.from('a\0b\0'), Buffer.from('c\0'), Buffer.alloc(1), () => {}), { message: /putFile/ });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('futimens sets both times of an open file to the nanosecond, before 1970 too; refuses nanoseconds out of range; a closed descriptor is EBADF', (t) => {
  const futimens = nativeAddon()?.futimens;
  if (!futimens) {
    if (process.env.FERRY_NATIVE === '0') t.pass('the addon is switched off');
    else t.fail('the addon is not built, or lacks futimens');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ferry-utimens-'));
  try {
    const f = join(dir, 'f');
    writeFileSync(f, 'x');
    const fd = openSync(f, 'r+');
    try {
      t.is(futimens(fd, 1_234_567_890, 123_456_789, -5, 999_999_999), 0);
      const st = statSync(f, { bigint: true });
      t.is(st.atimeNs, 1_234_567_890_123_456_789n);
      t.is(st.mtimeNs, -5n * 1_000_000_000n + 999_999_999n);
      t.throws(() => futimens(fd, 0, 1_000_000_000, 0, 0), { instanceOf: TypeError });
      t.throws(() => futimens(fd, 0, 0, 0, -1), { instanceOf: TypeError });
    } finally {
      closeSync(fd);
    }
    t.is(futimens(fd, 0, 0, 0, 0), osConstants.errno.EBADF);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
