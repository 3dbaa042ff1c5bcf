// What a seed or backup reads, by item kind: the file-tree walker for files
// and system state, the block reader for volumes.
import type { SourceEntry } from '../format/volume/index.js';
import { DEFAULT_CHUNK_SIZE } from '../format/volume/layout.js';
import { walk } from '../source/files.js';
import { readVolume } from '../source/volume.js';
import type { ItemKind } from '../vault/registry.js';

/**
 * Small files read ahead of the volume writer: enough to keep the disk busy
 * (the walker reads 8 files at once), little enough to keep memory flat: the
 * walker holds at most this much beyond the file being written. (8 MiB
 * seeded the bench tree in the same time, 4 MiB higher.)
 */
const READ_AHEAD = 4 * 1024 * 1024;

export interface SourceOptions {
  excludes: string[];
  oneFileSystem: boolean;
  /** Folders never backed up, by identity ("dev:ino"): the seed disks, the vault. */
  skipDirs?: Set<string>;
  onWarning: (w: { path?: string; message: string }) => void;
  /** What the walk left out by design (a /proc mount's contents). */
  onNote?: (w: { path?: string; message: string }) => void;
}

export async function* sourceEntries(kind: ItemKind, sources: string[], o: SourceOptions): AsyncGenerator<SourceEntry> {
  const onWarning = (w: { path?: Buffer; message: string }) => o.onWarning({ path: w.path?.toString(), message: w.message });
  const onNote = (w: { path?: Buffer; message: string }) => o.onNote?.({ path: w.path?.toString(), message: w.message });
  if (kind === 'system-state') {
    const { collectSystemState } = await import('../source/system-state.js');
    const state = await collectSystemState({ onWarning });
    try {
      yield* walk(state.sources, { excludes: [...state.excludes, ...o.excludes], oneFileSystem: false, skipDirs: o.skipDirs, onWarning, onNote, readAhead: READ_AHEAD, hashChunk: DEFAULT_CHUNK_SIZE });
    } finally {
      await state.cleanup();
    }
    return;
  }
  yield* walk(sources, { excludes: o.excludes, oneFileSystem: o.oneFileSystem, skipDirs: o.skipDirs, onWarning, onNote, readAhead: READ_AHEAD, hashChunk: DEFAULT_CHUNK_SIZE });
}

export function volumeChunks(source: string): AsyncIterable<{ offset: number; data: Buffer }> {
  return readVolume(source);
}
