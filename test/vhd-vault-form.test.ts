// `ferry vhd info | check | cat --vault V --disk ID` and `ferry vhd list`:
// a stored disk reads, and is inspected, as its file is; its parents are found
// in the vault by unique id.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ferry, must, withTmp } from './helpers/exec.js';

const env = { FERRY_PASSPHRASE: 'a passphrase of sixteen+ characters' };
const MiB = 1024 * 1024;

async function chain(dir: string): Promise<{ vault: string; base: string; child: string; baseId: string; childId: string }> {
  const vault = join(dir, 'vault');
  const raw = join(dir, 'a.raw');
  await writeFile(raw, randomBytes(5 * MiB + 1000));
  const base = join(dir, 'base.vhd');
  const child = join(dir, 'child.vhd');
  for (const args of [['init', vault, '--kdf-log-n', '12'], ['vhd', 'create', base, '--from', raw], ['vhd', 'create', child, '--parent', base]]) {
    const r = await ferry(args, { env });
    if (r.code !== 0) throw new Error(r.stderr);
  }
  // qemu writes the child: scattered, unaligned, across a block boundary
  await must('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x5a 1000k 300k', '-c', 'write -P 0x11 4095k 3k', child]);
  const ids: string[] = [];
  for (const f of [base, child]) {
    const r = await ferry(['vhd', 'import', '--vault', vault, f], { env });
    if (r.code !== 0) throw new Error(r.stderr);
    ids.push(r.stdout.toString().trim());
  }
  return { vault, base, child, baseId: ids[0], childId: ids[1] };
}

test('vhd cat, info and check read a stored chain as they read its files', async (t) => {
  await withTmp(async (dir) => {
    const c = await chain(dir);
    // cat: the whole chain, and a range, equal to qemu-img's reading of the file
    const qraw = join(dir, 'q.raw');
    await must('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', c.child, qraw]);
    const want = await readFile(qraw);
    const all = await ferry(['vhd', 'cat', '--vault', c.vault, '--disk', c.childId], { env });
    t.is(all.code, 0, all.stderr);
    t.true(all.stdout.equals(want.subarray(0, all.stdout.length)) && all.stdout.length === want.length);
    const part = await ferry(['vhd', 'cat', '--vault', c.vault, '--disk', c.childId, '--offset', '4094K', '--length', '5000'], { env });
    t.is(part.code, 0, part.stderr);
    t.true(part.stdout.equals(want.subarray(4094 * 1024, 4094 * 1024 + 5000)));

    // info: the same layers and facts as the files, named by disk id
    const fileInfo = JSON.parse((await ferry(['vhd', 'info', '--json', c.child], { env })).stdout.toString());
    const infoRun = await ferry(['vhd', 'info', '--json', '--vault', c.vault, '--disk', c.childId], { env });
    t.is(infoRun.code, 0, infoRun.stderr);
    const vaultInfo = JSON.parse(infoRun.stdout.toString());
    t.deepEqual(vaultInfo.layers.map((l: { file: string }) => l.file), [`disk ${c.childId}`, `disk ${c.baseId}`]);
    const strip = (l: Record<string, unknown>) => ({ ...l, file: undefined });
    t.deepEqual(vaultInfo.layers.map(strip), fileInfo.layers.map(strip));
    t.deepEqual(vaultInfo.problems, []);

    const check = await ferry(['vhd', 'check', '--vault', c.vault, '--disk', c.childId], { env });
    t.is(check.code, 0, check.stderr);
    t.regex(check.stdout.toString() + check.stderr, new RegExp(`stored disk ${c.childId}: clean \\(2 disks in the chain\\)`));

    // check reads every block object of the chain: one gone, one altered, each named
    await rename(join(c.vault, 'disks', c.baseId, 'blocks', '1'), join(dir, 'moved'));
    const obj = join(c.vault, 'disks', c.childId, 'blocks', '2');
    const sealed = await readFile(obj);
    sealed[sealed.length - 20] ^= 1;
    await writeFile(obj, sealed);
    const bad = await ferry(['vhd', 'check', '--vault', c.vault, '--disk', c.childId], { env });
    t.is(bad.code, 1, bad.stderr);
    const lines = bad.stdout.toString();
    t.regex(lines, new RegExp(`error: VHD_BLOCK_UNREADABLE: disk ${c.baseId}: block 1: object disks/${c.baseId}/blocks/1 is missing`));
    t.regex(lines, new RegExp(`error: VHD_BLOCK_UNREADABLE: disk ${c.childId}: block 2: .*disks/${c.childId}/blocks/2.*authentication`));
    t.is(lines.trim().split('\n').length, 2, lines);
  });
});

