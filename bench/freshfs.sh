#!/bin/bash
# bench/freshfs.sh [MOUNTPOINT] [IMAGE]: (re)makes an empty ext4 filesystem
# on a sparse 16 GiB file, loop-mounted at MOUNTPOINT (default /mnt/fb).
# For A/B pairs of restores and seeds without the noise of an aged
# filesystem: ext4's inode allocator slows down after mass deletes (see
# docs/PERFORMANCE.md). Needs root. Unmount with `umount MOUNTPOINT`.
set -euo pipefail
MP=${1:-/mnt/fb}
IMG=${2:-/var/tmp/ferry-freshfs.img}
if mountpoint -q "$MP"; then umount "$MP"; fi
mkdir -p "$MP"
rm -f "$IMG"
truncate -s 16G "$IMG"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$IMG"
mount -o loop "$IMG" "$MP"
