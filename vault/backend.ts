// The one small interface every vault backend implements (a directory now,
// Azure Blob later). Backends move opaque bytes under names; sealing,
// locking and layout live above them. Every backend passes
// test/backend-conformance.ts, also wrapped in test/faulty-backend.ts.
import { FerryError, UsageError } from '../format/errors.js';

export interface ObjectStat {
  size: number;
}

export interface Backend {
  /** Where the objects live (a directory path, an azure:// URL), for messages. */
  readonly location: string;
  /**
   * Stores `data` under `name`, replacing what was there. Atomic: a reader
   * sees the old bytes or the new bytes, never a mix or a prefix, even if the
   * writer dies halfway. Durable once the promise resolves. Keeps no
   * reference to `data` after that: the caller may free or reuse it.
   */
  put(name: string, data: Buffer): Promise<void>;
  /** Like put, but fails with OBJECT_EXISTS if `name` exists (locks and vault.json rely on it). */
  putNew(name: string, data: Buffer): Promise<void>;
  /** The whole object; OBJECT_MISSING naming it if there is none. */
  get(name: string): Promise<Buffer>;
  /** Every object whose name starts with `prefix`, in no promised order; never a half-written one. */
  list(prefix: string): AsyncIterable<string>;
  /** Removes `name`; removing what is not there is not an error (deletes are retried). */
  delete(name: string): Promise<void>;
  exists(name: string): Promise<boolean>;
  /** OBJECT_MISSING naming it if there is none. */
  stat(name: string): Promise<ObjectStat>;
  /** One line for humans: kind and location. */
  describe(): string;
  /**
   * Test seam: a backend that can, calls `faults.midWrite` after writing part
   * of an object, so a test can fail a write halfway (a torn write).
   */
  injectFaults?(faults: IoFaults | null): void;
  /**
   * Optional group commit, for writing many new objects that nothing refers
   * to yet (the blocks of a disk before its head): until commitBatch()
   * resolves, a put of a name that did not exist is atomic but need not be
   * durable on its own; commitBatch() makes every such put durable at once.
   * Replacing an existing object stays durable on its own. Backends without
   * it make every put durable, which is also correct.
   */
  beginBatch?(): void;
  commitBatch?(): Promise<void>;
  /**
   * Inside a batch: an object found already there (written by a run that was
   * stopped before its commit) is made durable with the batch too.
   */
  keepInBatch?(name: string): void;
}

export interface IoFaults {
  /** Called during put/putNew after `written` of `total` bytes reached storage; throwing aborts the write. */
  midWrite?(name: string, written: number, total: number): void;
}

const MAX_NAME_BYTES = 1024;

/**
 * Object names are relative, '/'-separated paths of non-empty segments. A
 * segment may not be '.' or '..' or start with '.' (backends keep their
 * temporary files there), nor hold a backslash or a control character.
 */
export function checkObjectName(name: unknown, what = 'object name'): asserts name is string {
  const bad = objectNameProblem(name);
  if (bad) throw new UsageError(`${what} ${JSON.stringify(name)} is not valid: ${bad}`, { object: name });
}

function objectNameProblem(name: unknown): string | null {
  if (typeof name !== 'string' || name.length === 0) return 'it must be a non-empty string';
  if (Buffer.byteLength(name) > MAX_NAME_BYTES) return `it is longer than ${MAX_NAME_BYTES} bytes`;
  if (name.startsWith('/')) return 'it must be relative (no leading /)';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f\\]/.test(name)) return 'it holds a control character or a backslash';
  for (const seg of name.split('/')) {
    if (seg === '') return 'it has an empty segment (// or a trailing /)';
    if (seg === '..' || seg === '.') return `it has a "${seg}" segment`;
    if (seg.startsWith('.')) return 'a segment starts with "." (reserved for temporary files)';
  }
  return null;
}

/** A prefix for list(): '' or a name prefix; the same rules except it may end in '/' or mid-segment. */
export function checkPrefix(prefix: unknown): asserts prefix is string {
  if (prefix === '') return;
  if (typeof prefix !== 'string') throw new UsageError('list prefix must be a string', { prefix });
  const probe = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
  const bad = objectNameProblem(probe);
  // A prefix may stop right after a '.'-less partial segment; anything else follows the name rules.
  if (bad) throw new UsageError(`list prefix ${JSON.stringify(prefix)} is not valid: ${bad}`, { prefix });
}

export function objectMissing(location: string, name: string): FerryError {
  return new FerryError('OBJECT_MISSING', `object ${name} is missing from ${location}`, { object: name, location });
}

export function objectExists(location: string, name: string): FerryError {
  return new FerryError('OBJECT_EXISTS', `object ${name} already exists in ${location}`, { object: name, location });
}

/** A view that reads but refuses writes: what read-only vault handles expose. */
export function readOnlyBackend(inner: Backend): Backend {
  const refuse = (name: string): never => {
    throw new FerryError('READ_ONLY', `cannot write ${name}: ${inner.location} is open read-only`, { object: name, location: inner.location });
  };
  return {
    location: inner.location,
    put: async (name) => refuse(name),
    putNew: async (name) => refuse(name),
    delete: async (name) => refuse(name),
    get: (name) => inner.get(name),
    list: (prefix) => inner.list(prefix),
    exists: (name) => inner.exists(name),
    stat: (name) => inner.stat(name),
    describe: () => `${inner.describe()} (read-only)`,
  };
}

/** Collects a listing; for small prefixes and tests. */
export async function listAll(backend: Backend, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for await (const n of backend.list(prefix)) out.push(n);
  return out.sort();
}
