// ferry check: does the vault hold everything its points need, and (with
// --read-data) does all of it still read and authenticate?
import type { Command } from 'commander';
import { action, withGlobals, type Output } from '../cli.js';
import { progressBar } from '../progress.js';
import { openVaultFromCli, type CliOpenOptions } from '../passphrase.js';
import { EXIT, counted, formatSize } from '../../format/errors.js';

export function register(program: Command): void {
  withGlobals(program.command('check'))
    .description('check that every object the recovery points need is in the vault; with --read-data, read and authenticate all of them')
    .requiredOption('--vault <vault>', 'the vault')
    .option('--read-data', 'read, decrypt and authenticate every block (reads the whole vault)')
    .action(
      action(async (out: Output, o: CliOpenOptions & { readData?: boolean }) => {
        const { checkVault } = await import('../../vault/check.js');
        const vault = await openVaultFromCli(out, o);
        const bar = progressBar(out.opts, o.readData ? 'read' : 'check');
        try {
          const r = await checkVault(vault, { readData: o.readData, onProgress: bar.active ? (d, t) => bar.update(d, t) : undefined });
          bar.stop();
          out.result(r, () => {
            for (const n of r.notes) out.verbose(`note: ${n}`);
            const what = `${counted(r.points, 'point')}, ${counted(r.disks, 'disk')}, ${counted(r.blocks, 'block')}`;
            const read = r.readData ? `, ${formatSize(r.bytesRead)} read and authenticated` : ' (blocks present; --read-data reads them)';
            out.info(r.problems.length ? `${o.vault}: ${counted(r.problems.length, 'problem')} in ${what}${read}` : `${o.vault}: no problems in ${what}${read}`);
            if (r.notes.length && !out.opts.verbose) out.info(`${counted(r.notes.length, 'note')} on objects no point needs (--verbose lists them)`);
          });
          for (const p of r.problems) process.stderr.write(`ferry: ${p.code}: ${p.message}\n`);
          // (an item's lost definition stops no restore: its own line says what to do)
          if (r.problems.some((p) => p.code !== 'ITEM_MISSING')) {
            // what to do, once
            process.stderr.write(
              `ferry: what uses these objects cannot be restored whole: put them back from a copy of the vault if there is one (same names); else restore what is left (files go on past damage, a volume with --salvage)\n`,
            );
          }
          return r.problems.length ? EXIT.failed : 0;
        } finally {
          bar.stop();
          await vault.close();
        }
      }),
    );
}
