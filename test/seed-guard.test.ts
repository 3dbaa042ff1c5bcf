// Seed disks that are not folders of their own, and refusals that must leave
// nothing behind: a --disk reaching into a vault through a symbolic link or
// a bind mount, or naming another vault, is refused before anything is
// written; a disk too small for one object is left as it was (a disk that
// holds objects keeps its manifest and resumes); an import whose point could
// not be registered (the item is in the vault with another kind) copies
// nothing.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, readdir, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SEED_MANIFEST } from '../format/seedmanifest.js';
import { ferry, ferryOk, withTmp } from './helpers/exec.js';
import { withMount, withTmpfs } from './helpers/mounts.js';

const env = { FERRY_PASSPHRASE: 'seed guard passphrase, long enough' };
const MiB = 1024 * 1024;
// mounts (tmpfs, bind) need root, as CI runs
const isRoot = process.getuid?.() === 0;
const rootTest = isRoot ? test.serial : test.skip;
const ok = (args: string[]) => ferryOk(args, env);


/** Every file and folder under `root` with its size (files): what a refused command must leave as it was. */
async function snapshot(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(root, { recursive: true })) {
    const st = await stat(join(root, e));
    out.push(`${e}${st.isFile() ? ` ${st.size}` : '/'}`);
  }
  return out.sort();
}

async function source(dir: string, randomBytesCount = 200_000): Promise<string> {
  const src = join(dir, 'src');
  await mkdir(join(src, 'a'), { recursive: true });
  await writeFile(join(src, 'a', 'f1'), randomBytes(randomBytesCount));
  await writeFile(join(src, 'hello.txt'), 'hello\n');
  return src;
}

test('a --disk inside a vault through a symbolic link, a bind mount or as another vault, or one holding the vault, is refused (exit 2, one line) before anything is written', async (t) => {
  await withTmp(async (dir) => {
    const src = await source(dir);
    const v1 = join(dir, 'v1');
    const v2 = join(dir, 'v2');
    await ok(['init', v1, '--kdf-log-n', '12']);
    await ok(['init', v2, '--kdf-log-n', '12']);
    await ok(['seed', '--vault', v1, '--item', 'home', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'd1'), src, '--quiet']);
    await ok(['import', '--vault', v1, join(dir, 'd1'), '--quiet']);
    await symlink(v1, join(dir, 'v1link'));
    const before1 = await snapshot(v1);
    const before2 = await snapshot(v2);
    const refused = async (disk: string, what: RegExp, label: string) => {
      const r = await ferry(['seed', '--vault', v1, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk', disk, src], { env });
      t.is(r.code, 2, `${label}: ${r.stderr}`);
      t.regex(r.stderr, what, label);
      t.regex(r.stderr, /a seed disk must be a folder of its own, outside any vault/, label);
      t.is(r.stderr.trim().split('\n').length, 1, label);
    };
    const inV1 = new RegExp(`is inside the vault ${v1}:`);
    await refused(join(dir, 'v1link'), inV1, 'a link to the vault');
    await refused(join(dir, 'v1link', 'new', 'disk'), inV1, 'a folder to be made inside it, through the link');
    await refused(v2, new RegExp(`is inside another ferry vault, ${v2}:`), 'another vault');
    await refused(join(v2, 'sub'), new RegExp(`is inside another ferry vault, ${v2}:`), 'a folder inside another vault');
    await refused(dir, new RegExp(`holds the vault ${v1}:`), 'a folder holding the vault');
    // bind mounts: of the vault, and of a folder inside it
    if (isRoot) {
      await withMount(['--bind', v1], join(dir, 'bind-vault'), async (bv) => {
        await refused(join(bv, 'disk'), inV1, 'a bind mount of the vault');
        await withMount(['--bind', join(v1, 'items')], join(dir, 'bind-items'), async (bi) => {
          await refused(join(bi, 'disk'), inV1, 'a bind mount of a folder inside the vault');
        });
      });
    }
    // nothing was written into either vault, and both check clean
    t.deepEqual(await snapshot(v1), before1);
    t.deepEqual(await snapshot(v2), before2);
    for (const v of [v1, v2]) {
      const r = await ferry(['check', '--vault', v], { env });
      t.is(r.code, 0, r.stderr);
    }
    t.false(existsSync(join(dir, SEED_MANIFEST)));
    // a folder of its own beside the vault is still fine
    await ok(['seed', '--vault', v1, '--item', 'x', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'd2'), src, '--quiet']);
    t.true(existsSync(join(dir, 'd2', SEED_MANIFEST)));
  });
});

