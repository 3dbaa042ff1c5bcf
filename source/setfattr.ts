// The text `setfattr --restore` reads (the format `getfattr --dump` writes).
// Its own module: the restore's writer thread uses it too.

/** Escapes bytes the way getfattr does, for a `setfattr --restore` file. */
export function escapeOctal(b: Buffer): Buffer {
  const out: number[] = [];
  for (const c of b) {
    if (c <= 0x20 || c === 0x3d || c === 0x5c || c >= 0x7f) {
      out.push(0x5c, ...Buffer.from(c.toString(8).padStart(3, '0'), 'latin1'));
    } else out.push(c);
  }
  return Buffer.from(out);
}

/** A `setfattr --restore` document that sets `xattrs` on each path. */
export function formatSetfattr(items: { path: Buffer; xattrs: readonly { name: string; value: Uint8Array }[] }[]): Buffer {
  const parts: Buffer[] = [];
  for (const it of items) {
    if (it.xattrs.length === 0) continue;
    parts.push(Buffer.from('# file: '), escapeOctal(it.path), Buffer.from('\n'));
    for (const x of it.xattrs) {
      // an empty value is the name alone: setfattr sets nothing for "name=0s"
      const value = x.value.byteLength ? '=0s' + Buffer.from(x.value.buffer, x.value.byteOffset, x.value.byteLength).toString('base64') : '';
      parts.push(escapeOctal(Buffer.from(x.name, 'latin1')), Buffer.from(value + '\n'));
    }
    parts.push(Buffer.from('\n'));
  }
  return Buffer.concat(parts);
}
