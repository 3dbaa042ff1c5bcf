// ferry import: verify seed disks and adopt them into the vault.
import type { Command } from 'commander';
import { action, withGlobals, type Output } from '../cli.js';
import { progressBar } from '../progress.js';
import { openVaultFromCli, withLockOptions, type CliOpenOptions } from '../passphrase.js';
import { FerryError, UsageError, counted, formatSize } from '../../format/errors.js';
import { onInterrupt } from '../../format/interrupt.js';
import type { ImportResult } from '../../seed/import.js';

export function register(program: Command): void {
  withLockOptions(withGlobals(program.command('import').argument('[disk...]', 'seed disk folders, in any order')))
    .description('verify seed disks and copy them into the vault; the point appears once every disk is in')
    .requiredOption('--vault <vault>', 'the vault')
    .action(
      action(async (out: Output, dirs: string[], o: CliOpenOptions) => {
        // loaded on use: the CLI starts fast and a command never pays for another's modules
        const { importSeeds } = await import('../../seed/import.js');
        if (dirs.length === 0) throw new UsageError('import needs at least one seed disk folder');
        const vault = await openVaultFromCli(out, o, { writable: true, command: 'import' });
        const bar = progressBar(out.opts, 'import');
        const line = (d: ImportResult['imported'][number]) => {
          const what = `${d.dir}: disk ${d.disk} of ${d.of} of seed ${d.seedId}`;
          return d.copyOf !== undefined ? `${what} was imported from ${d.copyOf} in this run` : d.already ? `${what} was already imported` : `${what} verified and imported (${counted(d.objects, 'object')}, ${formatSize(d.bytes)})`;
        };
        // a run stopped part way (a full vault, Ctrl-C) still says which disks went in
        const inSoFar: ImportResult['imported'] = [];
        let told = false;
        /** Once (an interrupt also ends in the error it causes); under --json in the one document. */
        const tellSoFar = (err?: unknown, signal?: string) => {
          if (told) return;
          told = true;
          bar.stop();
          if (!out.opts.json) {
            for (const d of inSoFar) process.stderr.write(`ferry: before it stopped: ${line(d)}\n`);
          } else if (err instanceof FerryError) {
            err.data.imported = inSoFar; // the error document lists them
          } else if (err === undefined) {
            out.json({ error: { code: 'INTERRUPTED', signal, message: `interrupted (${signal}); run the same command again to go on`, imported: inSoFar } });
          }
        };
        const unhook = onInterrupt(async (signal) => tellSoFar(undefined, signal));
        try {
          let r: ImportResult;
          try {
            r = await importSeeds(vault, dirs, {
              onProgress: (p) => bar.update(p.bytes, p.totalBytes, `disk ${p.diskNo} of ${p.of} (${p.disk}): ${p.objects}/${p.totalObjects} objects`),
              onImported: (d) => inSoFar.push(d),
            });
          } catch (err) {
            tellSoFar(err);
            throw err;
          }
          bar.stop();
          out.result(r, () => {
            for (const d of r.imported) out.info(line(d));
            for (const x of r.superseded) out.info(`disks of seed ${x.seedId} imported before were another run of seed ${x.by} and no longer count; import the disks of ${x.by}`);
            for (const p of r.registered) out.info(`registered point ${p.seq} of ${p.machine}/${p.item} (seed ${p.seedId})`);
            for (const w of r.waiting) {
              out.info(`disk${w.missing.length > 1 ? 's' : ''} ${w.missing.join(', ')} of ${w.of} of seed ${w.seedId} (${w.machine}/${w.item}) not yet imported; the point appears once ${w.missing.length > 1 ? 'they are' : 'it is'}`);
            }
          });
          // each damaged disk, last: the one line a failed command ends with (a warning when another copy of it went in)
          for (const f of r.failed) {
            if (f.copyImported) out.warn(`${f.error.message}; another copy of disk ${f.disk} given here was imported`);
            else process.stderr.write(`ferry: ${f.error.message}\n`);
          }
          return r.failed.some((f) => !f.copyImported) ? 1 : r.failed.length ? 3 : 0;
        } finally {
          unhook();
          bar.stop();
          await vault.close();
        }
      }),
    );
}
