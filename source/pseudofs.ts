// Kernel filesystems whose entries are the running system's state, not
// files: /proc, /sys and their kind. A walk keeps such a mount point as a
// folder and leaves out what it holds (as backup tools do by default):
// their files stat as size 0 or 4096 whatever they read as, change between
// the listing and the read, and restoring them means nothing. devtmpfs
// (tmpfs by its magic) and hugetlbfs are real files and are walked.
import { statfs } from 'node:fs/promises';

/** statfs f_type -> name (linux/magic.h). */
const PSEUDO = new Map<number, string>([
  [0x9fa0, 'proc'],
  [0x62656572, 'sysfs'],
  [0x64626720, 'debugfs'],
  [0x74726163, 'tracefs'],
  [0x73636673, 'securityfs'],
  [0x27e0eb, 'cgroup'],
  [0x63677270, 'cgroup2'],
  [0x6165676c, 'pstore'],
  [0xcafe4a11, 'bpf'],
  [0x62656570, 'configfs'],
  [0x65735543, 'fusectl'],
  [0xde5e81e4, 'efivarfs'],
  [0x42494e4d, 'binfmt_misc'],
  [0xf97cff8c, 'selinuxfs'],
  [0x43415d53, 'smackfs'],
  [0x1cd1, 'devpts'],
  [0x19800202, 'mqueue'],
  [0x6e736673, 'nsfs'],
  [0x67596969, 'rpc_pipefs'],
]);

/**
 * A lookup of the pseudo filesystem a folder is on (its name), or null: one
 * statfs per device, whatever the number of folders asked about.
 */
export function pseudoFilesystems(): (path: Buffer | string, dev: bigint | number) => Promise<string | null> {
  const byDev = new Map<bigint | number, Promise<string | null>>();
  return (path, dev) => {
    let kind = byDev.get(dev);
    if (kind === undefined) {
      // a folder that cannot be asked is walked as any other (its errors are the walk's to report)
      kind = statfs(path).then((s) => PSEUDO.get(Number(s.type) >>> 0) ?? null, () => null);
      byDev.set(dev, kind);
    }
    return kind;
  };
}
