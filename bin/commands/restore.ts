// ferry restore: files, a volume or the system state of one recovery point.
import type { Command } from 'commander';
import { hostname } from 'node:os';
import { action, withGlobals, type Output } from '../cli.js';
import { progressBar } from '../progress.js';
import { openVaultFromCli, type CliOpenOptions } from '../passphrase.js';
import { EXIT, UsageError, formatSize, counted } from '../../format/errors.js';
import type { RestoreFormat } from '../../restore/restore.js';

interface RestoreOpts extends CliOpenOptions {
  item: string;
  point?: string;
  machine?: string;
  path: string[];
  to?: string;
  ifExists: string;
  format?: string;
  salvage?: boolean;
  verifyFirst?: boolean;
}

/** Why entries were skipped, in the summary: " (3 already equal, 1 with the backup's copy beside it already)". */
function skippedWhy(equal: number, copies: number): string {
  const why = [equal ? `${equal} already equal` : '', copies ? `${copies} with the backup's copy beside ${copies === 1 ? 'it' : 'them'} already` : ''].filter(Boolean);
  return why.length ? ` (${why.join(', ')})` : '';
}

// (no default: commander would show `(default: [])` in the help)
const collect = (v: string, prev: string[] = []) => [...prev, v];

export function register(program: Command): void {
  withGlobals(program.command('restore'))
    .description('restore files, a volume or the system state from a recovery point')
    .requiredOption('--vault <vault>', 'the vault')
    .requiredOption('--item <name>', 'the item')
    .option('--point <p>', 'a point number, latest, or a time (the newest at or before it)', 'latest')
    .option('--machine <name>', "the machine whose item to restore (default: this host; another name is alternate-server recovery)")
    .option('--path <p>', 'only this path or glob (repeat for more); a folder brings its whole tree', collect)
    .option('--to <target>', 'restore under this folder (files) or into this device or file (volume); default: the original places')
    .option('--if-exists <policy>', 'for files that exist (and an image, VHD or tar at --to): copy (keep both), overwrite or skip', 'copy')
    .option('--format <f>', 'dir or tar (files, system state); raw or vhd (volume)')
    .option('--salvage', 'volume: write zeros where stored data cannot be read, name those ranges, and go on (exit 3); files always go on past damage')
    .option('--verify-first', 'volume: read and authenticate every stored block before writing any, so that a damaged one leaves a device untouched (reads the point twice)')
    .action(
      action(async (out: Output, o: RestoreOpts) => {
        o.path ??= [];
        // loaded on use: the CLI starts fast and a command never pays for another's modules
        const { restore } = await import('../../restore/restore.js');
        if (!['copy', 'overwrite', 'skip'].includes(o.ifExists)) throw new UsageError(`--if-exists must be copy, overwrite or skip (got ${JSON.stringify(o.ifExists)})`);
        if (o.format && !['dir', 'raw', 'vhd', 'tar'].includes(o.format)) throw new UsageError(`--format must be dir, tar, raw or vhd (got ${JSON.stringify(o.format)})`);
        const vault = await openVaultFromCli(out, o);
        const bar = progressBar(out.opts, 'restore');
        const warningList: Array<{ path?: string; message: string }> = [];
        try {
          const r = await restore(vault, {
            machine: o.machine ?? hostname(),
            item: o.item,
            point: o.point,
            paths: o.path,
            to: o.to,
            ifExists: o.ifExists as 'copy' | 'overwrite' | 'skip',
            format: o.format as RestoreFormat | undefined,
            salvage: o.salvage,
            verifyFirst: o.verifyFirst,
            onNote: (m) => out.verbose(`ferry: ${m}`),
            onProgress: (d, t) => bar.update(d, t),
            onWarning: (w) => {
              warningList.push(w.path ? { path: w.path, message: w.message } : { message: w.message });
              out.warn(w.message);
            },
          });
          bar.stop();
          // not "done with warnings": nothing at all was done
          const nothing = r.failed > 0 && r.restored === 0 && r.skipped === 0;
          out.result({ ...r, warningList }, () => {
            if (nothing) return; // (the one line below says it)
            out.info(`restored point ${r.point.seq} of ${r.point.machine}/${r.point.item} (${r.point.time}) to ${r.to}: ${counted(r.restored, 'entry', 'entries')}, ${formatSize(r.bytes)}${r.copies ? ` (${r.copies} written beside a different existing one as *.ferry-restored-${r.point.seq}, or .2, .3 ... after it where that name was taken)` : ''}${r.skipped ? `, ${r.skipped} skipped${skippedWhy(r.unchanged ?? 0, r.copiesFound ?? 0)}` : ''}`);
            const other = r.warnings - r.failed;
            if (r.failed) out.info(`done with warnings: ${r.failed} ${r.failed === 1 ? 'entry' : 'entries'} could not be restored${other ? `, and ${other} other ${other === 1 ? 'warning' : 'warnings'}` : ''} (listed above)`);
            else if (r.warnings) out.info(`done with ${r.warnings} ${r.warnings === 1 ? 'warning' : 'warnings'} (listed above)`);
          });
          if (nothing) {
            process.stderr.write(`ferry: nothing was restored to ${r.to}: ${counted(r.failed, 'entry', 'entries')} could not be restored (listed above); check that the target can be written, or name another --to\n`);
            return EXIT.failed;
          }
          return r.warnings ? EXIT.warnings : EXIT.ok;
        } finally {
          bar.stop();
          await vault.close();
        }
      }),
    );
}
