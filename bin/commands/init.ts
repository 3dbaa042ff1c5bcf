// ferry init <vault>: a new vault with one key slot.
import type { Command } from 'commander';
import { action, withGlobals, type Output } from '../cli.js';
import { UsageError } from '../../format/errors.js';
import { CODEC_NAMES, CodecName } from '../../format/seal/layout.js';
import { initVault } from '../../vault/vault.js';
import { getPassphrase, kdfCost, withKdfOption } from '../passphrase.js';

interface InitOpts {
  passphraseFile?: string;
  passphraseCommand?: string;
  compression: string;
  level?: string;
  kdfLogN?: string;
}

export function register(program: Command): void {
  withKdfOption(
    withGlobals(
      program
        .command('init')
        .argument('<vault>', 'a new or empty directory')
        .description('create a vault: prints its id; keep the passphrase safe, nothing opens the backups without it'),
    ),
  )
    .option('--compression <codec>', 'zstd, deflate or none (objects that do not shrink are stored raw anyway)', 'zstd')
    .option('--level <n>', 'compression level (zstd 1-19, deflate 1-9)')
    .action(
      action(async (out: Output, location: string, o: InitOpts) => {
        if (!(CODEC_NAMES as readonly string[]).includes(o.compression)) throw new UsageError(`--compression must be one of ${CODEC_NAMES.join(', ')} (got ${o.compression})`);
        const codec = o.compression as CodecName;
        let level: number | undefined;
        if (o.level !== undefined) {
          level = Number(o.level);
          const max = codec === 'deflate' ? 9 : 19;
          if (!Number.isInteger(level) || level < 1 || level > max) throw new UsageError(`--level must be an integer from 1 to ${max} for ${codec} (got ${o.level})`);
        }
        const cost = kdfCost(o);
        // asked once the location is known to be usable
        const passphrase = () => getPassphrase(o, { confirm: true, prompt: 'passphrase for the new vault (16 characters or more): ' });
        const r = await initVault(location, passphrase, { cost, codec, level });
        const slot = r.config.keys[0];
        out.result(
          { vault: { id: r.id, location: r.location, created: r.config.created, defaults: r.config.defaults, keys: [{ id: slot.id, created: slot.created }] } },
          () => {
            out.info(`created vault ${r.id} at ${r.location}`);
            out.info(`key slot ${slot.id}; without a passphrase of one of its key slots, nothing in this vault can be read`);
          },
        );
      }),
    );
}
