// ferry vhd info | check | cat | create | export | merge
import type { Command } from 'commander';
import { createReadStream } from 'node:fs';
import { lstat, open as fsOpen, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { blockDeviceSize } from '../../format/fsio.js';
import { action, outputFailure, withGlobals, type Output } from '../cli.js';
import { progressBar } from '../progress.js';
import { FerryError, UsageError, counted, formatSize, parseSize } from '../../format/errors.js';
import {
  BufferPool,
  createDifferencing,
  createVhd,
  exportDisk,
  inspectVhd,
  MAX_VHD_SIZE,
  mergeVhd,
  openChain,
  problemLine,
  writeVhd,
  VhdDisk,
  VhdError,
} from '../../format/vhd/index.js';
import type { Inspection } from '../../format/vhd/index.js';
import type { Disk } from '../../format/disk.js';
import { openVaultFromCli, withLockOptions, type CliOpenOptions } from '../passphrase.js';
// The vault modules (seal, zstd) load only when a command names a vault.
const diskstore = () => import('../../vault/diskstore.js');
const putterModule = () => import('../../vault/putter.js');
import type { VaultReader } from '../../vault/vault.js';

export function register(program: Command): void {
  const vhd = program.command('vhd').description('inspect, create, export and merge VHD files');

  withGlobals(vhd.command('info').argument('[file]', 'a VHD file').description('footer, header, geometry, chain and allocation'))
    .option('--vault <vault>', 'read the disk from this vault')
    .option('--disk <id>', 'the stored disk id (with --vault)')
    .action(action(async (out: Output, file: string | undefined, o: DiskOptions) => {
      const r = await inspect(out, 'vhd info', file, o);
      out.result(r, () => printInfo(out, r));
      return r.problems.some((p) => p.severity === 'fatal') ? 1 : 0;
    }));

  withGlobals(vhd.command('check').argument('[file]', 'a VHD file').description('exit 0 when clean, 1 with every problem listed'))
    .option('--vault <vault>', 'read the disk from this vault')
    .option('--disk <id>', 'the stored disk id (with --vault)')
    .action(action(async (out: Output, file: string | undefined, o: DiskOptions) => {
      const r = await inspect(out, 'vhd check', file, o, true);
      const name = file ?? `stored disk ${o.disk}`;
      const doc = { file: file ?? null, disk: o.disk ?? null, clean: r.problems.length === 0, problems: r.problems };
      out.result(doc, () => {
        if (r.problems.length === 0) out.info(`${name}: clean (${r.layers.length} disk${r.layers.length > 1 ? 's' : ''} in the chain)`);
        for (const p of r.problems) process.stdout.write(`${p.severity}: ${problemLine(p)}\n`);
      });
      return r.problems.length === 0 ? 0 : 1;
    }));

  withGlobals(vhd.command('cat').argument('[file]', 'a VHD file').description('virtual bytes to stdout, through the chain'))
    .option('--offset <n>', 'first byte', '0')
    .option('--length <n>', 'number of bytes (default: to the end)')
    .option('--vault <vault>', 'read the disk from this vault')
    .option('--disk <id>', 'the stored disk id (with --vault)')
    .action(action(async (out: Output, file: string | undefined, o: DiskOptions & { offset: string; length?: string }) => {
      const offset = parseSize(o.offset, '--offset');
      const length = o.length !== undefined ? parseSize(o.length, '--length') : undefined;
      if (out.opts.json) throw new UsageError('vhd cat writes the disk\'s bytes, not JSON: leave --json out');
      let damaged = 0;
      await withDisk(out, 'vhd cat', file, o, async (disk) => {
        if (offset > disk.size) throw new UsageError(`--offset ${offset} is past the end of the disk (${disk.size} bytes)`);
        const n = length ?? disk.size - offset;
        if (offset + n > disk.size) throw new UsageError(`--offset + --length runs past the end of the disk (${disk.size} bytes)`);
        damaged = warnDamage(out, disk);
        await catTo(disk, offset, n);
      });
      return damaged ? 3 : 0;
    }));

  withGlobals(vhd.command('list').description('the disks a vault holds: id, type, size, parent, and the points that use each'))
    .requiredOption('--vault <vault>', 'the vault')
    .action(action(async (out: Output, o: CliOpenOptions) => {
      const vault = await openVaultFromCli(out, o);
      try {
        const { vaultObjects } = await putterModule();
        const { listStoredDisks } = await diskstore();
        const { listPoints } = await import('../../vault/registry.js');
        let damaged = 0;
        const disks = await listStoredDisks(vaultObjects(vault), vault.list('disks/'), (id, err) => {
          damaged++;
          out.warn(`disk ${id} left out: ${err.message}`);
        });
        const usedBy = new Map<string, string[]>();
        for (const p of await listPoints(vault, {}, (d) => out.warn(`point ${d.name} is unreadable (${d.error.message}); the disks it uses may show as in no point`))) {
          for (const id of p.chain) usedBy.set(id, [...(usedBy.get(id) ?? []), `${p.machine}/${p.item} point ${p.seq}`]);
        }
        const rows = disks.map((d) => ({ ...d, points: usedBy.get(d.id) ?? [] }));
        out.result(rows, () => {
          if (rows.length === 0) out.info(`vault ${o.vault} holds no disks`);
          for (const d of rows) {
            const parent = d.parent ? `, over ${d.parent}${d.parentMissing ? ' (missing from the vault: this disk cannot be read)' : ''}` : '';
            const use = d.points.length ? d.points.join(', ') : 'in no point';
            process.stdout.write(`${d.id}  ${d.type}, ${formatSize(d.size)}, ${counted(d.allocatedBlocks, 'block')}${parent}; ${use}\n`);
          }
        });
        for (const d of rows) if (d.parentMissing) out.warn(`disk ${d.id} is a differencing disk over ${d.parent}, which the vault does not hold: it cannot be read`);
        return damaged || rows.some((d) => d.parentMissing) ? 1 : 0;
      } finally {
        await vault.close();
      }
    }));

  withGlobals(vhd.command('create').argument('<out>', 'the VHD to write').description('a new fixed, dynamic or differencing VHD'), { vault: false })
    .option('--size <size>', 'virtual size (K, M, G, T suffixes)')
    .option('--type <type>', 'fixed or dynamic (default: dynamic)')
    .option('--from <raw>', 'fill it from this raw image (its size, rounded up to 512 bytes, is the disk size; --size may make it larger)')
    .option('--parent <vhd>', 'make a differencing disk over this VHD')
    .option('--force', 'replace OUT when it exists')
    .action(action(async (out: Output, file: string, o: { size?: string; type?: string; from?: string; parent?: string; force?: boolean }) => {
      if (o.type !== undefined && o.type !== 'fixed' && o.type !== 'dynamic') throw new UsageError(`--type must be fixed or dynamic (got ${JSON.stringify(o.type)})`);
      if (o.parent && o.type) throw new UsageError('--parent makes a differencing disk: leave --type out');
      // a new disk over an existing one loses it, and breaks the children of a parent
      if (!o.force && (await lstat(file).then(() => true, () => false))) {
        throw new FerryError('VHD_EXISTS', `${file} exists: vhd create would replace it (and break any differencing disk made over it); remove it or give --force`, { file });
      }
      const type = (o.type ?? 'dynamic') as 'fixed' | 'dynamic';
      if (o.parent) {
        if (o.size || o.from) throw new UsageError('--parent cannot be combined with --size or --from: a differencing disk has its parent\'s size');
        // --force over the parent itself (or a disk under it) would destroy what the new disk reads
        const at = await chainIndex(o.parent, file);
        if (at >= 0) throw new UsageError(`${file} is ${at === 0 ? 'the parent itself' : 'a disk under the parent'}: a differencing disk cannot replace a disk it reads`);
        await createDifferencing(file, o.parent);
        out.info(`created differencing disk ${file} over ${o.parent}`);
        return;
      }
      if (o.from) {
        const size = await rawSize(o.from, o.size);
        const bar = progressBar(out.opts, 'create');
        const src = await fsOpen(o.from, 'r');
        const bs = 2 * 1024 * 1024;
        const pool = new BufferPool(bs, true); // (page-aligned: written past the page cache)
        // A regular file's blocks are mapped (where the page cache holds them),
        // not copied into buffers: that copy was half of the command's CPU.
        const { mapSourceBlock, mappingErrorsAsJson, unmapSourceBlock } = await import('../../format/filerange.js');
        const srcStat = await src.stat();
        const mapping = mapSourceBlock(src.fd, o.from, srcStat.isFile() ? srcStat.size : -1, bs);
        if (mapping && out.opts.json) mappingErrorsAsJson();
        try {
          await writeVhd(file, { size, type, recycle: (b) => void (unmapSourceBlock(b) || pool.give(b)) }, async (i) => {
            const len = Math.min(bs, size - i * bs);
            const mapped = mapping?.(i, len);
            if (mapped) return mapped;
            const buf = pool.take().subarray(0, len);
            let done = 0;
            while (done < len) {
              const { bytesRead } = await src.read(buf, done, len - done, i * bs + done);
              if (bytesRead === 0) break;
              done += bytesRead;
            }
            if (done < len) buf.fill(0, done); // a short source: the rest is zeros
            return buf;
          }, (d, t) => bar.update(d, t));
        } finally {
          bar.stop();
          await src.close();
        }
        out.result({ file, size, type }, () => out.info(`created ${type} disk ${file} (${formatSize(size)}) from ${o.from}`));
        return;
      }
      if (!o.size) throw new UsageError('vhd create needs --size, --from or --parent');
      const size = parseSize(o.size, '--size');
      if (!(size > 0 && size % 512 === 0 && size <= MAX_VHD_SIZE)) {
        throw new UsageError(`--size ${o.size} is not a VHD size: a multiple of 512 bytes between 512 and 2040 GiB (such as 64M or 10G)`);
      }
      await createVhd(file, { size, type });
      out.result({ file, size, type }, () => out.info(`created ${type} disk ${file} (${formatSize(size)})`));
    }));

  withGlobals(vhd.command('export').argument('[file]', 'a VHD file (a chain reads as one disk)').description('flatten a chain into one raw or VHD file; or give back a stored disk'))
    .requiredOption('--to <out>', 'the file to write')
    .option('--type <type>', 'raw, fixed or dynamic (default: dynamic for a --to ending in .vhd, else raw; a stored disk without --type comes back as the exact VHD it was)')
    .option('--vault <vault>', 'read the disk from this vault')
    .option('--disk <id>', 'the stored disk id (with --vault)')
    .action(action(async (out: Output, file: string | undefined, o: CliOpenOptions & { to: string; type?: string; disk?: string; vault?: string }) => {
      if (o.type !== undefined && !['raw', 'fixed', 'dynamic'].includes(o.type)) throw new UsageError(`--type must be raw, fixed or dynamic (got ${JSON.stringify(o.type)})`);
      checkDiskForm('vhd export', file, o);
      const bar = progressBar(out.opts, 'export');
      try {
        if (o.vault && o.type === undefined) {
          await withStored(out, o, async (objects, ds) => {
            await ds.exportStoredVhd(objects, o.disk!, o.to);
          });
          out.result({ disk: o.disk, to: o.to, type: 'vhd' }, () => out.info(`exported stored disk ${o.disk} to ${o.to} (the VHD as it was stored)`));
          return 0;
        }
        // a file named .vhd gets a VHD, as restore --to X.vhd does
        const type = (o.type ?? (/\.vhd$/i.test(o.to) ? 'dynamic' : 'raw')) as 'raw' | 'fixed' | 'dynamic';
        // a new file over a disk of the chain destroys what the export reads (and every other disk made over it)
        const at = file ? await chainIndex(file, o.to) : -1;
        if (at >= 0) throw new UsageError(`--to ${o.to} is ${at === 0 ? `${file} itself` : at === 1 ? `the parent of ${file}` : `a disk under ${file} (${at} levels down its chain)`}: the export would replace a disk it reads; give another --to`);
        let damaged = 0;
        await withDisk(out, 'vhd export', file, o, async (disk) => {
          if (disk.size === 0 && type !== 'raw') {
            throw new FerryError('VHD_EMPTY', `${file ?? `stored disk ${o.disk}`} is an empty disk (0 bytes): ferry writes no VHD of that size; export it --type raw for an empty file`);
          }
          damaged = warnDamage(out, disk);
          await exportDisk(disk, o.to, type, { onProgress: (d, t) => bar.update(d, t) });
        });
        out.result({ file: file ?? o.disk, to: o.to, type }, () => out.info(`exported ${file ?? `stored disk ${o.disk}`} to ${o.to} (${type})`));
        return damaged ? 3 : 0;
      } finally {
        bar.stop();
      }
    }));

  withLockOptions(withGlobals(vhd.command('import').argument('<file>', 'a VHD file').description('store a VHD in a vault; prints its disk id')))
    .requiredOption('--vault <vault>', 'the vault')
    .action(action(async (out: Output, file: string, o: CliOpenOptions) => {
      const vault = await openVaultFromCli(out, o, { writable: true, command: 'vhd import' });
      if (out.opts.json) (await import('../../format/filerange.js')).mappingErrorsAsJson();
      const bar = progressBar(out.opts, 'store');
      try {
        const { VaultPutter, vaultObjects } = await putterModule();
        const { storeVhdFile, headName } = await diskstore();
        const putter = new VaultPutter(vault);
        // Group commit: the blocks are fsynced together before the head is written, the head before we report.
        putter.begin();
        const r = await storeVhdFile(file, putter, (d, t) => bar.update(d, t), { has: (id) => vault.exists(headName(id)), objects: vaultObjects(vault) });
        if (r.already) {
          await putter.end(); // (nothing was put)
          bar.stop();
          out.result({ disk: r.id, already: true }, () => {
            if (out.opts.quiet) return;
            process.stdout.write(`${r.id}\n`);
            out.verbose(`${file} is already stored as disk ${r.id}`);
          });
          return;
        }
        await putter.end();
        bar.stop();
        // stored as it is (it exports back byte for byte), but what it reads may be wrong
        for (const p of r.problems ?? []) out.warn(`${problemLine(p)}; stored as it is, and what it reads there may be wrong`);
        out.result({ disk: r.id, blocks: r.blocks, bytes: r.bytes, stored: putter.stats.stored }, () => {
          if (out.opts.quiet) return;
          process.stdout.write(`${r.id}\n`);
          out.verbose(`stored ${file} as disk ${r.id}: ${r.blocks} blocks, ${formatSize(r.bytes)} (${formatSize(putter.stats.stored)} sealed)`);
        });
        return r.problems?.length ? 3 : 0;
      } finally {
        bar.stop();
        await vault.close();
      }
    }));

  withGlobals(vhd.command('merge').argument('<child>', 'a differencing VHD').description('coalesce a child into its parent'), { vault: false })
    .action(action(async (out: Output, child: string) => {
      const bar = progressBar(out.opts, 'merge');
      try {
        const r = await mergeVhd(child, { onProgress: (d, t) => bar.update(d, t) });
        bar.stop();
        out.result(r, () =>
          out.info(`merged ${child} into ${r.parent}: ${counted(r.blocks, 'block')}, ${formatSize(r.bytes)}${r.resumedAt ? ` (resumed at block ${r.resumedAt})` : ''}; the parent now reads as the chain did and ${child} can be deleted`),
        );
      } finally {
        bar.stop();
      }
    }));
}

type DiskOptions = CliOpenOptions & { disk?: string };

/** A disk is named either by FILE or by `--vault V --disk ID` (the vault form). */
function checkDiskForm(command: string, file: string | undefined, o: { vault?: string; disk?: string }): void {
  if (!!o.vault !== !!o.disk) throw new UsageError('--vault and --disk go together');
  if (!o.vault && !file) throw new UsageError(`${command} needs a FILE, or --vault V --disk ID`);
  if (o.vault && file) throw new UsageError('give either a FILE or --vault V --disk ID, not both');
  if (o.disk !== undefined && !/^[0-9a-f]{32}$/.test(o.disk)) {
    throw new UsageError(`--disk ${JSON.stringify(o.disk)} is not a disk id (32 hex digits, as \`ferry vhd list --vault V\` shows)`);
  }
}

async function checkStored(vault: VaultReader, where: string, id: string): Promise<void> {
  const { headName } = await diskstore();
  if (!(await vault.exists(headName(id)))) {
    throw new FerryError('NO_SUCH_DISK', `vault ${where} holds no disk ${id}; \`ferry vhd list --vault ${where}\` lists the disks it holds`);
  }
}

/** Runs `use` on the stored objects of the vault form's vault, once its disk is known to be there. */
async function withStored<T>(out: Output, o: DiskOptions, use: (objects: ReturnType<Putter['vaultObjects']>, ds: Diskstore) => Promise<T>): Promise<T> {
  const vault = await openVaultFromCli(out, o);
  try {
    await checkStored(vault, o.vault!, o.disk!);
    const { vaultObjects } = await putterModule();
    return await use(vaultObjects(vault), await diskstore());
  } finally {
    await vault.close();
  }
}
type Putter = Awaited<ReturnType<typeof putterModule>>;
type Diskstore = Awaited<ReturnType<typeof diskstore>>;

/** Inspects the FILE, or the stored disk of the vault form (its parents found in the vault). */
async function inspect(out: Output, command: string, file: string | undefined, o: DiskOptions, readBlocks = false): Promise<Inspection> {
  checkDiskForm(command, file, o);
  if (file) return inspectVhd(file);
  return withStored(out, o, (objects, ds) => ds.inspectStoredDisk(objects, o.disk!, readBlocks));
}

/**
 * Warns of each problem of the chain's disks that may make bytes read wrong
 * (a table too small for the size, blocks that overlap): `vhd check` lists
 * them, and reading goes on. Returns how many.
 */
function warnDamage(out: Output, disk: Disk): number {
  let n = 0;
  for (let d: Disk | null = disk; d; d = d.parent) {
    if (!(d instanceof VhdDisk)) continue;
    for (const p of d.problems) {
      if (p.severity !== 'error') continue;
      n++;
      out.warn(`${problemLine(p)}; read on, but those bytes may be wrong (ferry vhd check lists every problem)`);
    }
  }
  return n;
}

/** Runs `use` on the disk (a chain reads as one) named by FILE or by the vault form. */
async function withDisk(out: Output, command: string, file: string | undefined, o: DiskOptions, use: (disk: Disk) => Promise<void>): Promise<void> {
  checkDiskForm(command, file, o);
  const run = async (disk: Disk) => {
    try {
      await use(disk);
    } finally {
      await disk.close();
    }
  };
  if (file) return run(await openChain(file));
  return withStored(out, o, async (objects, ds) => run(await ds.openStoredChain(objects, o.disk!)));
}

/**
 * Where `out` is in the chain at `path` (0: `path` itself, 1: its parent, ...),
 * or -1. The same file under another name or a hard link counts. A chain
 * that cannot be opened is just `path` (the command reports why).
 */
async function chainIndex(path: string, out: string): Promise<number> {
  const id = async (p: string) => {
    const st = await stat(p).catch(() => null);
    return st ? `${st.dev}:${st.ino}` : resolve(p);
  };
  const top = await openChain(path).catch(() => null);
  const files: string[] = [];
  for (let d: Disk | null = top; d; d = d.parent) files.push(await id(d.name));
  await top?.close();
  if (files.length === 0) files.push(await id(path));
  return files.indexOf(await id(out));
}

async function rawSize(from: string, size?: string): Promise<number> {
  let st;
  try {
    st = await stat(from);
  } catch {
    throw new FerryError('NO_SUCH_FILE', `--from ${from}: no such file`);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new UsageError(`--from ${from} is ${st.isDirectory() ? 'a folder' : 'not a regular file'}: give a raw image file or a block device`);
  const have = st.isBlockDevice() ? await blockDeviceSize(from, st.rdev) : st.size;
  let n = size ? parseSize(size, '--size') : have;
  if (n < have) throw new UsageError(`--size ${size} is less than ${from} holds (${have} bytes): the disk would lose its end; leave --size out or give at least that`);
  if (!size && n % 512 !== 0) n = Math.ceil(n / 512) * 512; // pad a ragged image with zeros
  if (n === 0) throw new UsageError(`--from ${from} is empty; give --size for an empty disk`);
  return n;
}

async function catTo(disk: Disk, offset: number, length: number): Promise<void> {
  const chunk = 4 * 1024 * 1024;
  const stdout = process.stdout;
  let broken = false;
  let failed: NodeJS.ErrnoException | undefined;
  stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') broken = true;
    else failed ??= err;
  });
  // one pair of listeners per wait, both gone after it (left behind, they pile up: MaxListenersExceededWarning)
  const drained = () =>
    new Promise<void>((res) => {
      const done = () => {
        stdout.off('drain', done);
        stdout.off('error', done);
        res();
      };
      stdout.on('drain', done);
      stdout.on('error', done);
    });
  for (let pos = offset; pos < offset + length && !broken && !failed; ) {
    const n = Math.min(chunk, offset + length - pos);
    const buf = await disk.read(pos, n);
    if (!stdout.write(buf)) await drained();
    pos += n;
  }
  // (the last write's failure shows only once it is flushed)
  if (!failed && !broken && stdout.writableNeedDrain) await drained();
  if (failed) throw new FerryError('OUTPUT_FAILED', `cannot write the disk's bytes to standard output: ${outputFailure(failed)}`, { errno: failed.code });
}

