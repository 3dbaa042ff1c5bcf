// Writes the raw image bench/vhd.sh works on: `size` bytes cut into 2 MiB
// regions that alternate data and zeros, so half the image holds data. Data
// regions alternate again between incompressible bytes (AES-CTR keystream,
// the same on every run) and compressible text. Zero regions are written out
// as zeros (not holes), so every tool has to read them.
//
//   node dist/bench/mkimage.js OUT.raw [SIZE]     (SIZE like 2G; default 2G)
import { createCipheriv } from 'node:crypto';
import { open } from 'node:fs/promises';
import { parseSize } from '../format/errors.js';

const REGION = 2 * 1024 * 1024;

function compressible(index: number): Buffer {
  const lines: string[] = [];
  let n = 0;
  while (n < REGION) {
    const line = `region ${index} line ${lines.length}: the quick brown fox jumps over the lazy dog ${(index * 7919 + lines.length) % 1000}\n`;
    lines.push(line);
    n += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, REGION);
}

async function main(): Promise<void> {
  const [out, sizeText = '2G'] = process.argv.slice(2);
  if (!out) {
    process.stderr.write('usage: node dist/bench/mkimage.js OUT.raw [SIZE]\n');
    process.exit(2);
  }
  const size = parseSize(sizeText);
  const keystream = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 0));
  const zeros = Buffer.alloc(REGION);
  const fh = await open(out, 'w');
  let data = 0;
  try {
    for (let i = 0, pos = 0; pos < size; i++, pos += REGION) {
      const len = Math.min(REGION, size - pos);
      let buf: Buffer;
      if (i % 2 === 1) buf = zeros;
      else if (i % 4 === 0) buf = keystream.update(zeros);
      else buf = compressible(i);
      if (i % 2 === 0) data += len;
      await fh.write(buf, 0, len, pos);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  process.stdout.write(`${out}: ${size} bytes, ${data} of them data\n`);
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
