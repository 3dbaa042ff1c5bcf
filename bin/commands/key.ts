// ferry key add | list | remove --vault V: the passphrases (key slots) that open a vault.
import type { Command } from 'commander';
import { action, withGlobals, type Output } from '../cli.js';
import { checkNewPassphrase } from '../../vault/keys.js';
import { getNewPassphrase, kdfCost, openVaultFromCli, withKdfOption, withLockOptions, type CliOpenOptions } from '../passphrase.js';

interface KeyOpts extends CliOpenOptions {
  newPassphraseFile?: string;
  kdfLogN?: string;
}

export function register(program: Command): void {
  const key = program.command('key').description('add, list and remove the passphrases that open a vault');

  withKdfOption(withLockOptions(withGlobals(key.command('add').description('add a passphrase (a key slot); prints its slot id'))))
    .requiredOption('--vault <vault>', 'the vault')
    .option('--new-passphrase-file <file>', 'read the new passphrase from this file (else FERRY_NEW_PASSPHRASE, else a prompt)')
    .action(
      action(async (out: Output, o: KeyOpts) => {
        const cost = kdfCost(o);
        const reader = await openVaultFromCli(out, o);
        try {
          // Asked only once the current passphrase proved right, and checked before the lock is taken.
          const fresh = await getNewPassphrase(o);
          checkNewPassphrase(fresh, 'the new passphrase');
          const writer = await reader.openWriter({ breakLock: o.breakLock, onWarning: (m) => out.warn(m), onNote: (m) => out.note(m), command: 'key add' });
          try {
            const slot = await writer.addKey(fresh, { cost });
            out.result({ vault: writer.id, added: slot }, () => out.info(`added key slot ${slot.id} to vault ${writer.id}`));
          } finally {
            await writer.close();
          }
        } finally {
          await reader.close();
        }
      }),
    );

  withGlobals(key.command('list').description('the key slots: id, creation time, scrypt cost (no secrets)'))
    .requiredOption('--vault <vault>', 'the vault')
    .action(
      action(async (out: Output, o: KeyOpts) => {
        const v = await openVaultFromCli(out, o);
        try {
          const keys = v.slots().map((s) => ({ ...s, current: s.id === v.slotId }));
          out.result({ vault: v.id, keys }, () => {
            // the slots are what was asked for: --quiet keeps them, and drops the count
            out.info(`vault ${v.id}: ${keys.length} key slot${keys.length === 1 ? '' : 's'}`);
            for (const k of keys) {
              out.data(`${k.current ? '*' : ' '} ${k.id}  created ${k.created}  scrypt N=2^${Math.log2(k.kdf.N)} r=${k.kdf.r} p=${k.kdf.p}`);
            }
          });
        } finally {
          await v.close();
        }
      }),
    );

  withLockOptions(withGlobals(key.command('remove').argument('<slot-id>', 'the slot to remove (ferry key list)').description('remove a key slot; unlock with a passphrase that stays')))
    .requiredOption('--vault <vault>', 'the vault')
    .action(
      action(async (out: Output, id: string, o: KeyOpts) => {
        const v = await openVaultFromCli(out, o, { writable: true, command: 'key remove' });
        try {
          await v.removeKey(id);
          out.result({ vault: v.id, removed: id, keys: v.slots() }, () => out.info(`removed key slot ${id} from vault ${v.id}; ${v.slots().length} left`));
        } finally {
          await v.close();
        }
      }),
    );
}
