// A fresh zero-filled VHD block buffer per block against one used again:
// 512 blocks of 2 MiB + 512 bytes, each given two 1 MiB copies of data.
//   node bench/alloc-reuse.mjs
const N = 512;
const SIZE = 2 * 1024 * 1024 + 512;
const src = Buffer.alloc(1024 * 1024, 7);
const ms = (t) => (Number(process.hrtime.bigint() - t) / 1e6).toFixed(1);

let t = process.hrtime.bigint();
const keep = [];
for (let i = 0; i < N; i++) {
  const b = Buffer.alloc(SIZE);
  src.copy(b, 512);
  src.copy(b, 512 + src.length);
  keep.push(b);
  if (keep.length > 8) keep.shift(); // a few in flight, as in a seed
}
console.log(`fresh:  ${ms(t)} ms`);

const spare = [Buffer.alloc(SIZE), Buffer.alloc(SIZE)];
t = process.hrtime.bigint();
for (let i = 0; i < N; i++) {
  const b = spare[i & 1].fill(0);
  src.copy(b, 512);
  src.copy(b, 512 + src.length);
}
console.log(`reused: ${ms(t)} ms`);
