// From a review of the VHD commands from the outside: each test fails on the
// behaviour the review found.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ferry, must, withTmp } from './helpers/exec.js';

const env = { FERRY_PASSPHRASE: 'review vhd passphrase, long enough' };
const MiB = 1024 * 1024;

async function ok(args: string[]): Promise<string> {
  const r = await ferry(args, { env });
  if (r.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout.toString();
}

test('a child made over a parent merged into after it was stored is refused: it would read the older parent', async (t) => {
  await withTmp(async (dir) => {
    const v = join(dir, 'V');
    await ok(['init', v, '--kdf-log-n', '12']);
    const raw = join(dir, 'base.raw');
    await writeFile(raw, randomBytes(8 * MiB));
    const base = join(dir, 'base.vhd');
    await ok(['vhd', 'create', base, '--from', raw]);
    await ok(['vhd', 'import', '--vault', v, base]);
    const c1 = join(dir, 'c1.vhd');
    await ok(['vhd', 'create', c1, '--parent', base]);
    await must('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x11 0 1M', c1]);
    await ok(['vhd', 'merge', c1]);
    const c2 = join(dir, 'c2.vhd');
    await ok(['vhd', 'create', c2, '--parent', base]);
    await must('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x22 4M 1M', c2]);
    const r = await ferry(['vhd', 'import', '--vault', v, c2], { env });
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, /c2\.vhd is a differencing disk over .*base\.vhd, which has changed since the vault stored it as disk [0-9a-f]{32} .*vhd export .*c2\.vhd --type dynamic/);
    t.is(JSON.parse(await ok(['vhd', 'list', '--json', '--vault', v])).length, 1, 'nothing stored');
    // a child over the parent as stored goes in, and reads as its file
    const c3 = join(dir, 'c3.vhd');
    const v2 = join(dir, 'V2');
    await ok(['init', v2, '--kdf-log-n', '12']);
    await ok(['vhd', 'import', '--vault', v2, base]);
    await ok(['vhd', 'create', c3, '--parent', base]);
    await must('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x33 2M 1M', c3]);
    const id = (await ok(['vhd', 'import', '--vault', v2, c3])).trim();
    const stored = await ferry(['vhd', 'cat', '--vault', v2, '--disk', id], { env });
    t.true(stored.stdout.equals((await ferry(['vhd', 'cat', c3])).stdout));
  });
});
