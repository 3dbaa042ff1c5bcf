// Buffers freed at once instead of at some later garbage collection, and block buffers used again.
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { nativeAddon } from './native.js';

const PAGE = 4096;

/**
 * `size` bytes (contents undefined) that start on a page, as O_DIRECT reads
 * and writes need (a view into a buffer a page larger), or null when the
 * addon cannot tell where memory sits.
 */
export function pageAligned(size: number): Buffer | null {
  const alignOf = nativeAddon()?.alignOf;
  if (!alignOf) return null;
  const raw = Buffer.allocUnsafeSlow(size + PAGE);
  const start = (PAGE - alignOf(raw)) % PAGE;
  return raw.subarray(start, start + size);
}

/** Whether `b` starts on a multiple of `unit` in memory (false when the addon cannot tell). */
export function alignedTo(b: Uint8Array, unit: number): boolean {
  const alignOf = nativeAddon()?.alignOf;
  return alignOf ? alignOf(b) % unit === 0 : false;
}

/** Whether `b` is the whole of a (not shared) ArrayBuffer: only then can its memory be handed over, freed or used again. */
export function ownsWhole(b: Uint8Array): b is Uint8Array<ArrayBuffer> {
  return b.byteOffset === 0 && b.buffer instanceof ArrayBuffer && b.byteLength === b.buffer.byteLength;
}

/** Views whose memory goes back to its owner when freed (returnTo). */
const owners = new WeakMap<Uint8Array, () => void>();

/**
 * freeBuffer(view) calls `back` (once) instead of freeing: for a view
 * into a buffer its owner uses again (a SealPool's results).
 */
export function returnTo(view: Uint8Array, back: () => void): void {
  owners.set(view, back);
}

/** Whether `b` is a view whose memory goes back to an owner (returnTo): never to be moved or freed. */
export function isLent(b: Uint8Array): boolean {
  return owners.has(b);
}

/** A closed port: a buffer posted to it is detached and dropped on the spot. */
let sink: MessagePort | undefined;

/**
 * Frees a buffer's memory now rather than at some later garbage collection,
 * which for large buffers comes late: V8 lets tens of MiB of them pile up per
 * thread first. Only for a Buffer that is the whole of its ArrayBuffer (as
 * sealed results are); others are left to the collector. The caller must be
 * the buffer's last user: it and every view of its memory are empty after.
 */
export function freeBuffer(b: Uint8Array): void {
  const back = owners.get(b);
  if (back) {
    owners.delete(b);
    back();
    return;
  }
  if (b.byteLength < 4096 || !ownsWhole(b)) return;
  if (!sink) {
    sink = new MessageChannel().port1;
    sink.close();
  }
  try {
    sink.postMessage(null, [b.buffer]);
  } catch {
    // left to the garbage collector
  }
}

// Block buffers handed back by the seal workers, to be used again. A fresh
// 2 MiB buffer is 512 pages the kernel must fault in and zero one by one;
// zeroing one already mapped costs a fifth of that (a seed makes one per
// VHD block: about 0.2 s of its main thread per GiB).
const spare = new Map<number, { b: Buffer; zeroed: boolean }[]>();
/** Zeroed block buffers kept for takeZeroed() (2: a seed peaked lower than with 4, in the same time). */
export const SPARE_MAX = 2;

/**
 * A zero-filled buffer of `size` bytes that owns its memory: one given back
 * by recycleBuffer() when there is one. Sizes asked for here are the only
 * ones recycleBuffer() keeps.
 */
export function takeZeroed(size: number): Buffer {
  let list = spare.get(size);
  if (!list) spare.set(size, (list = []));
  const s = list.pop();
  if (!s) return Buffer.alloc(size);
  return s.zeroed ? s.b : s.b.fill(0);
}

/**
 * Keeps a buffer nothing uses any more (its last user calls this) for
 * takeZeroed(), if that size is asked for and few are kept; frees it
 * otherwise. The memory must be the whole of its ArrayBuffer. `zeroed`: its
 * last user zeroed it already (a seal worker, off the main thread).
 */
export function recycleBuffer(b: Uint8Array, zeroed = false): void {
  const list = spare.get(b.byteLength);
  if (!list || list.length >= SPARE_MAX || !ownsWhole(b)) {
    freeBuffer(b);
    return;
  }
  list.push({ b: Buffer.from(b.buffer, 0, b.byteLength), zeroed });
}

/** How many buffers of `size` are kept for takeZeroed(). */
export function spareCount(size: number): number {
  return spare.get(size)?.length ?? 0;
}
