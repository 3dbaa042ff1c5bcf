// One error base for all of ferry. A FerryError is a user-facing problem:
// bin/ prints its message on one line and exits with its exitCode. Anything
// else that reaches bin/ is a bug and is reported as such.

export const EXIT = {
  ok: 0,
  failed: 1,
  usage: 2,
  warnings: 3,
  noVault: 10,
  locked: 11,
  wrongPassphrase: 12,
} as const;

export type ErrorData = Record<string, unknown>;

export class FerryError extends Error {
  readonly code: string;
  readonly data: ErrorData;
  readonly exitCode: number;

  constructor(code: string, message: string, data: ErrorData = {}, exitCode: number = EXIT.failed) {
    super(message);
    this.name = 'FerryError';
    this.code = code;
    this.data = data;
    this.exitCode = exitCode;
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, ...this.data };
  }
}

export class UsageError extends FerryError {
  constructor(message: string, data: ErrorData = {}) {
    super('USAGE', message, data, EXIT.usage);
    this.name = 'UsageError';
  }
}

/** Argument checks for public entry points: the message names the argument. */
export function checkArg(ok: boolean, name: string, expectation: string, value: unknown): asserts ok {
  if (!ok) {
    throw new UsageError(`${name} must be ${expectation} (got ${describe(value)})`, { argument: name });
  }
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? v.slice(0, 57) + '...' : v);
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return String(v);
  if (v === null || v === undefined) return String(v);
  if (Buffer.isBuffer(v)) return `a Buffer of ${v.length} bytes`;
  return typeof v;
}

/** Parses sizes such as 512, 64K, 2M, 2G, 1T (binary multiples). */
export function parseSize(text: string, name = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$/i.exec(text);
  if (!m) throw new UsageError(`${name} must be a size such as 4096, 64K, 2G or 1T (got ${JSON.stringify(text)})`);
  const mult: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };
  const n = Number(m[1]) * mult[m[2].toLowerCase()];
  if (!Number.isSafeInteger(n)) throw new UsageError(`${name} is not a whole number of bytes: ${text}`);
  return n;
}

/** "1 file", "2 files": a count with its noun. */
export function counted(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

export function formatSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(n)} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}
