// A bounded pipeline of sealed puts into a vault: sealing runs on the pool
// and several atomic writes are in flight at once, so that neither the CPU
// nor the disk's fsync latency sets the pace alone. Failures surface at the
// next put or at flush().
import type { VaultReader, VaultWriter } from './vault.js';
import type { FileRange } from '../format/filerange.js';

export class VaultPutter {
  private readonly window = new Set<Promise<void>>();
  private failure: unknown;
  readonly stats = { objects: 0, bytes: 0, stored: 0 };

  constructor(
    private readonly vault: VaultWriter,
    private readonly depth = Math.max(4, vault.pool.size * 4),
  ) {}

  async put(name: string, data: Buffer, give = false): Promise<void> {
    return this.#put(name, data, give);
  }

  /** Puts bytes of an open file, which the sealing thread maps or reads itself; the file stays open until idle(). */
  async putRange(name: string, range: FileRange): Promise<void> {
    return this.#put(name, range, false);
  }

  /** Resolves when no put is in flight (never rejects: failures stay for flush()). */
  async idle(): Promise<void> {
    await Promise.allSettled(this.window);
  }

  async #put(name: string, data: Buffer | FileRange, give: boolean): Promise<void> {
    if (this.failure) throw this.failure;
    while (this.window.size >= this.depth) await Promise.race(this.window);
    if (this.failure) throw this.failure;
    const length = data.length; // `data` is empty once given away
    const p: Promise<void> = this.vault
      .putSealed(name, data, { give })
      .then((r) => {
        this.stats.objects++;
        this.stats.bytes += length;
        this.stats.stored += r.size;
      })
      .catch((err) => {
        this.failure ??= err;
      })
      .finally(() => this.window.delete(p));
    this.window.add(p);
  }

  async flush(): Promise<void> {
    await Promise.all(this.window);
    if (this.failure) throw this.failure;
  }

  /**
   * Waits for every put so far and makes them durable together (one group
   * commit of the vault's backend), then opens the next batch: what is put
   * after the barrier may refer to what was put before it.
   */
  async barrier(): Promise<void> {
    await this.flush();
    await this.vault.commitBatch();
    // what comes next makes the objects before it count (a disk's head): only
    // while the lock is still ours, not after a --break-lock took it
    await this.vault.lock.verify();
    this.vault.beginBatch();
  }

  /** Opens the first batch (puts until barrier() or end() need not be durable one by one). */
  begin(): void {
    this.vault.beginBatch();
  }

  /** Waits for every put and makes them durable; ends the batch. */
  async end(): Promise<void> {
    await this.flush();
    await this.vault.commitBatch();
  }
}

/** The plaintext object getter of a vault. */
export function vaultObjects(vault: VaultReader): { get(name: string): Promise<Buffer>; readonly fresh: true } {
  // each get unseals into a new buffer that only the caller holds
  return { get: (name) => vault.getSealed(name), fresh: true };
}
