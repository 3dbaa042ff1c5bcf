// The suite every vault backend passes (as restic's backend/test and kopia's
// blobtesting.VerifyStorage): call backendConformance() with a factory from a
// backend's own test file. backendFaultConformance() runs the same backend
// through FaultyBackend and checks that no failure leaves a half-written
// object visible.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { FerryError } from '../format/errors.js';
import { Backend, listAll } from '../vault/backend.js';
import { FaultyBackend } from './faulty-backend.js';

export interface BackendFixture {
  backend: Backend;
  cleanup?: () => Promise<void>;
}

export type BackendFactory = () => Promise<BackendFixture>;

type T = import('ava').ExecutionContext;

async function withBackend(factory: BackendFactory, fn: (b: Backend) => Promise<void>): Promise<void> {
  const fx = await factory();
  try {
    await fn(fx.backend);
  } finally {
    await fx.cleanup?.();
  }
}

function same(t: T, a: Buffer, b: Buffer, what = 'content'): void {
  t.true(a.equals(b), `${what}: ${a.length} bytes vs ${b.length} expected`);
}

async function expectCode(t: T, p: Promise<unknown>, code: string, name?: string): Promise<FerryError> {
  const err = (await t.throwsAsync(p)) as FerryError;
  t.true(err instanceof FerryError, `expected FerryError ${code}, got ${err}`);
  t.is(err?.code, code);
  if (name !== undefined) t.true(err.message.includes(name), `message names ${name}: ${err.message}`);
  return err;
}

const BAD_NAMES = ['', '/abs', '../x', 'a/../b', 'a/./b', 'a//b', 'a/', '.hidden', 'a/.tmp', 'a\\b', 'a\u0000b', 'a\nb'];

