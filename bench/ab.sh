#!/usr/bin/env bash
# Cold runs of one command by two (or more) built ferry trees, interleaved,
# so that all meet the same moods of a noisy machine: an A/B of a change.
#
#   bash bench/ab.sh seed RUNS SOURCE VAULT TREE...    seeds SOURCE onto a fresh folder
#   bash bench/ab.sh restore RUNS VAULT ITEM TREE...   restores ITEM into a fresh folder
#
# Each TREE is a ferry checkout with dist/ and native/ built (for example a
# `git worktree add /tmp/old HEAD~1`, a link to this tree's node_modules,
# then `node scripts/build-native.mjs && npx tsc -p .` there). VAULT must
# exist (`ferry init`); FERRY_PASSPHRASE opens it. Each run drops the page
# cache (as root), works under $FERRY_BENCH_DIR (default /var/tmp/ferry-ab)
# and prints wall, user and system seconds, peak RSS and minor page faults
# (GNU time). A restore's time ends with the command, before any sync.
set -euo pipefail
usage() { echo "usage: bash bench/ab.sh seed RUNS SOURCE VAULT TREE... | restore RUNS VAULT ITEM TREE..." >&2; exit 2; }
[ $# -ge 5 ] || usage
MODE=$1 RUNS=$2 A=$3 B=$4
shift 4
case "$MODE" in seed | restore) ;; *) usage ;; esac
WORK=${FERRY_BENCH_DIR:-/var/tmp/ferry-ab}
mkdir -p "$WORK"
for i in $(seq 1 "$RUNS"); do
  for tree in "$@"; do
    name=$(basename "$tree")
    if [ "$MODE" = seed ]; then
      out="$WORK/disk-$name"; rm -rf "$out" && mkdir -p "$out"
      cmd=(seed --vault "$B" --item "ab-$name-$i" --kind files --disk "$out" --quiet "$A")
    else
      out="$WORK/restore-$name"; rm -rf "$out"
      cmd=(restore --vault "$A" --item "$B" --to "$out" --quiet)
    fi
    sync
    [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "$name %e s %U u %S s %M KB %R minflt" "$tree/bin/ferry" "${cmd[@]}" 2>&1 | tail -1
    [ "$MODE" = restore ] && rm -rf "$out"
    sync
  done
  echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
done
