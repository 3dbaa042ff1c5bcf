// Small helpers the restore tests share: a tree backed up into an in-memory
// volume, and the xattrs of a path as getfattr shows them.
import { spawnSync } from 'node:child_process';
import { walk } from '../../source/files.js';
import { MemDisk } from '../../format/memdisk.js';
import { writeVolume, VolumeReader } from '../../format/volume/index.js';
import { restoreFiles, type RestoreOptions } from '../../restore/files.js';

/** `src` walked into a volume on a sparse in-memory disk, opened for reading. */
export async function backup(src: string): Promise<VolumeReader> {
  const disk = new MemDisk(2040 * 1024 ** 3);
  await writeVolume(disk, walk([src]), {});
  return VolumeReader.open(disk);
}

/** Every xattr of `p` (not following a symlink), hex values, without the "# file" line. */
export function xattrsOf(p: string): string {
  const r = spawnSync('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', '--', p]);
  return r.stdout.toString().split('\n').filter((l) => l && !l.startsWith('# file')).sort().join('\n');
}

/** Runs a command; its stdout, or an error with its stderr when it fails. */
export function mustSync(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { input: input ?? '' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout.toString();
}

/** restoreFiles with its warnings collected as "CODE: message". */
export async function restoreCollect(reader: VolumeReader, opts: RestoreOptions) {
  const warnings: string[] = [];
  const r = await restoreFiles(reader, { ...opts, onWarning: (w) => warnings.push(`${w.code}: ${w.message}`) });
  return { r, warnings };
}
