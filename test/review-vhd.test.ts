// From a review of the VHD commands from the outside: each test fails on the
// behaviour the review found.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FERRY, ferry, must, withTmp } from './helpers/exec.js';

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

test('odd inputs and outputs: a fifo, a folder, a missing folder, a full stdout, the parent as OUT are refused with one line', async (t) => {
  await withTmp(async (dir) => {
    const v = join(dir, 'V');
    await ok(['init', v, '--kdf-log-n', '12']);
    const raw = join(dir, 'a.raw');
    await writeFile(raw, randomBytes(3 * MiB));
    const base = join(dir, 'base.vhd');
    await ok(['vhd', 'create', base, '--from', raw]);
    const fifo = join(dir, 'fifo');
    await must('mkfifo', [fifo]);
    for (const args of [['vhd', 'check', fifo], ['vhd', 'info', fifo], ['vhd', 'cat', fifo], ['vhd', 'import', '--vault', v, fifo]]) {
      // (it used to wait for a writer for ever)
      const r = await ferry(args, { env });
      t.is(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
      t.regex(r.stderr, /fifo: a fifo, not a VHD file/);
    }
    let r = await ferry(['vhd', 'import', '--vault', v, dir], { env });
    t.is(r.code, 1);
    t.regex(r.stderr, /a folder, not a VHD file/);
    r = await ferry(['vhd', 'create', join(dir, 'x.vhd'), '--from', dir], { env });
    t.is(r.code, 2);
    t.regex(r.stderr, /--from .* is a folder/);
    r = await ferry(['vhd', 'export', base, '--to', join(dir, 'nope', 'x.raw')]);
    t.is(r.code, 1);
    t.is(r.stderr, `ferry: ${join(dir, 'nope')} does not exist: make it first, or name x.raw in a folder that exists\n`);
    r = await ferry(['vhd', 'create', base, '--parent', base, '--force']);
    t.is(r.code, 2);
    t.regex(r.stderr, /is the parent itself: a differencing disk cannot replace a disk it reads/);
    t.is((await ferry(['vhd', 'check', base])).code, 0, 'the parent is untouched');
    // a full standard output: one line, exit 1, no stack
    const cat = await must('sh', ['-c', `"${process.execPath}" "${FERRY}" vhd cat "${base}" > /dev/full 2>"${join(dir, 'err')}"; echo $?`]);
    t.is(cat.toString().trim(), '1');
    t.is(await readFile(join(dir, 'err'), 'utf8'), "ferry: cannot write the disk's bytes to standard output: no room left on the disk it goes to\n");
  });
});

test('vhd export FILE --to X.vhd writes a VHD (dynamic) that qemu-img reads as the chain', async (t) => {
  await withTmp(async (dir) => {
    const raw = join(dir, 'a.raw');
    await writeFile(raw, randomBytes(5 * MiB));
    const base = join(dir, 'base.vhd');
    await ok(['vhd', 'create', base, '--from', raw]);
    const out = join(dir, 'flat.VHD');
    t.regex(await ok(['vhd', 'export', base, '--to', out]), /\(dynamic\)/);
    const info = await must('qemu-img', ['info', '--output=json', out]);
    t.is(JSON.parse(info.toString()).format, 'vpc');
    await must('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', out, raw]); // (exit 1 throws)
  });
});

const rootTest = process.getuid?.() === 0 ? test.serial : test.skip;

rootTest('a VHD on a block device reads at its size (stat says 0), and a device can be the --from of vhd create', async (t) => {
  const { withLoop } = await import('./helpers/mounts.js');
  await withTmp(async (dir) => {
    const raw = join(dir, 'a.raw');
    await writeFile(raw, randomBytes(4 * MiB));
    const fixed = join(dir, 'f.vhd');
    await ok(['vhd', 'create', fixed, '--type', 'fixed', '--from', raw]);
    await withLoop(fixed, async (dev) => {
      const a = await ferry(['vhd', 'cat', dev]);
      t.is(a.code, 0, a.stderr);
      t.true(a.stdout.equals((await ferry(['vhd', 'cat', fixed])).stdout));
      const made = join(dir, 'from-dev.vhd');
      await ok(['vhd', 'create', made, '--from', dev]);
      // the device holds the fixed VHD's bytes: data then its footer
      const back = await ferry(['vhd', 'cat', made]);
      t.true(back.stdout.subarray(0, 4 * MiB + 512).equals(await readFile(fixed)));
    });
  });
});

