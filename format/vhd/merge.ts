// Coalescing a differencing disk into its parent. Every sector the child
// holds is written into the parent at the same place; the parent then reads
// as the chain did. Re-applying the child is harmless (the same bytes land in
// the same places), so a merge interrupted at any instant and run again ends
// the same. A small journal beside the child lets a rerun skip the blocks
// already done.
import { readFile, rm, writeFile, rename } from 'node:fs/promises';
import type { Disk } from '../disk.js';
import { VhdError } from './problems.js';
import { openChain } from './chain.js';
import { VhdDisk } from './vhd.js';
import { isNoRoom, lockFile, writeError } from '../fsio.js';

export interface MergeResult {
  child: string;
  parent: string;
  blocks: number;
  bytes: number;
  resumedAt: number;
}

interface Journal {
  child: string;
  parent: string;
  nextBlock: number;
}

export function journalPath(childPath: string): string {
  return `${childPath}.ferry-merge`;
}

/** Copies what `child` holds into `parent` (both open; parent writable), from block `from`. */
export async function coalesce(
  child: Disk,
  parent: Disk,
  opts: { from?: number; onBlock?: (index: number) => Promise<void> | void; onProgress?: (done: number, total: number) => void } = {},
): Promise<{ blocks: number; bytes: number }> {
  let blocks = 0;
  let bytes = 0;
  for (let i = opts.from ?? 0; i < child.blockCount; i++) {
    if (child.hasBlock(i)) {
      for (const ext of await child.ownExtents(i)) {
        const data = await child.read(ext.offset, ext.length);
        await parent.write(ext.offset, data);
        bytes += ext.length;
      }
      blocks++;
    }
    await opts.onBlock?.(i);
    opts.onProgress?.(i + 1, child.blockCount);
  }
  return { blocks, bytes };
}

/** Merges the differencing VHD at `childPath` into its parent file. */
export async function mergeVhd(childPath: string, opts: { onProgress?: (done: number, total: number) => void } = {}): Promise<MergeResult> {
  // One merge at a time: of this child (a second run would read a parent
  // being written, and race on the journal), and into its parent (below).
  const unlockChild = lockFile(`${childPath}.ferry-lock`, `vhd merge of ${childPath}`);
  let unlockParent: (() => void) | undefined;
  let child: VhdDisk;
  try {
    child = await openChain(childPath);
  } catch (err) {
    unlockChild();
    throw err;
  }
  let parent: VhdDisk | undefined;
  try {
    if (child.type !== 'differencing' || !child.parent) {
      throw new VhdError({
        code: 'VHD_BAD_DISK_TYPE',
        severity: 'fatal',
        file: childPath,
        field: 'footer.diskType',
        message: `a ${child.type} disk has no parent to merge into`,
      });
    }
    const parentPath = child.parent.name;
    unlockParent = lockFile(`${parentPath}.ferry-lock`, `vhd merge of ${childPath} into it`);
    // Reopen the parent for writing, keeping its own chain behind it.
    const readOnlyParent = child.parent as VhdDisk;
    parent = await VhdDisk.open(parentPath, { writable: true, parent: readOnlyParent.parent });
    await readOnlyParent.closeLayer();
    child.parent = parent;
    if (parent.size !== child.size) {
      throw new VhdError({
        code: 'VHD_PARENT_SIZE',
        severity: 'fatal',
        file: childPath,
        field: 'footer.currentSize',
        expected: parent.size,
        actual: child.size,
        message: `child and parent sizes differ (${child.size} vs ${parent.size}); ferry merges only equal sizes`,
      });
    }
    const jp = journalPath(childPath);
    const childId = child.uniqueId.toString('hex');
    const parentId = parent.uniqueId.toString('hex');
    let from = 0;
    try {
      const j = JSON.parse(await readFile(jp, 'utf8')) as Journal;
      if (j.child === childId && j.parent === parentId && Number.isSafeInteger(j.nextBlock)) from = j.nextBlock;
    } catch {
      // no journal, or an unreadable one: start from the beginning (always safe)
    }
    let sinceSave = 0;
    const save = async (next: number) => {
      // Parent writes go first: the journal never claims more than is written.
      await parent!.flush();
      const tmp = `${jp}.tmp`;
      await writeFile(tmp, JSON.stringify({ child: childId, parent: parentId, nextBlock: next } satisfies Journal));
      await rename(tmp, jp);
    };
    const r = await coalesce(child, parent, {
      from,
      onProgress: opts.onProgress,
      onBlock: async (i) => {
        if (++sinceSave >= 64) {
          sinceSave = 0;
          await save(i + 1);
        }
      },
    });
    await parent.flush();
    await rm(jp, { force: true });
    return { child: childPath, parent: parentPath, blocks: r.blocks, bytes: r.bytes, resumedAt: from };
  } catch (err) {
    // the parent grows by what the child holds; half-merged, it reads right again once the merge is finished
    // (a full disk only: other errors may be the journal's, beside the child, and name their file themselves)
    if (!isNoRoom(err)) throw err;
    throw writeError(err, parent?.name ?? childPath, `the merge of ${childPath} into it stopped part way; free space there and run ferry vhd merge ${childPath} again to finish it (until then the parent is half-merged)`);
  } finally {
    await child.closeLayer();
    if (parent) await parent.close();
    else await child.parent?.close();
    unlockParent?.();
    unlockChild();
  }
}
