#!/usr/bin/env node
// Makes a fresh machine ready for `npm test` and `npm run demo`: npm packages,
// then the Debian packages the interop tests and benches need. Only node
// built-ins here: this runs before node_modules exists.
import { execSync, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd) => execSync(cmd, { stdio: 'inherit', cwd: root });
const has = (bin) => spawnSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' }).status === 0;
/** Whether Debian's /usr/bin/python3 imports `module` (pyenv's python3 on PATH is another one). */
const imports = (module) => spawnSync('/usr/bin/python3', ['-c', `import ${module}`], { stdio: 'ignore' }).status === 0;
const present = (probe) =>
  probe.startsWith('python3:') ? imports(probe.slice('python3:'.length)) : probe.startsWith('/') ? existsSync(probe) : has(probe);

// Debian package -> a command, a file, or `python3:MODULE` (imported by /usr/bin/python3) that proves it is there.
const debs = [
  ['qemu-utils', 'qemu-img'],
  ['libvhdi-utils', 'vhdimount'],
  ['libfuse2', '/usr/lib/x86_64-linux-gnu/libfuse.so.2'],
  ['fuse', 'fusermount'],
  ['e2fsprogs', 'mkfs.ext4'],
  ['attr', 'getfattr'],
  ['acl', 'setfacl'], // the test trees carry POSIX ACLs
  ['restic', 'restic'],
  ['borgbackup', 'borg'],
  ['time', '/usr/bin/time'],
  ['bc', 'bc'],
  ['libzstd1', '/usr/lib/x86_64-linux-gnu/libzstd.so.1'], // the addon seals with it (dlopen; dpkg needs it too)
  ['bsdutils', 'script'], // a terminal for the passphrase prompt test
  ['exfatprogs', 'mkfs.exfat'], // a seed disk as USB drives come: exFAT, no hard links
  ['exfat-fuse', 'mount.exfat-fuse'],
  // tools/ferry_read.py, the independent reader test/independent-reader.test.ts runs
  ['python3-cryptography', 'python3:cryptography.hazmat.primitives.ciphers.aead'],
  ['python3-zstandard', 'python3:zstandard'],
];
const missing = debs.filter(([, probe]) => !present(probe)).map(([p]) => p);
if (missing.length > 0) {
  const sudo = process.getuid && process.getuid() === 0 ? '' : 'sudo ';
  console.error(`setup: installing Debian packages: ${missing.join(' ')}`);
  run(`${sudo}apt-get update -qq`);
  run(`${sudo}env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing.join(' ')}`);
}

const needNpm =
  ['better-sqlite3', 'zstd-napi', 'commander', 'ava', 'typescript'].some((m) => !existsSync(join(root, 'node_modules', m, 'package.json')));
if (needNpm) {
  console.error('setup: installing npm packages');
  run(existsSync(join(root, 'package-lock.json')) ? 'npm ci --no-fund --no-audit' : 'npm install --no-fund --no-audit');
}
// ferry's own addon; npm's install script builds it, this covers a node_modules made before it and an
// addon built from older sources (a git pull): built again when its source is newer than it
const addon = join(root, 'native', 'build', 'Release', 'ferry_native.node');
const addonStale = () => ['ferry_native.c', 'binding.gyp'].some((f) => statSync(join(root, 'native', f)).mtimeMs > statSync(addon).mtimeMs);
if (!existsSync(addon) || addonStale()) run('node scripts/build-native.mjs');