test('a damaged VHD that still reads (two blocks at one place) is read with a warning naming the problem and exit 3', async (t) => {
  await withTmp(async (dir) => {
    const raw = join(dir, 'a.raw');
    await writeFile(raw, randomBytes(4 * MiB));
    const vhd = join(dir, 'a.vhd');
    await ok(['vhd', 'create', vhd, '--from', raw]);
    const b = await readFile(vhd);
    const table = Number(b.readBigUInt64BE(512 + 16));
    b.writeUInt32BE(b.readUInt32BE(table), table + 4); // block 1 where block 0 is
    await writeFile(vhd, b);
    const check = await ferry(['vhd', 'check', vhd]);
    t.is(check.code, 1);
    t.regex(check.stdout.toString(), /error: VHD_BAT_OVERLAP/);
    const cat = await ferry(['vhd', 'cat', vhd]);
    t.is(cat.code, 3, cat.stderr);
    t.regex(cat.stderr, /^ferry: warning: VHD_BAT_OVERLAP: .*; read on, but those bytes may be wrong/m);
    t.is(cat.stdout.length, 4 * MiB);
    const exp = await ferry(['vhd', 'export', vhd, '--to', join(dir, 'out.raw')]);
    t.is(exp.code, 3, exp.stderr);
    t.regex(exp.stderr, /VHD_BAT_OVERLAP/);
    const v = join(dir, 'V');
    await ok(['init', v, '--kdf-log-n', '12']);
    // a vault keeps no disk whose blocks overlap: refused, named
    const imp = await ferry(['vhd', 'import', '--vault', v, vhd], { env });
    t.is(imp.code, 1, imp.stderr);
    t.regex(imp.stderr, /VHD_BAT_OVERLAP: .*bat\[1\]/);
    t.is((await ferry(['vhd', 'cat', '--json', vhd])).code, 2, '--json has no meaning for cat');
  });
});

