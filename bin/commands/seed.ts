// ferry seed: the first full backup of an item, onto shippable disks.
import type { Command } from 'commander';
import { action, withGlobals, type Output } from '../cli.js';
import { progressBar } from '../progress.js';
import { openVaultFromCli, type CliOpenOptions } from '../passphrase.js';
import { EXIT, UsageError, counted, formatSize, parseSize } from '../../format/errors.js';
import type { ItemKind } from '../../vault/registry.js';

interface SeedOpts extends CliOpenOptions {
  item: string;
  kind: string;
  disk: string[];
  diskCapacity?: string;
  databox?: string;
  exclude: string[];
  oneFileSystem?: boolean;
  machine?: string;
}

// (no default: commander would show `(default: [])` in the help)
const collect = (v: string, prev: string[] = []) => [...prev, v];

export function register(program: Command): void {
  withGlobals(program.command('seed').argument('[source...]', 'paths (files), a device or image (volume); none for system-state'))
    .description('write the first full backup of an item onto seed disks (folders, USB drives, Data Box Disks)')
    .requiredOption('--vault <vault>', 'the vault the seed will be imported into')
    .requiredOption('--item <name>', 'the item name')
    .requiredOption('--kind <kind>', 'files, volume or system-state')
    .option('--disk <dir>', 'a seed disk (folder); repeat for more', collect)
    .option('--disk-capacity <size>', 'bytes to put on each disk (default: its free space)')
    .option('--databox <container>', 'lay objects out as BlockBlob/<container>/... for an Azure Data Box')
    .option('--exclude <glob>', 'leave out matching paths; repeat for more', collect)
    .option('--one-file-system', 'do not cross into other filesystems')
    .option('--machine <name>', 'the machine name (default: this host name)')
    .action(
      action(async (out: Output, sources: string[], o: SeedOpts) => {
        o.disk ??= [];
        o.exclude ??= [];
        // loaded on use: the CLI starts fast and a command never pays for another's modules
        const { seed } = await import('../../seed/seed.js');
        if (!['files', 'volume', 'system-state'].includes(o.kind)) throw new UsageError(`--kind must be files, volume or system-state (got ${JSON.stringify(o.kind)})`);
        if (o.disk.length === 0) throw new UsageError('seed needs at least one --disk DIR');
        if (o.kind === 'volume' && (o.exclude.length > 0 || o.oneFileSystem)) {
          throw new UsageError(`${o.exclude.length ? '--exclude' : '--one-file-system'} picks files; a volume is copied whole, block by block: leave it out`);
        }
        const capacity = o.diskCapacity !== undefined ? parseSize(o.diskCapacity, '--disk-capacity') : undefined;
        // a block that does not compress, sealed (2 MiB and a little), with the disk's manifest beside it
        if (capacity !== undefined && capacity < 3 * 1024 * 1024) throw new UsageError(`--disk-capacity ${o.diskCapacity} is too small: a seed disk must hold one 2 MiB block and its manifest, 3M at least`);
        const vault = await openVaultFromCli(out, o);
        const bar = progressBar(out.opts, 'seed');
        const warnings: Array<{ path?: string; message: string }> = [];
        const notes: Array<{ path?: string; message: string }> = [];
        try {
          const r = await seed({
            vault,
            machine: o.machine,
            item: o.item,
            kind: o.kind as ItemKind,
            sources,
            excludes: o.exclude,
            oneFileSystem: o.oneFileSystem,
            disks: o.disk,
            diskCapacity: capacity,
            databox: o.databox,
            // Without a bar, no progress: the seed then skips counting the sources.
            onProgress: !bar.active ? undefined : (p) =>
              bar.update(p.bytes, p.totalBytes ?? Math.max(p.bytes, 1), `${p.files}${p.totalFiles ? `/${Math.max(p.totalFiles, p.files)}${p.totalsFinal ? '' : '+'}` : ''} entries, disk ${p.disk} of ${p.disks}`),
            onWarning: (w) => {
              warnings.push(w);
              out.warn(w.message);
            },
            onNote: (w) => notes.push(w),
          });
          bar.stop();
          out.result({ ...r, warningList: warnings, notes }, () => {
            for (const n of notes) out.info(`left out: ${n.message}`);
            if (r.already) out.info(`seed ${r.seedId} of ${r.machine}/${r.item} (${r.kind}) is already complete on ${r.disks.join(', ')}: nothing to do (a new seed of this item needs empty disks)`);
            else out.info(
              `seed ${r.seedId} of ${r.machine}/${r.item} (${r.kind}) written${r.resumed ? ' (resumed)' : ''}: ${r.files ? `${counted(r.files, 'file')}, ` : ''}${formatSize(r.bytes)} on ${counted(r.ofDisks ?? r.diskCount, 'disk')} (${counted(r.objects, 'object')}, ${formatSize(r.sealedBytes)} written${r.kept ? `, ${r.kept} kept from before` : ''})`,
            );
            if (r.missingDisks?.length) {
              out.info(`disk ${r.missingDisks.join(', ')} of ${r.ofDisks} of this seed ${r.missingDisks.length === 1 ? 'was' : 'were'} not given; if not yet marked complete, run the same command with ${r.missingDisks.length === 1 ? 'it' : 'them'}`);
            }
            for (const d of r.madeDisks ?? []) out.info(`${d} did not exist and was made: if a disk should be mounted there, it was not (check with df ${d})`);
            out.info(`next: ship the disk${r.diskCount === 1 ? '' : 's'}, then ferry import --vault ${o.vault} ${r.disks.join(' ')}`);
            const unused = o.disk.filter((d) => !r.disks.includes(d));
            if (unused.length) out.info(`not needed: ${unused.join(' ')}`);
            if (r.warnings) out.info(`done with ${r.warnings} ${r.warnings === 1 ? 'warning' : 'warnings'} (listed above)`);
          });
          return r.warnings ? EXIT.warnings : EXIT.ok;
        } finally {
          bar.stop();
          await vault.close();
        }
      }),
    );
}
