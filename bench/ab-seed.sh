#!/usr/bin/env bash
# Cold seeds of one source by two (or more) built ferry trees, interleaved,
# so that both meet the same moods of a noisy machine: an A/B of a change.
#
#   bash bench/ab-seed.sh RUNS SOURCE VAULT TREE...
#
# Each TREE is a ferry checkout with dist/ and native/ built (for example a
# `git worktree add /tmp/old HEAD~1`, then npm's build there). VAULT must
# exist (`ferry init`); FERRY_PASSPHRASE opens it. Each run drops the page
# cache (as root), seeds SOURCE onto a fresh folder under $FERRY_BENCH_DIR
# (default /var/tmp/ferry-ab) and prints wall, user and system seconds,
# peak RSS and minor page faults (GNU time).
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: bash bench/ab-seed.sh RUNS SOURCE VAULT TREE..." >&2; exit 2; }
RUNS=$1 SRC=$2 VAULT=$3
shift 3
WORK=${FERRY_BENCH_DIR:-/var/tmp/ferry-ab}
mkdir -p "$WORK"
for i in $(seq 1 "$RUNS"); do
  for tree in "$@"; do
    disk="$WORK/disk-$(basename "$tree")"
    rm -rf "$disk" && mkdir -p "$disk"
    sync
    [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "$(basename "$tree") %e s %U u %S s %M KB %R minflt" \
      "$tree/bin/ferry" seed --vault "$VAULT" --item "ab-$(basename "$tree")-$i" --kind files --disk "$disk" --quiet "$SRC" 2>&1 | tail -1
    sync
  done
  echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
done
rm -rf "$WORK"/disk-*
