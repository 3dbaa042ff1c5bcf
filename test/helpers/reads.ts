// SmallFileReader's results in a form to compare: data and sums as hex,
// and the batch's buffer given back (release), which only the addon's have.
import type { SmallRead } from '../../source/reader.js';

export function comparable({ release, ...r }: SmallRead): Omit<SmallRead, 'release' | 'data' | 'hashes'> & { data?: string; hashes?: string } {
  const out = { ...r, data: r.data?.toString('hex'), hashes: r.hashes?.toString('hex') };
  release?.();
  return out;
}