/** What vhd info was asked for: printed with --quiet too. */
function printInfo(out: Output, r: Inspection): void {
  r.layers.forEach((l, i) => {
    out.data(`${i === 0 ? '' : 'parent: '}${l.file}`);
    out.data(`  type ${l.type ?? '?'}, virtual size ${l.size ?? '?'} bytes${l.size ? ` (${formatSize(l.size)})` : ''}, file ${l.fileSize} bytes`);
    if (l.geometry) out.data(`  geometry ${l.geometry.cylinders}/${l.geometry.heads}/${l.geometry.sectorsPerTrack} (C/H/S), creator ${l.creator} on ${l.creatorOs}, ${l.timestamp}`);
    if (l.uniqueId) out.data(`  unique id ${l.uniqueId}`);
    if (l.blockSize) out.data(`  blocks ${l.allocatedBlocks}/${l.blocks} allocated, ${formatSize(l.blockSize)} each`);
    if (l.parentName !== undefined) {
      out.data(`  parent name ${JSON.stringify(l.parentName)}, parent id ${l.parentUniqueId}`);
      for (const loc of l.locators ?? []) out.data(`  locator ${loc.index} ${loc.code} ${JSON.stringify(loc.path ?? '?')}`);
    }
  });
  for (const p of r.problems) out.data(`${p.severity}: ${problemLine(p)}`);
}

export { VhdError };
