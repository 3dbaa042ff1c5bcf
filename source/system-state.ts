// The system-state collector: what a Linux machine needs to be rebuilt
// (docs/system-state.md says what and why). Files that exist on the machine
// are walked in place; what only a command can tell (package selections,
// partition tables, LVM, enabled units...) is written into a staging
// directory that the walker records under the virtual folder
// /ferry-system-state. A missing tool or a failing command is noted in
// /ferry-system-state/MANIFEST.json and never stops the collection.
import { execFile } from 'node:child_process';
import { readdir, rm, stat, writeFile, readFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FerryError } from '../format/errors.js';
import { isNoRoom, tempDirIn } from '../format/fsio.js';
import type { EntryWarning } from '../format/volume/writer.js';
import type { MappedSource } from './files.js';

export const STATE_FOLDER = '/ferry-system-state';
/** The staging folders' names in TMPDIR: `ferry-system-state-<host>-<pid>-XXXXXX`. */
export const STAGING_PREFIX = 'ferry-system-state-';

export interface SystemStateOptions {
  /** Where the generated outputs are staged (os.tmpdir() by default). */
  tmpDir?: string;
  /** Root of the machine to collect (default "/"; a test points it at a fake tree). */
  root?: string;
  /** Seconds a command may run (default 60). */
  timeout?: number;
  onWarning?: (w: EntryWarning) => void;
}

export interface CollectedCommand {
  file: string;
  command: string[];
  status: 'ok' | 'missing' | 'failed' | 'empty';
  note?: string;
}

export interface SystemState {
  /** What to walk: paths on the machine and the staging folder mapped to /ferry-system-state. */
  sources: (string | MappedSource)[];
  /** Patterns to leave out (runtime files that must not come back). */
  excludes: string[];
  /** The staging directory (holds ferry-system-state/). */
  staging: string;
  commands: CollectedCommand[];
  /** Paths looked for and not found (noted, not an error). */
  absent: string[];
  /** Removes the staging directory. */
  cleanup(): Promise<void>;
}

/** Paths taken as they are, when they exist. Globs in a component are expanded by listing the parent. */
const PATHS = [
  '/etc',
  '/boot/grub/grub.cfg',
  '/boot/grub/grubenv',
  '/boot/grub2/grub.cfg',
  '/boot/grub2/grubenv',
  '/boot/efi/EFI/*/grub.cfg',
  '/boot/loader/loader.conf',
  '/boot/loader/entries',
  '/var/spool/cron',
  '/var/spool/anacron',
  '/usr/local/etc',
  '/root/.ssh/authorized_keys',
];

/** Runtime and cache files under the taken paths that must not come back on another machine. */
const EXCLUDES = ['/etc/mtab', '/etc/ld.so.cache', '/etc/.pwd.lock', '/etc/adjtime.lock'];

type Cmd = { file: string; argv: string[]; when?: () => Promise<boolean> };

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

