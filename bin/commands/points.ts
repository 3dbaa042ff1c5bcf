// ferry points: every recovery point, oldest first.
import type { Command } from 'commander';
import { action, withGlobals, type Output } from '../cli.js';
import { openVaultFromCli, type CliOpenOptions } from '../passphrase.js';
import { EXIT, formatSize } from '../../format/errors.js';
import { listPoints, type DamagedPoint } from '../../vault/registry.js';

export function register(program: Command): void {
  withGlobals(program.command('points'))
    .description('list recovery points: time, kind, size, and whether from a seed or a backup')
    .requiredOption('--vault <vault>', 'the vault')
    .option('--machine <name>', 'only this machine')
    .option('--item <name>', 'only this item')
    .action(
      action(async (out: Output, o: CliOpenOptions & { machine?: string; item?: string }) => {
        const vault = await openVaultFromCli(out, o);
        try {
          // the undamaged points are listed; each damaged one is named, and the run fails
          const damaged: DamagedPoint[] = [];
          const points = await listPoints(vault, { machine: o.machine, item: o.item }, (d) => damaged.push(d));
          const doc = points.map((p) => ({ seq: p.seq, time: p.time, kind: p.kind, machine: p.machine, item: p.item, source: p.source, size: p.size, disks: p.chain.length, sources: p.sources, stats: p.stats }));
          out.result(doc, () => {
            const of = [o.machine && `machine ${o.machine}`, o.item && `item ${o.item}`].filter(Boolean).join(', ');
            // the listing is what was asked for: --quiet keeps it (and drops the line that says there is none)
            if (points.length === 0) out.info(`no recovery points${of ? ` of ${of}` : ''} in ${o.vault}`);
            else out.data(['seq', 'time', 'machine', 'item', 'kind', 'source', 'size'].join('\t'));
            for (const p of points) out.data([p.seq, p.time, p.machine, p.item, p.kind, p.source, formatSize(p.size)].join('\t'));
          });
          for (const d of damaged) process.stderr.write(`ferry: point ${d.seq} of ${d.machine}/${d.item} is not listed: ${d.error.message}\n`);
          if (damaged.length) return EXIT.failed;
        } finally {
          await vault.close();
        }
      }),
    );
}