export function backendConformance(title: string, factory: BackendFactory): void {
  const it = (name: string, fn: (t: T, b: Backend) => Promise<void>) =>
    test(`${title}: ${name}`, (t) => withBackend(factory, (b) => fn(t, b)));

  it('describes itself', async (t, b) => {
    t.true(typeof b.describe() === 'string' && b.describe().length > 0);
    t.true(typeof b.location === 'string' && b.location.length > 0);
  });

  it('put then get returns the same bytes, whatever the size', async (t, b) => {
    const cases: Array<[string, Buffer]> = [
      ['empty', Buffer.alloc(0)],
      ['one', Buffer.from([0])],
      ['all-bytes', Buffer.from(Array.from({ length: 256 }, (_, i) => i))],
      ['disks/0f/blocks/3', randomBytes(3 * 2 ** 20 + 7)],
      ['items/my host/über item/points/1', Buffer.from('unicode and spaces in names')],
    ];
    for (const [name, data] of cases) await b.put(name, data);
    for (const [name, data] of cases) {
      same(t, await b.get(name), data, name);
      t.is((await b.stat(name)).size, data.length);
      t.true(await b.exists(name));
    }
  });

  it('put replaces', async (t, b) => {
    await b.put('a/b', Buffer.from('first, longer content'));
    await b.put('a/b', Buffer.from('second'));
    same(t, await b.get('a/b'), Buffer.from('second'));
    t.deepEqual(await listAll(b), ['a/b']);
  });

  it('missing objects: OBJECT_MISSING naming them; exists is false; delete is quiet', async (t, b) => {
    await expectCode(t, b.get('disks/nope/head'), 'OBJECT_MISSING', 'disks/nope/head');
    await expectCode(t, b.stat('disks/nope/head'), 'OBJECT_MISSING', 'disks/nope/head');
    t.false(await b.exists('disks/nope/head'));
    await b.delete('disks/nope/head');
    // A name whose parent is an object, and a name that is a "directory" of others.
    await b.put('x/y', Buffer.from('1'));
    await expectCode(t, b.get('x/y/z'), 'OBJECT_MISSING', 'x/y/z');
    await expectCode(t, b.get('x'), 'OBJECT_MISSING', 'x');
    t.false(await b.exists('x'));
  });

  it('putNew creates once, then OBJECT_EXISTS and the content stays', async (t, b) => {
    await b.putNew('locks/writer', Buffer.from('mine'));
    await expectCode(t, b.putNew('locks/writer', Buffer.from('yours')), 'OBJECT_EXISTS', 'locks/writer');
    same(t, await b.get('locks/writer'), Buffer.from('mine'));
    await b.delete('locks/writer');
    await b.putNew('locks/writer', Buffer.from('again'));
    same(t, await b.get('locks/writer'), Buffer.from('again'));
    t.deepEqual(await listAll(b), ['locks/writer']);
  });

  it('list by prefix', async (t, b) => {
    const names = ['vault.json', 'disks/abc/head', 'disks/abc/blocks/0', 'disks/abc/blocks/10', 'disks/abd/head', 'items/m/i/item', 'items/m/i/points/1'];
    for (const n of names) await b.put(n, Buffer.from(n));
    t.deepEqual(await listAll(b, ''), [...names].sort());
    t.deepEqual(await listAll(b, 'disks/'), ['disks/abc/blocks/0', 'disks/abc/blocks/10', 'disks/abc/head', 'disks/abd/head']);
    t.deepEqual(await listAll(b, 'disks/abc/blocks/'), ['disks/abc/blocks/0', 'disks/abc/blocks/10']);
    t.deepEqual(await listAll(b, 'disks/abc/blocks/1'), ['disks/abc/blocks/10']);
    t.deepEqual(await listAll(b, 'disks/ab'), ['disks/abc/blocks/0', 'disks/abc/blocks/10', 'disks/abc/head', 'disks/abd/head']);
    t.deepEqual(await listAll(b, 'disks'), ['disks/abc/blocks/0', 'disks/abc/blocks/10', 'disks/abc/head', 'disks/abd/head']);
    t.deepEqual(await listAll(b, 'nothing/'), []);
    t.deepEqual(await listAll(b, 'vault.json'), ['vault.json']);
    await b.delete('disks/abc/head');
    t.deepEqual(await listAll(b, 'disks/abc/'), ['disks/abc/blocks/0', 'disks/abc/blocks/10']);
  });

  it('many objects list completely', async (t, b) => {
    const names = Array.from({ length: 300 }, (_, i) => `disks/d/blocks/${i}`);
    await Promise.all(names.map((n) => b.put(n, Buffer.from(n))));
    t.deepEqual(await listAll(b, 'disks/d/blocks/'), [...names].sort());
  });

  it('invalid names are refused by every operation, naming the argument', async (t, b) => {
    for (const n of BAD_NAMES) {
      for (const op of [() => b.put(n, Buffer.from('x')), () => b.putNew(n, Buffer.from('x')), () => b.get(n), () => b.stat(n), () => b.exists(n), () => b.delete(n)]) {
        const err = (await t.throwsAsync(async () => op())) as FerryError;
        t.is(err?.code, 'USAGE', `name ${JSON.stringify(n)}`);
      }
    }
    await t.throwsAsync(async () => {
      for await (const _ of b.list('../')) void _;
    });
    t.deepEqual(await listAll(b), []);
  });

  it('concurrent puts of one name leave one whole version; concurrent putNew has one winner', async (t, b) => {
    const versions = Array.from({ length: 8 }, (_, i) => Buffer.alloc(200_000 + i * 1000, i + 1));
    await Promise.all(versions.map((v) => b.put('race', v)));
    const got = await b.get('race');
    t.true(versions.some((v) => v.equals(got)), 'one whole version');
    const results = await Promise.allSettled(versions.map((v) => b.putNew('race-new', v)));
    t.is(results.filter((r) => r.status === 'fulfilled').length, 1);
    for (const r of results) if (r.status === 'rejected') t.is((r.reason as FerryError).code, 'OBJECT_EXISTS');
    const winner = await b.get('race-new');
    t.true(versions.some((v) => v.equals(winner)));
    t.deepEqual(await listAll(b), ['race', 'race-new']);
  });
}

