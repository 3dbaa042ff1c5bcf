// A small-file reader thread: see SmallFileReader in reader.ts.
import { parentPort } from 'node:worker_threads';
import { readBatch, type ReadBatch } from './reader.js';

const port = parentPort!;
port.on('message', (m: ReadBatch) => {
  const reply = readBatch(m);
  port.postMessage(reply, [reply.buffer]);
});
