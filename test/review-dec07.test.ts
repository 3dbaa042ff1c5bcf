// Review of 327b0c3..ad669ae (checkChunks in one addon call, futimens in the
// restore writer, stored-disk reads that zero only gaps, readWhole, in-place
// chunk hashing on libuv's pool, check against import's sizes). Each test
// failed on the code as reviewed.
import test from 'ava';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { backup } from './helpers/volume.js';
import { pseudoRandom } from './helpers/tree.js';
import { restoreFiles } from '../restore/files.js';

const KiB = 1024;

test('restore progress counts the bytes of files read whole (readWhole): the last report says every byte read', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-rv07-'));
  try {
    const src = join(dir, 'src');
    await mkdir(src);
    let total = 0;
    for (let i = 0; i < 5; i++) {
      const b = pseudoRandom(100 * KiB + i, i + 1);
      total += b.length;
      await writeFile(join(src, `f${i}`), b);
    }
    const reader = await backup(src);
    const seen: number[] = [];
    const r = await restoreFiles(reader, { to: join(dir, 'out'), onProgress: (p) => seen.push(p.bytes) });
    t.is(r.bytes, total);
    t.is(seen.at(-1), total, `progress: ${seen.join(', ')}`);
    await reader.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
