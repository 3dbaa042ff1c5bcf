#!/usr/bin/env bash
# ferry's VHD engine against qemu-img on the same work, on one machine:
#   create dynamic   ferry vhd create X.vhd --from img.raw      | qemu-img convert -f raw -O vpc img.raw Y.vhd
#   create fixed     ferry vhd create --type fixed --from ...   | qemu-img convert -f raw -O vpc -o subformat=fixed ...
#   export raw       ferry vhd export X.vhd --to out.raw        | qemu-img convert -f vpc -O raw X.vhd out.raw
#   export dynamic   ferry vhd export X.vhd --type dynamic ...  | qemu-img convert -f vpc -O vpc X.vhd out.vhd
# The input is a 2 GiB raw image, half data (alternating 2 MiB regions of
# random and compressible data, and zeros), generated once by
# bench/mkimage.ts into $FERRY_BENCH_DIR (default /var/tmp/ferry-bench; never
# committed). Each command runs $RUNS times (default 3) with the page cache
# dropped before each run when the kernel lets us, and is timed up to the
# end of a `sync`, so writes that a tool left in the page cache are paid for.
# The median is reported, with the median CPU time (user + system) of each
# tool beside it. Every output is checked with `qemu-img compare`.
#
#   npm run bench:vhd          (builds first)
#   RUNS=5 SIZE=4G bash bench/vhd.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${FERRY_BENCH_DIR:-/var/tmp/ferry-bench}
RUNS=${RUNS:-3}
SIZE=${SIZE:-2G}
FERRY=("$ROOT/bin/ferry") # (as a program: its #! line sets node's flags)
mkdir -p "$WORK"
IMG="$WORK/img-$SIZE.raw"

command -v qemu-img >/dev/null || { echo "bench/vhd.sh needs qemu-img (apt-get install qemu-utils)" >&2; exit 1; }
[ -f "$ROOT/dist/bench/mkimage.js" ] || { echo "build first: npx tsc -p ." >&2; exit 1; }
if [ ! -f "$IMG" ]; then
  node "$ROOT/dist/bench/mkimage.js" "$IMG.part" "$SIZE"
  mv "$IMG.part" "$IMG"
fi

