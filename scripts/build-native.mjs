#!/usr/bin/env node
// Builds ferry's own addon (native/ferry_native.c: sync_file_range) with the
// node-gyp that ships inside npm, against the headers npm is set to use. Run by
// `npm install` / `npm ci` (the package's install script) and by setup. ferry
// works without it (early write-back off), so a failed build only warns.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dir = join(root, 'native');
if (process.platform !== 'linux') process.exit(0);

function nodeGyp() {
  // npm sets this for the scripts it runs; otherwise the copy inside npm's own folder
  if (process.env.npm_config_node_gyp && existsSync(process.env.npm_config_node_gyp)) return process.env.npm_config_node_gyp;
  const r = spawnSync('npm', ['root', '-g'], { encoding: 'utf8' });
  if (r.status !== 0 || !r.stdout) return null; // (no npm on PATH)
  const p = join(r.stdout.trim(), 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  return existsSync(p) ? p : null;
}

/** Node's own headers: npm's setting (set for the scripts npm runs), else beside this node (/usr/include/node). */
function nodeDir() {
  if (process.env.npm_config_nodedir) return process.env.npm_config_nodedir;
  const r = spawnSync('npm', ['config', 'get', 'nodedir'], { encoding: 'utf8' });
  const set = r.status === 0 && r.stdout ? r.stdout.trim() : '';
  if (set && set !== 'undefined' && set !== 'null') return set;
  const prefix = join(dirname(process.execPath), '..');
  return existsSync(join(prefix, 'include', 'node', 'node_api.h')) ? prefix : null;
}

const gyp = nodeGyp();
const nodedir = nodeDir();
const args = [gyp, 'rebuild', ...(nodedir ? [`--nodedir=${nodedir}`] : [])]; // (without headers node-gyp would download them)
const r = gyp ? spawnSync(process.execPath, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' }) : { status: 1, stderr: '' };
if (r.status !== 0 || !existsSync(join(dir, 'build', 'Release', 'ferry_native.node'))) {
  process.stderr.write((r.stderr ?? '').split('\n').filter((l) => /ERR!|error/i.test(l)).slice(0, 20).join('\n') + '\n');
  console.error(`ferry: native/ (early write-back) did not build${gyp ? '' : ': no node-gyp found'}; ferry works without it, only slower to write`);
}
