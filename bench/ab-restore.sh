#!/usr/bin/env bash
# Cold restores of one item by two (or more) built ferry trees, interleaved,
# so that both meet the same moods of a noisy machine: an A/B of a change.
#
#   bash bench/ab-restore.sh RUNS VAULT ITEM TREE...
#
# Each TREE is a ferry checkout with dist/ and native/ built (see
# ab-seed.sh). FERRY_PASSPHRASE opens VAULT. Each run drops the page cache
# (as root), restores ITEM into a fresh folder under $FERRY_BENCH_DIR
# (default /var/tmp/ferry-ab) and prints wall, user and system seconds, peak
# RSS and minor page faults (GNU time).
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: bash bench/ab-restore.sh RUNS VAULT ITEM TREE..." >&2; exit 2; }
RUNS=$1 VAULT=$2 ITEM=$3
shift 3
WORK=${FERRY_BENCH_DIR:-/var/tmp/ferry-ab}
mkdir -p "$WORK"
for i in $(seq 1 "$RUNS"); do
  for tree in "$@"; do
    out="$WORK/restore-$(basename "$tree")"
    rm -rf "$out"
    sync
    [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "$(basename "$tree") %e s %U u %S s %M KB %R minflt" \
      "$tree/bin/ferry" restore --vault "$VAULT" --item "$ITEM" --to "$out" --quiet 2>&1 | tail -1
    rm -rf "$out"
    sync
  done
  echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
done
