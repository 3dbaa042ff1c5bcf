// Early write-back (format/writeback.ts): the native helper is built by the
// install (CI included), and its call reaches the kernel on the file given.
import test from 'ava';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startWriteback, startWritebackSync, writebackAvailable } from '../format/writeback.js';
import { withTmp } from './helpers/exec.js';

const linux = process.platform === 'linux';

(linux ? test : test.skip)('the native helper is built and loads', (t) => {
  t.true(writebackAvailable(), 'native/ was not built: run npm install (node-gyp builds ferry-native)');
});

(linux ? test : test.skip)('startWriteback reaches sync_file_range: null on a written file, EBADF on a closed one', async (t) => {
  await withTmp(async (dir) => {
    const path = join(dir, 'f');
    const fh = await open(path, 'w');
    const data = Buffer.alloc(3 * 1024 * 1024 + 17, 0x5a);
    await fh.write(data, 0, data.length, 0);
    t.is(await startWriteback(fh), null);
    t.is(await startWriteback(fh, 4096, 8192), null);
    t.is(startWritebackSync(fh.fd), 0);
    const fd = fh.fd;
    await fh.close();
    t.is(await startWriteback(fd), 9 /* EBADF: the kernel saw the descriptor */);
    t.is(startWritebackSync(fd), 9);
    t.deepEqual(await readFile(path), data);
  });
});

test('FERRY_WRITEBACK=0 switches it off (nothing is called)', async (t) => {
  const { execFileSync } = await import('node:child_process');
  const url = new URL('../format/writeback.js', import.meta.url).href;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', `import(${JSON.stringify(url)}).then(async (m) => console.log(m.writebackAvailable(), await m.startWriteback(12345)))`], {
    env: { ...process.env, FERRY_WRITEBACK: '0' },
  }).toString();
  t.is(out.trim(), 'false null');
});
