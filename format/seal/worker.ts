// A SealPool worker: runs Sealer in its own thread and answers one message
// per task. Errors go back as plain data; the pool rebuilds FerryErrors.
import { parentPort, workerData } from 'node:worker_threads';
import { FerryError } from '../errors.js';
import { Sealer, SealerOptions } from './seal.js';
import type { TaskMessage, ResultMessage, ResultHashes } from './pool.js';
import { freeBuffer, ownsWhole } from '../buffers.js';
import { withRange } from '../filerange.js';
import { createHash } from 'node:crypto';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const { key, options } = workerData as { key: import('node:crypto').KeyObject; options: SealerOptions };
const sealer = new Sealer(key, options);
const port = parentPort!;

port.on('message', (m: TaskMessage) => {
  let reply: ResultMessage;
  let transfer: ArrayBuffer[] = [];
  try {
    const input = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    let out: Buffer;
    let hashes: ResultHashes | undefined;
    if (m.op === 'verify') {
      sealer.verify(m.name, input);
      out = Buffer.alloc(0);
      if (m.hash) hashes = { sealed: sha256(input) };
    } else if (m.op === 'seal') {
      // a file range is mapped (or read) here, and released once sealed
      out = m.range ? withRange(m.range, (bytes) => sealer.seal(m.name, bytes, m.opts)) : sealer.seal(m.name, input, m.opts);
      // Hashing here keeps it off the producer's thread.
      if (m.hash) hashes = { sealed: sha256(out) };
    } else {
      out = sealer.unseal(m.name, input);
    }
    // Hand the result's memory over instead of copying it, but only when the
    // Buffer owns its whole ArrayBuffer (small Buffers share Node's pool).
    if (ownsWhole(out)) {
      transfer = [out.buffer];
    }
    // The input was transferred to this thread and is done with. A sealed
    // block's memory goes back to the pool's thread to be used again (see
    // recycleBuffer); anything else is freed now rather than at this
    // thread's next collection (fewer fresh pages to fault in).
    let input_: Uint8Array | undefined;
    if (out.buffer !== input.buffer) {
      if (m.op === 'seal' && input.byteLength >= 1024 * 1024 && ownsWhole(input)) {
        // zeroed here, as the block it becomes again must be: not on the busy thread that takes it
        input_ = input.fill(0);
        transfer.push(input.buffer);
      } else freeBuffer(input);
    }
    reply = { id: m.id, ok: true, data: out, hashes, input: input_ };
  } catch (err) {
    if (err instanceof FerryError) {
      reply = { id: m.id, ok: false, ferry: { code: err.code, message: err.message, data: err.data, exitCode: err.exitCode } };
    } else {
      const e = err as Error;
      reply = { id: m.id, ok: false, internal: { message: e?.message ?? String(err), stack: e?.stack } };
    }
  }
  port.postMessage(reply, transfer);
});