# Cold cache if we may; else one warming read, and say so.
if (sync && echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then
  CACHE=cold
  drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
else
  CACHE="warm (drop_caches not permitted)"
  drop() { sync; }
  cat "$IMG" > /dev/null
fi

now() { date +%s.%N; }
TIMEFORMAT='%U %S' # for the `time` keyword: user and system seconds, children included
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# once OUTPUT FN: removes OUTPUT, drops the cache, runs FN, syncs; prints
# "wall cpu": seconds to the end of the sync, and the tool's CPU seconds
# (user + system, children included), which other load disturbs far less.
once() {
  rm -f "$1"
  drop
  local t0 t1 cpu
  t0=$(now)
  { time "$2" >/dev/null 2>"$WORK/stderr"; } 2>"$WORK/cpu" || { cat "$WORK/stderr" >&2; exit 1; }
  sync
  t1=$(now)
  cpu=$(awk 'END {print $1 + $2}' "$WORK/cpu")
  echo "$(echo "$t1 - $t0" | bc -l) $cpu"
}

# pair OP: runs ferry_OP and qemu_OP $RUNS times each, interleaved (ferry,
# qemu, ferry, ...) so that a change in machine load hits both alike; sets
# F[OP], Q[OP] (median wall seconds) and FC[OP], QC[OP] (median CPU seconds).
declare -A F Q FC QC
pair() {
  local op=$1 fw=() qw=() fc=() qc=() r
  for _ in $(seq "$RUNS"); do
    r=$(once "${OUT_F[$op]}" "ferry_$op"); fw+=("${r% *}"); fc+=("${r#* }")
    r=$(once "${OUT_Q[$op]}" "qemu_$op"); qw+=("${r% *}"); qc+=("${r#* }")
  done
  F[$op]=$(median "${fw[@]}"); FC[$op]=$(median "${fc[@]}")
  Q[$op]=$(median "${qw[@]}"); QC[$op]=$(median "${qc[@]}")
  echo "$op: wall ferry ${fw[*]} | qemu ${qw[*]}; cpu ferry ${fc[*]} | qemu ${qc[*]}; load $(cut -d' ' -f1 /proc/loadavg)" >&2
}

same() { # same FMT_A A FMT_B B: qemu-img compare or die
  if ! qemu-img compare -q -f "$1" -F "$3" "$2" "$4"; then
    echo "MISMATCH: $2 ($1) differs from $4 ($3)" >&2
    exit 1
  fi
}

declare -A OUT_F OUT_Q
X="$WORK/X.vhd"
OUT_F[create_dynamic]="$X";                 OUT_Q[create_dynamic]="$WORK/Y.vhd"
OUT_F[create_fixed]="$WORK/Xf.vhd";         OUT_Q[create_fixed]="$WORK/Yf.vhd"
OUT_F[export_raw]="$WORK/out-ferry.raw";    OUT_Q[export_raw]="$WORK/out-qemu.raw"
OUT_F[export_dynamic]="$WORK/out-ferry.vhd"; OUT_Q[export_dynamic]="$WORK/out-qemu.vhd"
OUT_F[startup]="$WORK/none";                OUT_Q[startup]="$WORK/none"

ferry_create_dynamic() { "${FERRY[@]}" vhd create "$X" --from "$IMG" --quiet; }
qemu_create_dynamic() { qemu-img convert -f raw -O vpc "$IMG" "$WORK/Y.vhd"; }
ferry_create_fixed() { "${FERRY[@]}" vhd create "$WORK/Xf.vhd" --type fixed --from "$IMG" --quiet; }
qemu_create_fixed() { qemu-img convert -f raw -O vpc -o subformat=fixed "$IMG" "$WORK/Yf.vhd"; }
# Both exports read ferry's dynamic X.vhd.
ferry_export_raw() { "${FERRY[@]}" vhd export "$X" --to "$WORK/out-ferry.raw" --quiet; }
qemu_export_raw() { qemu-img convert -f vpc -O raw "$X" "$WORK/out-qemu.raw"; }
ferry_export_dynamic() { "${FERRY[@]}" vhd export "$X" --type dynamic --to "$WORK/out-ferry.vhd" --quiet; }
qemu_export_dynamic() { qemu-img convert -f vpc -O vpc "$X" "$WORK/out-qemu.vhd"; }
# The fixed cost of starting each tool (cold, like every run above).
ferry_startup() { "${FERRY[@]}" vhd --help; }
qemu_startup() { qemu-img --help; }

echo "input: $IMG ($(stat -c %s "$IMG") bytes), $RUNS runs each, page cache $CACHE, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

pair startup
pair create_dynamic
# the last run of each tool is kept for checking
same vpc "$X" raw "$IMG"
pair create_fixed
same vpc "$WORK/Xf.vhd" raw "$IMG"
same vpc "$WORK/Yf.vhd" raw "$IMG"
rm -f "$WORK/Xf.vhd" "$WORK/Yf.vhd"
# qemu's dynamic output was removed by the next ferry run: make it once more to check it
qemu_create_dynamic
same vpc "$WORK/Y.vhd" raw "$IMG"
rm -f "$WORK/Y.vhd"

pair export_raw
same raw "$WORK/out-ferry.raw" raw "$IMG"
same raw "$WORK/out-qemu.raw" raw "$IMG"
rm -f "$WORK/out-ferry.raw" "$WORK/out-qemu.raw"

pair export_dynamic
same vpc "$WORK/out-ferry.vhd" raw "$IMG"
same vpc "$WORK/out-qemu.vhd" raw "$IMG"
rm -f "$WORK/out-ferry.vhd" "$WORK/out-qemu.vhd" "$X"

rm -f "$WORK/cpu" "$WORK/stderr"
echo "all outputs verified with qemu-img compare" >&2
ratio() { echo "$1 / $2" | bc -l; }
printf '| %-16s | %11s | %10s | %11s | %10s | %9s | %10s |\n' "operation" "ferry wall s" "qemu wall s" "wall ratio" "ferry CPU s" "qemu CPU s" "CPU ratio"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' "------------------" "--------------" "-------------" "-------------" "-------------" "-----------" "------------"
for op in create_dynamic create_fixed export_raw export_dynamic startup; do
  printf '| %-16s | %12.2f | %11.2f | %11.2f | %11.2f | %10.2f | %10.2f |\n' "${op/_/ }" "${F[$op]}" "${Q[$op]}" "$(ratio "${F[$op]}" "${Q[$op]}")" "${FC[$op]}" "${QC[$op]}" "$(ratio "${FC[$op]}" "${QC[$op]}")"
done
echo "(median of $RUNS runs, interleaved; page cache $CACHE; wall = to the end of a sync; load average at the end $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores, $(. /etc/os-release && echo "$PRETTY_NAME"), node $(node --version), $(qemu-img --version | head -1))"
