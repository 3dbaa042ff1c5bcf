// Names as messages show them: a file name may hold any byte but "/" and
// NUL, and a name with a newline or a terminal escape in it, printed as it
// is, could forge lines of ferry's output ("ferry: done") or drive the
// terminal. Printable UTF-8 is shown as it is; control characters, bytes
// that are not UTF-8 and the backslash are escaped as `ls -b` does.

const ESCAPES: Record<number, string> = { 0x07: '\\a', 0x08: '\\b', 0x09: '\\t', 0x0a: '\\n', 0x0b: '\\v', 0x0c: '\\f', 0x0d: '\\r', 0x1b: '\\e', 0x5c: '\\\\' };
const utf8 = new TextDecoder('utf-8', { fatal: true });

function hex(b: number): string {
  return `\\x${b.toString(16).padStart(2, '0')}`;
}

/** `p` (a path or name, as bytes) for a message: printable UTF-8 as it is, anything else escaped. */
export function printable(p: Uint8Array): string {
  let plain = true;
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c < 0x20 || c >= 0x7f || c === 0x5c) {
      plain = false;
      break;
    }
  }
  if (plain) return Buffer.from(p.buffer, p.byteOffset, p.length).toString('latin1');
  let out = '';
  for (let i = 0; i < p.length; ) {
    const c = p[i];
    if (c < 0x80) {
      out += ESCAPES[c] ?? (c < 0x20 || c === 0x7f ? hex(c) : String.fromCharCode(c));
      i++;
      continue;
    }
    const n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    let ch: string | null = null;
    if (n && i + n <= p.length) {
      try {
        ch = utf8.decode(p.subarray(i, i + n)); // (refuses overlong forms, surrogates and stray continuation bytes)
      } catch {
        ch = null;
      }
    }
    const cp = ch?.codePointAt(0);
    if (ch === null || cp === undefined || (cp >= 0x80 && cp <= 0x9f)) {
      out += hex(c); // not UTF-8 here (or a C1 control): this byte alone, then on
      i++;
      continue;
    }
    out += ch;
    i += n;
  }
  return out;
}