/** The backend behind FaultyBackend: failed, ambiguous and torn writes never show half an object. */
export function backendFaultConformance(title: string, factory: BackendFactory): void {
  const it = (name: string, fn: (t: T, f: FaultyBackend) => Promise<void>) =>
    test(`${title} with faults: ${name}`, (t) => withBackend(factory, (b) => fn(t, new FaultyBackend(b))));

  const old = Buffer.alloc(300_000, 'o');
  const neu = randomBytes(400_000);

  it('a put that fails before writing leaves the old object (or none)', async (t, f) => {
    await f.put('obj', old);
    f.addFault({ op: 'put', kind: 'fail-before', times: 2 });
    await expectCode(t, f.put('obj', neu), 'BACKEND_IO', 'obj');
    await expectCode(t, f.put('fresh', neu), 'BACKEND_IO', 'fresh');
    same(t, await f.get('obj'), old);
    t.false(await f.exists('fresh'));
    t.deepEqual(await listAll(f), ['obj']);
  });

  it('a torn put (half written, then an error) leaves the old object whole', async (t, f) => {
    await f.put('disks/d/blocks/1', old);
    f.addFault({ op: 'put', kind: 'torn', times: 2 });
    await t.throwsAsync(f.put('disks/d/blocks/1', neu));
    await t.throwsAsync(f.put('disks/d/blocks/2', neu));
    t.is(f.injected.length, 2);
    same(t, await f.get('disks/d/blocks/1'), old);
    t.is((await f.stat('disks/d/blocks/1')).size, old.length);
    t.false(await f.exists('disks/d/blocks/2'));
    await expectCode(t, f.get('disks/d/blocks/2'), 'OBJECT_MISSING', 'disks/d/blocks/2');
    t.deepEqual(await listAll(f), ['disks/d/blocks/1']);
    // And the next try goes through.
    await f.put('disks/d/blocks/1', neu);
    same(t, await f.get('disks/d/blocks/1'), neu);
  });

  it('a torn putNew leaves nothing, and does not block a retry', async (t, f) => {
    f.addFault({ op: 'putNew', kind: 'torn', times: 1 });
    await t.throwsAsync(f.putNew('locks/writer', neu));
    t.false(await f.exists('locks/writer'));
    t.deepEqual(await listAll(f), []);
    await f.putNew('locks/writer', neu);
    same(t, await f.get('locks/writer'), neu);
  });

  it('a put that fails after writing shows the whole new object', async (t, f) => {
    await f.put('obj', old);
    f.addFault({ op: 'put', kind: 'fail-after', times: 1 });
    await t.throwsAsync(f.put('obj', neu));
    same(t, await f.get('obj'), neu);
  });

  it('slow reads still read right, in parallel', async (t, f) => {
    const objs = Array.from({ length: 10 }, (_, i) => [`s/${i}`, randomBytes(10_000 + i)] as const);
    for (const [n, d] of objs) await f.put(n, d);
    f.addFault({ op: 'get', kind: 'slow', delayMs: 30 });
    f.addFault({ op: 'list', kind: 'slow', delayMs: 2 });
    const t0 = Date.now();
    const got = await Promise.all(objs.map(([n]) => f.get(n)));
    t.true(Date.now() - t0 >= 25);
    for (const [i, [, d]] of objs.entries()) same(t, got[i], d);
    t.is((await listAll(f, 's/')).length, 10);
  });

  test(`${title} with faults: random operations and faults never expose a partial object`, async (t) => {
    const contents = [Buffer.alloc(0), Buffer.alloc(70_000, 1), randomBytes(150_000), Buffer.from('small')];
    const names = ['p/a', 'p/b', 'p/c/d'];
    const op = fc.record({
      kind: fc.constantFrom('put', 'putNew', 'delete'),
      name: fc.constantFrom(...names),
      content: fc.nat(contents.length - 1),
      fault: fc.constantFrom('none', 'none', 'fail-before', 'fail-after', 'torn'),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 12 }), async (ops) => {
        const fx = await factory();
        const f = new FaultyBackend(fx.backend);
        // What each name may hold: undefined = absent.
        const model = new Map<string, Buffer | undefined>();
        try {
          for (const o of ops) {
            f.clearFaults();
            if (o.fault !== 'none') f.addFault({ op: o.kind as 'put', kind: o.fault as 'torn', times: 1 });
            const before = model.get(o.name);
            const data = contents[o.content];
            let ok = true;
            try {
              if (o.kind === 'put') await f.put(o.name, data);
              else if (o.kind === 'putNew') await f.putNew(o.name, data);
              else await f.delete(o.name);
            } catch {
              ok = false;
            }
            f.clearFaults();
            const after = o.kind === 'delete' ? undefined : o.kind === 'putNew' && before !== undefined ? before : data;
            const allowed = ok ? [after] : [before, after];
            const actual = (await f.exists(o.name)) ? await f.get(o.name) : undefined;
            const match = allowed.some((a) => (a === undefined ? actual === undefined : actual !== undefined && a.equals(actual)));
            if (!match) return false;
            model.set(o.name, actual);
            const listed = await listAll(f, 'p/');
            const expected = names.filter((n) => model.get(n) !== undefined).sort();
            if (JSON.stringify(listed) !== JSON.stringify(expected)) return false;
          }
          return true;
        } finally {
          await fx.cleanup?.();
        }
      }),
      { numRuns: 60 },
    );
    t.pass();
  });
}
