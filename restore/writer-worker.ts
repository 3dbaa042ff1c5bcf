// The restore's file writer thread: creates regular files from data the main
// thread read out of the volume, with synchronous calls (nothing else runs
// here, so blocking is what we want). It takes batches of jobs and answers
// each batch with one result per job. See FileWriter in writer.ts.
import { parentPort } from 'node:worker_threads';
import { freeBuffer } from '../format/buffers.js';
import { writeBatch, type WriteBatch, type WriteBatchResult } from './writer.js';

const port = parentPort!;
port.on('message', (m: WriteBatch) => {
  const reply: WriteBatchResult = { id: m.id, results: writeBatch(m.jobs) };
  // The data was transferred here and is written: free it now, not at this
  // thread's next collection (up to tens of MiB of dead buffers otherwise).
  for (const j of m.jobs) for (const p of j.pieces) freeBuffer(p.data);
  port.postMessage(reply);
});
