// Freeing a large buffer at once instead of at some later garbage collection.
import { MessageChannel, type MessagePort } from 'node:worker_threads';

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
  if (b.byteLength < 64 * 1024 || b.byteOffset !== 0 || !(b.buffer instanceof ArrayBuffer) || b.byteLength !== b.buffer.byteLength) return;
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
