#!/usr/bin/env node
// Summarises the V8 CPU profiles that `node --cpu-prof --cpu-prof-dir=DIR`
// leaves, one file per thread (CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile;
// thread 0 is the main thread, the others are ferry's seal workers and, in a
// restore, its file writer, in a seed, its small-file readers).
// For each thread: time profiled, busy (not idle), a split of the busy time
// (ferry's own code, Node internals in JS, native calls such as fs bindings,
// GC), the functions with the most self time, and the same time charged to
// the nearest ferry function on the stack (who asked for it).
// Then the workers added together.
//
//   node bench/peers-profile.mjs DIR [TOP]     (used by bench/peers.sh)
import { readFileSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';

const [dir, topArg] = process.argv.slice(2);
if (!dir) {
  console.error('usage: node bench/peers-profile.mjs DIR [TOP]');
  process.exit(2);
}
const TOP = Number(topArg ?? 10);

function shortUrl(url) {
  const u = url.replace(/^file:\/\//, '');
  const i = u.indexOf('/dist/');
  if (i >= 0) return u.slice(i + 1);
  const j = u.indexOf('/node_modules/');
  if (j >= 0) return u.slice(j + 1);
  return u.startsWith('node:') ? u : basename(u);
}
const label = (cf) => `${cf.functionName || '(anonymous)'}${cf.url ? ` ${shortUrl(cf.url)}:${cf.lineNumber + 1}` : ''}`;
const isFerry = (cf) => /\/dist\/(bin|format|vault|source|seed|restore|backup|mount)\//.test(cf.url);
function category(cf) {
  const n = cf.functionName;
  if (n === '(garbage collector)') return 'GC';
  if (n === '(program)') return 'V8/native, no JS frame (program)';
  if (n === '(idle)') return 'idle';
  if (isFerry(cf)) return 'ferry JS';
  if (cf.url.includes('/node_modules/')) return 'node_modules JS';
  if (cf.url.startsWith('node:')) return 'Node internals (JS)';
  if (!cf.url) return 'native calls (fs, crypto, zstd, ...)';
  return 'other JS';
}

function add(map, k, v) {
  map.set(k, (map.get(k) ?? 0) + v);
}

/** Self time (µs) per function, per category and per nearest ferry frame, for one .cpuprofile. */
function analyse(file) {
  const p = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const owner = new Map(); // node id -> label of the nearest ferry frame at or above it
  const ownerOf = (id) => {
    if (owner.has(id)) return owner.get(id);
    const n = byId.get(id);
    let o;
    if (isFerry(n.callFrame)) o = label(n.callFrame);
    else if (parent.has(id)) o = ownerOf(parent.get(id));
    else o = '(no ferry frame)';
    owner.set(id, o);
    return o;
  };
  const s = { self: new Map(), cats: new Map(), owners: new Map(), total: 0, idle: 0, wall: p.endTime - p.startTime };
  for (let i = 0; i < p.samples.length; i++) {
    // timeDeltas[i + 1] is the time until the next sample: it belongs to sample i.
    const dt = i + 1 < p.timeDeltas.length ? p.timeDeltas[i + 1] : 0;
    if (dt <= 0) continue;
    const n = byId.get(p.samples[i]);
    const cf = n.callFrame;
    s.total += dt;
    if (cf.functionName === '(idle)') {
      s.idle += dt;
      continue;
    }
    add(s.self, label(cf), dt);
    add(s.cats, category(cf), dt);
    if (cf.functionName !== '(garbage collector)' && cf.functionName !== '(program)') add(s.owners, ownerOf(n.id), dt);
  }
  return s;
}

const ms = (us) => `${(us / 1000).toFixed(0).padStart(6)} ms`;
const pct = (a, b) => `${(b > 0 ? (100 * a) / b : 0).toFixed(1).padStart(5)}%`;
const top = (m, n) => [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, n);

function report(title, s, n) {
  const busy = s.total - s.idle;
  console.log(`  ${title}: profiled ${(s.wall / 1e6).toFixed(1)} s, busy ${(busy / 1e6).toFixed(1)} s, idle ${(s.idle / 1e6).toFixed(1)} s`);
  console.log(`    busy time by kind: ${top(s.cats, 10).map(([k, v]) => `${k} ${pct(v, busy).trim()}`).join(', ')}`);
  console.log('    top self time:');
  for (const [k, v] of top(s.self, n)) console.log(`    ${ms(v)} ${pct(v, busy)}  ${k}`);
  console.log('    self time (GC and (program) left out) charged to the nearest ferry function on the stack:');
  for (const [k, v] of top(s.owners, Math.min(n, 8))) console.log(`    ${ms(v)} ${pct(v, busy)}  ${k}`);
}

const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).sort();
if (files.length === 0) {
  console.log(`  (no profiles in ${dir})`);
  process.exit(0);
}
const all = { self: new Map(), cats: new Map(), owners: new Map(), total: 0, idle: 0, wall: 0 };
let workers = 0;
for (const f of files) {
  const m = /\.(\d+)\.(\d+)\.(\d+)\.cpuprofile$/.exec(f);
  const thread = m ? Number(m[2]) : -1;
  const s = analyse(join(dir, f));
  if (thread === 0) {
    report('main thread', s, TOP);
    continue;
  }
  // the restore's file writer is a worker too: tell it by its functions
  if ([...s.owners.keys()].some((k) => k.includes('restore/writer'))) {
    report(`restore writer thread ${thread}`, s, Math.ceil(TOP / 2));
    continue;
  }
  // and so are the seed's small-file readers
  if ([...s.owners.keys()].some((k) => k.includes('source/reader'))) {
    report(`small-file reader thread ${thread}`, s, Math.ceil(TOP / 2));
    continue;
  }
  workers++;
  report(`seal worker thread ${thread}`, s, Math.ceil(TOP / 2));
  for (const k of ['self', 'cats', 'owners']) for (const [a, v] of s[k]) add(all[k], a, v);
  all.total += s.total;
  all.idle += s.idle;
  all.wall = Math.max(all.wall, s.wall);
}
if (workers > 1) report(`all ${workers} seal worker threads together (busy and idle summed over threads)`, all, TOP);