async function expand(root: string, pattern: string): Promise<string[]> {
  const parts = pattern.split('/').filter(Boolean);
  let current = [root === '/' ? '' : root.replace(/\/$/, '')];
  for (const part of parts) {
    const next: string[] = [];
    for (const dir of current) {
      if (part.includes('*')) {
        const re = new RegExp('^' + part.split('*').map((x) => x.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$');
        try {
          for (const n of (await readdir(dir || '/')).sort()) if (re.test(n)) next.push(`${dir}/${n}`);
        } catch {
          /* absent */
        }
      } else next.push(`${dir}/${part}`);
    }
    current = next;
  }
  const out: string[] = [];
  for (const p of current) if (await exists(p)) out.push(p);
  return out;
}

function runCommand(argv: string[], timeoutSec: number): Promise<{ status: CollectedCommand['status']; out: Buffer; note?: string }> {
  return new Promise((resolve) => {
    execFile(argv[0], argv.slice(1), { encoding: 'buffer', timeout: timeoutSec * 1000, maxBuffer: 256 * 1024 * 1024, env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
      const out = stdout ?? Buffer.alloc(0);
      if (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return resolve({ status: 'missing', out, note: `${argv[0]} is not installed` });
        const msg = (stderr?.toString() || err.message).trim().split('\n')[0];
        return resolve({ status: 'failed', out, note: msg });
      }
      resolve({ status: out.length ? 'ok' : 'empty', out });
    });
  });
}

/** Block devices that are whole disks (for sfdisk -d), from sysfs. */
async function listDisks(): Promise<string[]> {
  try {
    const names = await readdir('/sys/block');
    const out: string[] = [];
    for (const n of names.sort()) {
      if (/^(loop|ram|zram|sr|fd|nbd)\d*/.test(n)) continue;
      try {
        const size = Number((await readFile(`/sys/block/${n}/size`, 'utf8')).trim());
        if (size > 0) out.push(n);
      } catch {
        /* gone */
      }
    }
    return out;
  } catch {
    return [];
  }
}

/**
 * Collects the system state. Returns the sources to walk (with the walker's
 * usual options) and a cleanup for the staging directory; the caller walks
 * them with `walk(state.sources, { excludes: state.excludes })`.
 */
export async function collectSystemState(opts: SystemStateOptions = {}): Promise<SystemState> {
  const root = opts.root ?? '/';
  const timeout = opts.timeout ?? 60;
  const parent = opts.tmpDir ?? tmpdir();
  // This process's own (removed when it exits, a Ctrl-C included; one a
  // kill -9 left is removed by a later run once stale): the outputs must not
  // pile up in /tmp with each interrupted seed.
  let staging: string;
  try {
    staging = tempDirIn(parent, STAGING_PREFIX, 60 * 1000);
  } catch (err) {
    throw err instanceof FerryError && err.code === 'TMP_FULL' ? stagingFull(parent) : err;
  }
  const out = join(staging, 'ferry-system-state');
  await mkdir(out);
  try {
    const sources: (string | MappedSource)[] = [];
    const absent: string[] = [];
    for (const p of PATHS) {
      const found = await expand(root, p);
      if (found.length) sources.push(...found);
      else absent.push(p);
    }

    const cmds: Cmd[] = [
      { file: 'os-release.txt', argv: ['cat', join(root, 'etc/os-release')] },
      { file: 'uname.txt', argv: ['uname', '-a'] },
      { file: 'hostname.txt', argv: ['hostname'] },
      { file: 'dpkg-selections.txt', argv: ['dpkg', '--get-selections'] },
      { file: 'apt-manual.txt', argv: ['apt-mark', 'showmanual'] },
      { file: 'rpm-packages.txt', argv: ['rpm', '-qa', '--qf', '%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\\n'] },
      { file: 'snap-list.txt', argv: ['snap', 'list'] },
      { file: 'lsblk.json', argv: ['lsblk', '-J', '-O'] },
      { file: 'blkid.txt', argv: ['blkid'] },
      { file: 'findmnt.json', argv: ['findmnt', '-J'] },
      { file: 'pvs.json', argv: ['pvs', '--reportformat', 'json', '-o', '+pv_uuid'] },
      { file: 'vgs.json', argv: ['vgs', '--reportformat', 'json', '-o', '+vg_uuid'] },
      { file: 'lvs.json', argv: ['lvs', '--reportformat', 'json', '-o', '+lv_uuid,devices'] },
      { file: 'mdstat.txt', argv: ['cat', '/proc/mdstat'] },
      { file: 'mdadm-scan.txt', argv: ['mdadm', '--detail', '--scan'] },
      { file: 'swaps.txt', argv: ['cat', '/proc/swaps'] },
      { file: 'cmdline.txt', argv: ['cat', '/proc/cmdline'] },
      { file: 'systemd-enabled.txt', argv: ['systemctl', 'list-unit-files', '--state=enabled', '--no-pager', '--no-legend'] },
      { file: 'systemd-default-target.txt', argv: ['systemctl', 'get-default'] },
      { file: 'efibootmgr.txt', argv: ['efibootmgr', '-v'] },
      { file: 'ip-addr.json', argv: ['ip', '-j', 'addr'] },
      { file: 'ip-route.json', argv: ['ip', '-j', 'route'] },
      { file: 'crontab-root.txt', argv: ['crontab', '-l', '-u', 'root'] },
    ];
    for (const d of await listDisks()) cmds.push({ file: `sfdisk-${d}.txt`, argv: ['sfdisk', '-d', `/dev/${d}`] });

    const commands: CollectedCommand[] = [];
    for (const c of cmds) {
      const r = await runCommand(c.argv, timeout);
      const rec: CollectedCommand = { file: c.file, command: c.argv, status: r.status };
      if (r.note) rec.note = r.note;
      if (r.out.length) await writeFile(join(out, c.file), r.out);
      commands.push(rec);
    }
    const manifest = {
      format: 'ferry-system-state',
      version: 1,
      collectedAt: new Date().toISOString(),
      root,
      paths: sources.filter((s): s is string => typeof s === 'string'),
      absent,
      excludes: EXCLUDES,
      commands,
    };
    await writeFile(join(out, 'MANIFEST.json'), JSON.stringify(manifest, null, 2) + '\n');
    sources.push({ path: out, as: STATE_FOLDER });
    return {
      sources,
      excludes: EXCLUDES,
      staging,
      commands,
      absent,
      cleanup: () => rm(staging, { recursive: true, force: true }),
    };
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    throw isNoRoom(err) ? stagingFull(dirname(staging)) : err;
  }
}

function stagingFull(dir: string): FerryError {
  return new FerryError(
    'SYSTEM_STATE_TMP_FULL',
    `no room left in ${dir} for the command outputs (package lists, disk layout) ferry collects there; free some space there or point TMPDIR at a folder with more room, then run the same command again`,
    { dir },
  );
}
