// A backend wrapper that injects faults, as kopia's faulty storage does:
// writes that fail before anything is stored, writes that fail after the
// data is stored (the caller cannot tell which happened), torn writes (part
// of the data reaches storage, then an error), and slow operations. The
// conformance suite runs backends through it to show a failure never leaves a
// half-written object visible.
import { FerryError } from '../format/errors.js';
import type { Backend, IoFaults, ObjectStat } from '../vault/backend.js';

export type FaultOp = 'put' | 'putNew' | 'get' | 'delete' | 'list' | 'stat' | 'exists';
export type FaultKind = 'fail-before' | 'fail-after' | 'torn' | 'slow';

export interface FaultRule {
  op: FaultOp | '*';
  kind: FaultKind;
  /** Only names matching (default: all). */
  match?: string | RegExp | ((name: string) => boolean);
  /** How many times it fires (default: every time). */
  times?: number;
  /** Chance it fires when it matches (default 1). */
  probability?: number;
  /** For 'slow'. */
  delayMs?: number;
}

export interface InjectedFault {
  op: FaultOp;
  name: string;
  kind: FaultKind;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function injectedError(op: string, name: string, kind: FaultKind): FerryError {
  return new FerryError('BACKEND_IO', `injected fault (${kind}) during ${op} of ${name}`, { object: name, injected: true });
}

export class FaultyBackend implements Backend {
  readonly #rules: Array<FaultRule & { left: number }> = [];
  /** Every fault that fired, in order. */
  readonly injected: InjectedFault[] = [];
  readonly #random: () => number;

  constructor(
    readonly inner: Backend,
    opts: { random?: () => number } = {},
  ) {
    this.#random = opts.random ?? Math.random;
  }

  get location(): string {
    return this.inner.location;
  }

  describe(): string {
    return `${this.inner.describe()} (with injected faults)`;
  }

  addFault(rule: FaultRule): this {
    this.#rules.push({ ...rule, left: rule.times ?? Infinity });
    return this;
  }

  clearFaults(): void {
    this.#rules.length = 0;
  }

  /** The kinds of fault that fire for this call (each rule at most once). */
  #fire(op: FaultOp, name: string): Set<FaultKind> & { delay?: number } {
    const out: Set<FaultKind> & { delay?: number } = new Set();
    for (const r of this.#rules) {
      if (r.left <= 0 || (r.op !== '*' && r.op !== op)) continue;
      if (r.match !== undefined) {
        const ok = typeof r.match === 'string' ? name === r.match : r.match instanceof RegExp ? r.match.test(name) : r.match(name);
        if (!ok) continue;
      }
      if (r.probability !== undefined && this.#random() >= r.probability) continue;
      r.left--;
      out.add(r.kind);
      if (r.kind === 'slow') out.delay = Math.max(out.delay ?? 0, r.delayMs ?? 20);
      this.injected.push({ op, name, kind: r.kind });
    }
    return out;
  }

  async #write(op: 'put' | 'putNew', name: string, data: Buffer): Promise<void> {
    const f = this.#fire(op, name);
    if (f.delay) await sleep(f.delay);
    if (f.has('fail-before')) throw injectedError(op, name, 'fail-before');
    if (f.has('torn')) {
      if (!this.inner.injectFaults) {
        // The wrapped backend has no seam inside its writes; the closest we can do is fail before.
        throw injectedError(op, name, 'torn');
      }
      const hooks: IoFaults = {
        midWrite: (n) => {
          if (n === name) throw injectedError(op, name, 'torn');
        },
      };
      this.inner.injectFaults(hooks);
      try {
        await (op === 'put' ? this.inner.put(name, data) : this.inner.putNew(name, data));
      } finally {
        this.inner.injectFaults(null);
      }
      // An empty object has no middle to tear at: report failure all the same.
      throw injectedError(op, name, 'torn');
    }
    await (op === 'put' ? this.inner.put(name, data) : this.inner.putNew(name, data));
    if (f.has('fail-after')) throw injectedError(op, name, 'fail-after');
  }

  put(name: string, data: Buffer): Promise<void> {
    return this.#write('put', name, data);
  }

  putNew(name: string, data: Buffer): Promise<void> {
    return this.#write('putNew', name, data);
  }

  async #call<T>(op: FaultOp, name: string, fn: () => Promise<T>): Promise<T> {
    const f = this.#fire(op, name);
    if (f.delay) await sleep(f.delay);
    if (f.has('fail-before') || f.has('torn')) throw injectedError(op, name, 'fail-before');
    const r = await fn();
    if (f.has('fail-after')) throw injectedError(op, name, 'fail-after');
    return r;
  }

  get(name: string): Promise<Buffer> {
    return this.#call('get', name, () => this.inner.get(name));
  }

  delete(name: string): Promise<void> {
    return this.#call('delete', name, () => this.inner.delete(name));
  }

  exists(name: string): Promise<boolean> {
    return this.#call('exists', name, () => this.inner.exists(name));
  }

  stat(name: string): Promise<ObjectStat> {
    return this.#call('stat', name, () => this.inner.stat(name));
  }

  async *list(prefix: string): AsyncIterable<string> {
    const f = this.#fire('list', prefix);
    if (f.has('fail-before') || f.has('torn')) throw injectedError('list', prefix, 'fail-before');
    for await (const n of this.inner.list(prefix)) {
      if (f.delay) await sleep(f.delay);
      yield n;
    }
  }
}