rootTest('a disk too small for one object is left as it was (no manifest: later seeds may use it); a disk that holds objects keeps its manifest and the seed resumes', async (t) => {
  await withTmp(async (dir) => {
    const src = await source(dir, 3 * MiB);
    const vault = join(dir, 'v');
    await ok(['init', vault, '--kdf-log-n', '12']);
    const tiny = join(dir, 'tiny');
    await withTmpfs(tiny, '1m', async () => {
      const r = await ferry(['seed', '--vault', vault, '--item', 'big', '--kind', 'files', '--machine', 'm', '--disk', tiny, src], { env });
      t.is(r.code, 1, r.stderr);
      t.regex(r.stderr, /^ferry: the seed disk is too small/);
      t.deepEqual(await readdir(tiny), []);
      // another seed onto it is told the same, not that the disk is in use
      const again = await ferry(['seed', '--vault', vault, '--item', 'other', '--kind', 'files', '--machine', 'm', '--disk', tiny, src], { env });
      t.is(again.code, 1, again.stderr);
      t.regex(again.stderr, /too small/);
      t.notRegex(again.stderr, /already holds seed/);
      t.deepEqual(await readdir(tiny), []);

      // a disk that takes objects, then the tiny one: the disks are full
      await writeFile(join(src, 'a', 'more'), randomBytes(6 * MiB));
      const small = join(dir, 'small');
      await withTmpfs(small, '4m', async () => {
        const args = ['seed', '--vault', vault, '--item', 'big', '--kind', 'files', '--machine', 'm', '--disk', small, '--disk', tiny];
        const full = await ferry([...args, src], { env });
        t.is(full.code, 1, full.stderr);
        t.regex(full.stderr, /the seed disks are full/);
        t.deepEqual(await readdir(tiny), [], 'the tiny disk, with nothing of the seed, is as it was');
        const m = JSON.parse(await readFile(join(small, SEED_MANIFEST), 'utf8'));
        t.true(m.objects.length > 0, 'the disk that holds objects keeps them listed');
        // run again with room: it resumes from what the small disk holds
        const big = join(dir, 'big');
        const r2 = await ferry([...args, '--disk', big, src, '--json'], { env });
        t.is(r2.code, 0, r2.stderr);
        const res = JSON.parse(r2.stdout.toString());
        t.true(res.resumed);
        t.true(res.kept > 0);
        await ok(['import', '--vault', vault, ...res.disks, '--quiet']);
        t.is(JSON.parse(await ok(['points', '--vault', vault, '--json'])).length, 1);
      });
    });
  });
});

test('an import whose item is in the vault with another kind is refused before any object is copied', async (t) => {
  await withTmp(async (dir) => {
    const src = await source(dir);
    const v1 = join(dir, 'v1');
    await ok(['init', v1, '--kdf-log-n', '12']);
    await ok(['seed', '--vault', v1, '--item', 'home', '--kind', 'files', '--machine', 'm', '--disk', join(dir, 'd1'), src, '--quiet']);
    await ok(['import', '--vault', v1, join(dir, 'd1'), '--quiet']);
    // a copy of the vault's vault.json alone: the seed there does not see the item
    const vc = join(dir, 'vc');
    await mkdir(vc);
    await copyFile(join(v1, 'vault.json'), join(vc, 'vault.json'));
    const img = join(dir, 'vol.img');
    await writeFile(img, randomBytes(64 * 1024));
    await truncate(img, 4 * MiB);
    const kv = join(dir, 'kv');
    await ok(['seed', '--vault', vc, '--item', 'home', '--kind', 'volume', '--machine', 'm', '--disk', kv, img, '--quiet']);
    const before = await snapshot(v1);
    const r = await ferry(['import', '--vault', v1, kv], { env });
    t.is(r.code, 1, r.stderr);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.regex(r.stderr, /m\/home/);
    t.regex(r.stderr, /volume/);
    t.regex(r.stderr, /as kind files/);
    t.regex(r.stderr, /another --item name/);
    // nothing copied: the vault holds what it held (the lock it took gone again), and checks clean
    const after = await snapshot(v1);
    t.deepEqual(after.filter((e) => !e.startsWith('locks')), before.filter((e) => !e.startsWith('locks')), `new: ${after.filter((e) => !before.includes(e)).join(', ')}`);
    const c = await ferry(['check', '--vault', v1, '--verbose'], { env });
    t.is(c.code, 0, c.stderr);
    t.notRegex(c.stdout.toString() + c.stderr, /note/);
  });
});
