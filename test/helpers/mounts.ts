// Real mounts and loop devices for tests that need them (CI runs as root):
// each is undone in `finally`, whatever the test does.
import { mkdir } from 'node:fs/promises';
import { must, run } from './exec.js';

/** `mount ...args mnt` (mnt made when missing) while `fn` runs. */
export async function withMount<T>(args: string[], mnt: string, fn: (mnt: string) => Promise<T>): Promise<T> {
  await mkdir(mnt, { recursive: true });
  await must('mount', [...args, mnt]);
  try {
    return await fn(mnt);
  } finally {
    await run('umount', ['-l', mnt]);
  }
}

/** A tmpfs of `size` (mount's size= syntax) mounted at `mnt` while `fn` runs. */
export function withTmpfs<T>(mnt: string, size: string, fn: (mnt: string) => Promise<T>): Promise<T> {
  return withMount(['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs'], mnt, fn);
}

/** A loop device over image `file` while `fn` runs. */
export async function withLoop<T>(file: string, fn: (dev: string) => Promise<T>): Promise<T> {
  const dev = (await must('losetup', ['-f', '--show', file])).toString().trim();
  try {
    return await fn(dev);
  } finally {
    await run('losetup', ['-d', dev]);
  }
}
