#!/usr/bin/env bash
# Storing a 2 GiB VHD (half data: random, text and zero regions) into a
# directory vault against copying the same file with cp, in one run:
#   ferry vhd import --vault V X.vhd      (seal: zstd + AES-256-GCM, one object per block, fsynced)
#   cp X.vhd DIR/                          (plain copy; GNU cp uses copy_file_range:
#                                           the kernel copies, no byte passes through cp)
#   dd if=X.vhd of=DIR/X.vhd bs=2M         (a copy through user space, for reference)
#   ferry key list --vault V               (opening the vault alone: node start + scrypt)
#   ferry vhd export --vault V --disk ID --to back.vhd   (and back, checked byte for byte)
# Each is timed up to the end of a `sync`, cold cache when permitted,
# median of $RUNS (default 3).
#
#   npx tsc -p . && bash bench/store.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}
RUNS=${RUNS:-3}
FERRY=("$ROOT/bin/ferry") # (as a program: its #! line sets node's flags)
export FERRY_PASSPHRASE=${FERRY_PASSPHRASE:-"bench passphrase, not a secret"}
mkdir -p "$WORK"
IMG="$WORK/img-2G.raw"
VHD="$WORK/store-2G.vhd"
[ -f "$IMG" ] || { node "$ROOT/dist/bench/mkimage.js" "$IMG.part" 2G; mv "$IMG.part" "$IMG"; }
[ -f "$VHD" ] || "${FERRY[@]}" vhd create "$VHD" --from "$IMG" --quiet
if (sync && echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then CACHE=cold; drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }; else CACHE="warm"; drop() { sync; }; fi

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
time_it() { local t0 t1; drop; t0=$(now); "$@" >/dev/null; sync; t1=$(now); echo "$t1 - $t0" | bc -l; }

cp_times=(); dd_times=(); open_times=(); store_times=(); export_times=()
for i in $(seq "$RUNS"); do
  rm -rf "$WORK/copy" "$WORK/vault"; mkdir -p "$WORK/copy"
  cp_times+=("$(time_it cp "$VHD" "$WORK/copy/")")
  rm -f "$WORK/copy/"*
  dd_times+=("$(time_it dd if="$VHD" of="$WORK/copy/dd.vhd" bs=2M status=none)")
  "${FERRY[@]}" init "$WORK/vault" --quiet
  open_times+=("$(time_it "${FERRY[@]}" key list --vault "$WORK/vault")")
  store_times+=("$(time_it "${FERRY[@]}" vhd import --vault "$WORK/vault" "$VHD")")
  ID=$("${FERRY[@]}" vhd info "$VHD" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).layers[0].uniqueId))')
  rm -f "$WORK/back.vhd"
  export_times+=("$(time_it "${FERRY[@]}" vhd export --vault "$WORK/vault" --disk "$ID" --to "$WORK/back.vhd")")
  cmp "$WORK/back.vhd" "$VHD" || { echo "MISMATCH: exported VHD differs" >&2; exit 1; }
done
cpm=$(printf '%s\n' "${cp_times[@]}" | median)
stm=$(printf '%s\n' "${store_times[@]}" | median)
ddm=$(printf '%s\n' "${dd_times[@]}" | median)
opm=$(printf '%s\n' "${open_times[@]}" | median)
exm=$(printf '%s\n' "${export_times[@]}" | median)
vsize=$(du -sb "$WORK/vault" | cut -f1); fsize=$(stat -c %s "$VHD")
printf '\nstore a 2 GiB VHD (file %s bytes), %s cache, median of %s, load %s\n' "$fsize" "$CACHE" "$RUNS" "$(cut -d' ' -f1 /proc/loadavg)"
printf '%-34s %8s\n' "operation" "seconds"
printf '%-34s %8.2f\n' "cp X.vhd DIR/ + sync" "$cpm" "dd bs=2M + sync" "$ddm" "ferry key list (open only)" "$opm" \
  "ferry vhd import (store) + sync" "$stm" "ferry vhd export (back) + sync" "$exm"
printf 'runs (s): cp %s | dd %s | open %s | store %s | export %s\n' "${cp_times[*]}" "${dd_times[*]}" "${open_times[*]}" "${store_times[*]}" "${export_times[*]}" | sed -E 's/([0-9]*\.[0-9]{2})[0-9]*/\1/g'
printf 'store / cp = %.2f (target <= 1.5); store / dd = %.2f; (store - open) / cp = %.2f; vault holds %s bytes (%.0f%% of the file)\n' \
  "$(echo "$stm / $cpm" | bc -l)" "$(echo "$stm / $ddm" | bc -l)" "$(echo "($stm - $opm) / $cpm" | bc -l)" "$vsize" "$(echo "100 * $vsize / $fsize" | bc -l)"
