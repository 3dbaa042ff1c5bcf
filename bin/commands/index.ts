// Every command module registers itself on the program. One file per command.
import type { Command } from 'commander';
import { register as vhd } from './vhd.js';
import { register as init } from './init.js';
import { register as key } from './key.js';
import { register as seed } from './seed.js';
import { register as importCmd } from './import.js';
import { register as points } from './points.js';
import { register as restore } from './restore.js';

export const commands: Array<(program: Command) => void> = [vhd, init, key, seed, importCmd, points, restore];
