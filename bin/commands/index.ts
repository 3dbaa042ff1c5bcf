// Every command module registers itself on the program. One file per command,
// loaded only when needed: `ferry vhd ...` does not load the vault, the
// sealing code or zstd (start-up is part of every command's time).
import type { Command } from 'commander';

type Register = (program: Command) => void;

export const commandModules: Record<string, () => Promise<Register>> = {
  vhd: async () => (await import('./vhd.js')).register,
  init: async () => (await import('./init.js')).register,
  key: async () => (await import('./key.js')).register,
  seed: async () => (await import('./seed.js')).register,
  import: async () => (await import('./import.js')).register,
  points: async () => (await import('./points.js')).register,
  restore: async () => (await import('./restore.js')).register,
  check: async () => (await import('./check.js')).register,
};

/** The registrars a command line needs: the named command's alone, or all
 * of them (top-level help, an unknown command, a leading option). */
export async function commandsFor(argv: readonly string[]): Promise<Register[]> {
  const first = argv[2];
  const names = first !== undefined && Object.hasOwn(commandModules, first) ? [first] : Object.keys(commandModules);
  return Promise.all(names.map((n) => commandModules[n]!()));
}