rootTest('a vault path under a file, or a vault folder its user cannot read, is named in one line', async (t) => {
  await withTmp(async (dir) => {
    const file = join(dir, 'f');
    await writeFile(file, 'x');
    let r = await ferry(['init', join(file, 'v'), '--kdf-log-n', '12'], { env });
    t.is(r.code, 1);
    t.is(r.stderr, `ferry: ${join(file, 'v')} (or a folder above it) is a file, not a folder; choose another place for the vault\n`);
    r = await ferry(['points', '--vault', file], { env });
    t.is(r.code, 10);
    t.regex(r.stderr, /it \(or a folder above it\) is a file, not a folder; give the vault's folder/);
    const v = join(dir, 'v');
    await ok(['init', v, '--kdf-log-n', '12']);
    const { chmod } = await import('node:fs/promises');
    await chmod(dir, 0o755);
    await chmod(v, 0o000);
    try {
      r = await must('sh', ['-c', `runuser -u nobody -- env FERRY_PASSPHRASE='${env.FERRY_PASSPHRASE}' FERRY_STATE_DIR=/tmp/ferry-nobody-state "${process.execPath}" "${FERRY}" points --vault "${v}" 2>&1; echo "rc=$?"`]).then((b) => ({ code: 0, stdout: b, stderr: '' }));
      t.is(r.stdout.toString(), `ferry: ${v}: permission denied; run ferry as a user who may read the vault's folder (and write in it, to change the vault)\nrc=1\n`);
    } finally {
      await chmod(v, 0o755);
    }
  });
});

test('vhd create --type with --parent, and a VHD export of an empty disk, are refused with what to do', async (t) => {
  await withTmp(async (dir) => {
    const base = join(dir, 'base.vhd');
    await ok(['vhd', 'create', base, '--size', '4M']);
    let r = await ferry(['vhd', 'create', join(dir, 'c.vhd'), '--type', 'fixed', '--parent', base]);
    t.is(r.code, 2);
    t.is(r.stderr, 'ferry: --parent makes a differencing disk: leave --type out\n');
    const zero = join(dir, 'zero.vhd');
    await must('qemu-img', ['create', '-f', 'vpc', zero, '0']);
    r = await ferry(['vhd', 'export', zero, '--type', 'fixed', '--to', join(dir, 'z.vhd')]);
    t.is(r.code, 1);
    t.regex(r.stderr, /is an empty disk \(0 bytes\): ferry writes no VHD of that size; export it --type raw/);
    t.is((await ferry(['vhd', 'export', zero, '--to', join(dir, 'z.raw')])).code, 0);
  });
});

test('a parent named in other letter case (a Windows name) is found beside the child', async (t) => {
  await withTmp(async (dir) => {
    const raw = join(dir, 'a.raw');
    await writeFile(raw, randomBytes(3 * MiB));
    const base = join(dir, 'base.vhd');
    await ok(['vhd', 'create', base, '--from', raw]);
    const child = join(dir, 'child.vhd');
    await ok(['vhd', 'create', child, '--parent', base]);
    const want = (await ferry(['vhd', 'cat', child])).stdout;
    const { rename } = await import('node:fs/promises');
    await rename(base, join(dir, 'BASE.VHD'));
    const r = await ferry(['vhd', 'cat', child]);
    t.is(r.code, 0, r.stderr);
    t.true(r.stdout.equals(want));
  });
});

test('a --passphrase-command still running when ferry is killed (SIGTERM) does not outlive it', async (t) => {
  await withTmp(async (dir) => {
    const v = join(dir, 'V');
    await ok(['init', v, '--kdf-log-n', '12']);
    const { spawn, execFileSync } = await import('node:child_process');
    const marker = `sleep 3${Math.floor(Math.random() * 1000) + 1000}`; // a command line no other process has
    const p = spawn(process.execPath, [FERRY, 'points', '--vault', v, '--passphrase-command', marker], { stdio: 'ignore', env: { ...process.env, FERRY_PASSPHRASE: '' } });
    const exited = new Promise<number | null>((r) => p.on('exit', (code) => r(code)));
    const running = () => {
      try {
        return execFileSync('pgrep', ['-f', `^${marker}$`]).toString().trim().length > 0;
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 200 && !running(); i++) await new Promise((r) => setTimeout(r, 20));
    t.true(running(), 'the command started');
    p.kill('SIGTERM');
    t.is(await exited, 143);
    await new Promise((r) => setTimeout(r, 200));
    t.false(running(), 'the command is gone with ferry');
  });
});

test('small messages: a 511-byte file names offset 0; a truncated VHD is refused by vhd import as not whole; a passphrase file with a BOM says so', async (t) => {
  await withTmp(async (dir) => {
    const f511 = join(dir, 'f511');
    await writeFile(f511, Buffer.alloc(511));
    const info = await ferry(['vhd', 'check', f511]);
    t.is(info.code, 1);
    t.regex(info.stdout.toString(), /fatal: VHD_NO_FOOTER: .*f511, offset 0, cookie/);
    const raw = join(dir, 'a.raw');
    await writeFile(raw, randomBytes(3 * MiB));
    const vhd = join(dir, 'a.vhd');
    await ok(['vhd', 'create', vhd, '--from', raw]);
    const cut = join(dir, 'cut.vhd');
    await writeFile(cut, (await readFile(vhd)).subarray(0, 2 * MiB));
    const v = join(dir, 'V');
    await ok(['init', v, '--kdf-log-n', '12']);
    const imp = await ferry(['vhd', 'import', '--vault', v, cut], { env });
    t.is(imp.code, 1);
    t.regex(imp.stderr, /no footer at the end of the file \(torn write\?\): a vault keeps only whole, sound VHDs/);
    t.notRegex(imp.stderr, /using the copy/);
    const bom = join(dir, 'bom');
    await writeFile(bom, `\uFEFF${env.FERRY_PASSPHRASE}\n`);
    const r = await ferry(['points', '--vault', v, '--passphrase-file', bom], { env: { FERRY_PASSPHRASE: '' } });
    t.is(r.code, 12, r.stderr);
    t.regex(r.stderr, /starts with a byte-order mark \(U\+FEFF/);
  });
});

test('vhd export onto a disk of the chain it reads (itself, its parent, a hard link of the base) is refused and changes nothing', async (t) => {
  await withTmp(async (dir) => {
    const raw = join(dir, 'p.raw');
    await writeFile(raw, randomBytes(3 * MiB));
    const p = join(dir, 'p.vhd');
    const c1 = join(dir, 'c1.vhd');
    const c2 = join(dir, 'c2.vhd');
    await ok(['vhd', 'create', p, '--from', raw]);
    await ok(['vhd', 'create', c1, '--parent', p]);
    await ok(['vhd', 'create', c2, '--parent', c1]);
    await must('qemu-io', ['-f', 'vpc', '-c', 'write -P 0xaa 0 1M', c2]);
    await must('ln', [p, join(dir, 'link.vhd')]);
    const before = await Promise.all([p, c1, c2].map((f) => readFile(f)));
    for (const [to, words] of [
      [c2, 'itself'],
      [join(dir, '.', 'c1.vhd'), 'the parent of'],
      [p, '2 levels down'],
      [join(dir, 'link.vhd'), '2 levels down'],
    ] as const) {
      for (const type of ['dynamic', 'raw']) {
        const r = await ferry(['vhd', 'export', c2, '--to', to, '--type', type], { env });
        t.is(r.code, 2, `${to} ${type}: ${r.stderr}`);
        t.true(r.stderr.toString().includes(words) && r.stderr.toString().includes('give another --to'), r.stderr.toString());
      }
    }
    const after = await Promise.all([p, c1, c2].map((f) => readFile(f)));
    after.forEach((b, i) => t.true(b.equals(before[i]), `disk ${i} changed`));
    // elsewhere it goes on
    await ok(['vhd', 'export', c2, '--to', join(dir, 'flat.vhd')]);
    // (qemu-img reads a differencing VHD without its parent: it checks the flat copy, not the chain)
    await must('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', join(dir, 'flat.vhd'), join(dir, 'flat.raw')]);
    // (qemu-io marks its whole new block written: the rest of block 0 reads zeros, not the parent)
    const want = Buffer.concat([Buffer.alloc(MiB, 0xaa), Buffer.alloc(MiB), (await readFile(raw)).subarray(2 * MiB)]);
    t.true((await readFile(join(dir, 'flat.raw'))).equals(want));
    t.true((await ferry(['vhd', 'cat', c2], { env })).stdout.equals(want));
  });
});

/** Sets the one's-complement checksum of the structure at `at` (its field at `sumAt`). */
function fixSum(d: Buffer, at: number, size: number, sumAt: number): void {
  d.writeUInt32BE(0, at + sumAt);
  let s = 0;
  for (let i = at; i < at + size; i++) s += d[i];
  d.writeUInt32BE(~s >>> 0, at + sumAt);
}

/** A qemu-made dynamic VHD rewritten to another layout the format allows (from the docs review), with a new unique id. */
function relayout(src: Buffer, mode: 'header-at-1024' | 'bat-after-blocks'): Buffer {
  const tab = Number(src.readBigUInt64BE(512 + 16));
  const n = src.readUInt32BE(512 + 28);
  let d: Buffer;
  if (mode === 'header-at-1024') {
    d = Buffer.concat([src.subarray(0, 512), Buffer.alloc(512), src.subarray(512)]); // all after the footer copy one sector on
    d.writeBigUInt64BE(BigInt(tab + 512), 1024 + 16);
    for (let i = 0; i < n; i++) {
      const e = d.readUInt32BE(tab + 512 + 4 * i);
      if (e !== 0xffffffff) d.writeUInt32BE(e + 1, tab + 512 + 4 * i);
    }
    for (const at of [0, d.length - 512]) d.writeBigUInt64BE(1024n, at + 16);
    fixSum(d, 1024, 1024, 36);
  } else {
    const batLen = Math.ceil((4 * n) / 512) * 512;
    const bat = Buffer.from(src.subarray(tab, tab + batLen));
    const body = src.subarray(tab + batLen, src.length - 512);
    for (let i = 0; i < n; i++) {
      const e = bat.readUInt32BE(4 * i);
      if (e !== 0xffffffff) bat.writeUInt32BE(e - batLen / 512, 4 * i);
    }
    const header = Buffer.from(src.subarray(512, 1536));
    header.writeBigUInt64BE(BigInt(1536 + body.length), 16);
    d = Buffer.concat([src.subarray(0, 512), header, body, bat, src.subarray(src.length - 512)]);
    fixSum(d, 512, 1024, 36);
  }
  const uid = randomBytes(16);
  for (const at of [0, d.length - 512]) {
    uid.copy(d, at + 68);
    fixSum(d, at, 512, 64);
  }
  return d;
}

test('a VHD whose header is not at 512 is stored and given back byte for byte; one whose BAT follows its blocks is refused, not stored wrong', async (t) => {
  await withTmp(async (dir) => {
    const v = join(dir, 'V');
    await ok(['init', v, '--kdf-log-n', '12']);
    const raw = join(dir, 'a.raw');
    await writeFile(raw, randomBytes(6 * MiB));
    const q = join(dir, 'q.vhd');
    await must('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic', raw, q]);
    const src = await readFile(q);

    const h1024 = join(dir, 'h1024.vhd');
    await writeFile(h1024, relayout(src, 'header-at-1024'));
    await must('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', raw, h1024]); // a VHD as the format allows
    const id = (await ok(['vhd', 'import', '--vault', v, h1024])).trim();
    // (it used to read as zeros from the vault, and export a different file, exit 0)
    const cat = await ferry(['vhd', 'cat', '--vault', v, '--disk', id, '--length', String(6 * MiB)], { env });
    t.true(cat.stdout.equals(await readFile(raw)), 'the stored disk reads as the file');
    await ok(['vhd', 'export', '--vault', v, '--disk', id, '--to', join(dir, 'back.vhd')]);
    t.true((await readFile(join(dir, 'back.vhd'))).equals(await readFile(h1024)), 'exported byte for byte');

    const late = join(dir, 'late.vhd');
    await writeFile(late, relayout(src, 'bat-after-blocks'));
    await must('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', raw, late]);
    const r = await ferry(['vhd', 'import', '--vault', v, late], { env });
    t.is(r.code, 1, r.stderr);
    t.regex(r.stderr, /^ferry: .*late\.vhd keeps its block allocation table at offset \d+, after its first data block \(offset 1536\): .*ferry vhd export .*late\.vhd --type dynamic --to NEW\.vhd.*\n$/);
    t.is(JSON.parse(await ok(['vhd', 'list', '--json', '--vault', v])).length, 1, 'nothing more stored');
  });
});