test('vhd list names every stored disk with its type, size, parent and points; the vault form refuses what it cannot read', async (t) => {
  await withTmp(async (dir) => {
    const c = await chain(dir);
    const src = join(dir, 'src');
    await must('mkdir', [src]);
    await writeFile(join(src, 'f'), 'hello');
    const disk = join(dir, 'd1');
    for (const args of [['seed', '--vault', c.vault, '--item', 'docs', '--kind', 'files', '--disk', disk, '--machine', 'm1', src], ['import', '--vault', c.vault, disk]]) {
      const r = await ferry(args, { env });
      t.is(r.code, 0, r.stderr);
    }
    const list = await ferry(['vhd', 'list', '--json', '--vault', c.vault], { env });
    t.is(list.code, 0, list.stderr);
    const rows = JSON.parse(list.stdout.toString()) as Array<{ id: string; type: string; size: number; parent?: string; allocatedBlocks: number; points: string[] }>;
    t.is(rows.length, 3);
    const byId = new Map(rows.map((r) => [r.id, r]));
    t.like(byId.get(c.baseId), { type: 'dynamic', size: 5 * MiB + 1024, allocatedBlocks: 3, points: [] });
    t.like(byId.get(c.childId), { type: 'differencing', parent: c.baseId, allocatedBlocks: 3, points: [] }); // 1000k-1300k in block 0, 4095k-4098k across blocks 1 and 2
    const seeded = rows.find((r) => r.id !== c.baseId && r.id !== c.childId)!;
    t.deepEqual(seeded.points, ['m1/docs point 1']);
    const text = await ferry(['vhd', 'list', '--vault', c.vault], { env });
    t.regex(text.stdout.toString(), new RegExp(`^${c.childId}  differencing, .*, 3 blocks, over ${c.baseId}; in no point$`, 'm'));

    // refusals: a malformed id, an id the vault does not hold, both forms at once, half the form
    const bad = await ferry(['vhd', 'cat', '--vault', c.vault, '--disk', '../../x'], { env });
    t.is(bad.code, 2);
    t.regex(bad.stderr, /--disk "..\/..\/x" is not a disk id/);
    const none = await ferry(['vhd', 'info', '--vault', c.vault, '--disk', 'f'.repeat(32)], { env });
    t.is(none.code, 1);
    t.regex(none.stderr, /holds no disk f{32}; `ferry vhd list --vault/);
    t.is((await ferry(['vhd', 'check', c.child, '--vault', c.vault, '--disk', c.childId], { env })).code, 2);
    t.is((await ferry(['vhd', 'check', '--vault', c.vault], { env })).code, 2);

    // a child whose parent is gone from the vault: list and check name the missing head, exit 1
    await rm(join(c.vault, 'disks', c.baseId), { recursive: true });
    const gone = await ferry(['vhd', 'list', '--vault', c.vault], { env });
    t.is(gone.code, 1);
    t.regex(gone.stderr, new RegExp(`disk ${c.childId} is a differencing disk over ${c.baseId}, which the vault does not hold`));
    const orphan = await ferry(['vhd', 'check', '--vault', c.vault, '--disk', c.childId], { env });
    t.is(orphan.code, 1, orphan.stderr);
    t.regex(orphan.stdout.toString(), new RegExp(`fatal: .*disks/${c.baseId}/head`));
    const cat = await ferry(['vhd', 'cat', '--vault', c.vault, '--disk', c.childId], { env });
    t.is(cat.code, 1);
    t.regex(cat.stderr, new RegExp(`disks/${c.baseId}/head`));

    // a damaged head: the listing names it, lists the rest, exits 1
    const head = join(c.vault, 'disks', c.childId, 'head');
    const sealed = await readFile(head);
    sealed[sealed.length - 3] ^= 4;
    await writeFile(head, sealed);
    const damaged = await ferry(['vhd', 'list', '--vault', c.vault], { env });
    t.is(damaged.code, 1);
    t.regex(damaged.stderr, new RegExp(`disk ${c.childId} left out: .*disks/${c.childId}/head`));
    t.regex(damaged.stdout.toString(), new RegExp(`^${seeded.id}  dynamic, .*; m1/docs point 1$`, 'm'));
  });
});
