#!/usr/bin/env bash
# Seed, import and restore: ferry against restic and borg on the same tree.
#
#   bash bench/peers.sh
#
# (as root: it drops the page cache before every timed command.)
#
# What it does, in one run:
#  - source: a copy (cp -a, unreadable things skipped) of /usr/share and
#    /usr/lib into $WORK/src. When that would be much more than ~2.5 GB, the
#    largest entries of /usr/lib are left out until it is about 2 GB; which
#    ones is printed and written to $WORK/src.info. Made once, kept for reruns.
#  - ferry under test: `git archive HEAD` of this repository, built with tsc
#    into $WORK/build (so a rebuild of the shared work tree during the run
#    changes nothing); FERRY_ROOT=DIR measures an already built tree instead.
#  - backup, $RUNS times (default 3), each on fresh repositories:
#      ferry init V (default scrypt KDF; timed on its own, not part of seed+import)
#      ferry seed --vault V --item bench --kind files --disk D1 SRC
#      ferry import --vault V D1
#      restic backup (repository v2, compression auto; `restic init` not timed)
#      borg create (repokey-blake2, zstd,1; `borg init` not timed)
#  - restore, $RUNS times, into fresh targets: ferry restore --to, restic
#    restore latest --target, borg extract (from the last run's repositories).
#  - every timed command: `sync; echo 3 > /proc/sys/vm/drop_caches` first,
#    wall time up to the end of a `sync` after it (so writes left in the page
#    cache are paid for), peak RSS and CPU time (user + system) from
#    /usr/bin/time (all threads of the process).
#  - checks: the restored trees equal the source (diff -r --no-dereference),
#    for ferry, restic and borg; and a listing of type, mode, owner, size,
#    symlink target and mtime of every entry, compared (reported, not fatal).
#  - prints a Markdown table (median seconds, highest peak RSS of the runs,
#    bytes stored) and the ratios against the issue's targets; also written to
#    $WORK/results.md.
#  - PROFILE=1 (default): one more seed, import and restore under
#    `node --cpu-prof`, summarised per thread by bench/peers-profile.mjs
#    (into $WORK/profile.txt).
#
# Before the timed runs it waits until the 1-minute load average is below
# $LOAD_MAX (1.5), polling every 20 s for up to $LOAD_WAIT s (900); then it
# runs anyway and reports the load seen at the start of each command.
#
# Environment: FERRY_BENCH_DIR (work dir, default /var/tmp/ferry-peers), RUNS,
# FERRY_ROOT, PROFILE, LOAD_MAX, LOAD_WAIT, TARGET_MB (size of the subset, 2000).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${FERRY_BENCH_DIR:-/var/tmp/ferry-peers}
RUNS=${RUNS:-3}
PROFILE=${PROFILE:-1}
LOAD_MAX=${LOAD_MAX:-1.5}
LOAD_WAIT=${LOAD_WAIT:-900}
TARGET_MB=${TARGET_MB:-2000}
SRC=$WORK/src
LOG=$WORK/peers.log

export FERRY_PASSPHRASE=${FERRY_PASSPHRASE:-ferry-bench-passphrase-0123456789}
export RESTIC_PASSWORD=$FERRY_PASSPHRASE
export BORG_PASSPHRASE=$FERRY_PASSPHRASE
export BORG_BASE_DIR=$WORK/borg-home
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export RESTIC_CACHE_DIR=$WORK/restic-cache

for tool in restic borg /usr/bin/time node git bc; do
  command -v "$tool" >/dev/null || { echo "bench/peers.sh needs $tool (apt-get install restic borgbackup time bc)" >&2; exit 1; }
done
mkdir -p "$WORK"
: > "$LOG"
say() { echo "bench: $*" | tee -a "$LOG" >&2; }

# ---------------------------------------------------------------- ferry build
if [ -n "${FERRY_ROOT:-}" ]; then
  FROOT=$(cd "$FERRY_ROOT" && pwd)
  [ -f "$FROOT/dist/bin/ferry.js" ] || { echo "$FROOT is not built (npx tsc -p .)" >&2; exit 1; }
  FERRY_REV="$FROOT (as built)"
else
  FROOT=$WORK/build
  rev=$(git -C "$ROOT" rev-parse HEAD)
  if [ "$(cat "$FROOT/.rev" 2>/dev/null)" != "$rev" ]; then
    say "building ferry at ${rev:0:12} (git archive HEAD) in $FROOT"
    rm -rf "$FROOT"
    mkdir -p "$FROOT"
    git -C "$ROOT" archive HEAD | tar -x -C "$FROOT"
    ln -s "$ROOT/node_modules" "$FROOT/node_modules"
    (cd "$FROOT" && "$ROOT/node_modules/.bin/tsc" -p . && node scripts/build-native.mjs)
    echo "$rev" > "$FROOT/.rev"
  fi
  FERRY_REV="commit ${rev:0:12}"
fi
FERRY=("$FROOT/bin/ferry") # (as a program: its #! line sets node's flags)
WB=$(node --input-type=module -e "import('$FROOT/dist/format/writeback.js').then((m) => console.log(m.writebackAvailable() ? 'on' : 'off'))" 2>/dev/null || echo unknown)
say "ferry's early write-back (native/): $WB"

# ---------------------------------------------------------------- source tree
if [ ! -f "$WORK/src.info" ]; then
  rm -rf "$SRC"
  mkdir -p "$SRC/usr/lib"
  share=$(du -sb /usr/share 2>/dev/null | cut -f1)
  total=$share
  declare -A LIBSIZE
  while IFS=$'\t' read -r size path; do
    LIBSIZE[$path]=$size
    total=$((total + size))
  done < <(du -sb /usr/lib/* /usr/lib/.[!.]* 2>/dev/null || true)
  excluded=()
  full=$total
  # "much bigger than ~2.5 GB": more than 3 GB. Then drop the largest /usr/lib
  # entries until the rest is about TARGET_MB.
  if [ "$total" -gt 3000000000 ]; then
    while read -r size path; do
      [ "$total" -le $((TARGET_MB * 1000000 + TARGET_MB * 100000)) ] && break
      excluded+=("$path")
      total=$((total - size))
    done < <(for p in "${!LIBSIZE[@]}"; do echo "${LIBSIZE[$p]} $p"; done | sort -rn)
  fi
  say "copying /usr/share and /usr/lib into $SRC (${#excluded[@]} entries of /usr/lib left out: ${excluded[*]:-none})"
  cp -a /usr/share "$SRC/usr/" 2>>"$WORK/cp-errors.log" || true
  for p in /usr/lib/* /usr/lib/.[!.]*; do
    [ -e "$p" ] || [ -L "$p" ] || continue
    skip=0
    for e in "${excluded[@]}"; do [ "$p" = "$e" ] && skip=1; done
    [ $skip = 1 ] || cp -a "$p" "$SRC/usr/lib/" 2>>"$WORK/cp-errors.log" || true
  done
  {
    echo "full=$full"
    echo "excluded=${excluded[*]:-}"
    echo "cp_errors=$(wc -l < "$WORK/cp-errors.log" 2>/dev/null || echo 0)"
  } > "$WORK/src.info"
fi
SRC_BYTES=$(du -sb "$SRC" | cut -f1)
SRC_FILES=$(find "$SRC" -type f | wc -l)
SRC_ENTRIES=$(find "$SRC" | wc -l)
SRC_FULL=$(sed -n 's/^full=//p' "$WORK/src.info")
SRC_EXCLUDED=$(sed -n 's/^excluded=//p' "$WORK/src.info")
CP_ERRORS=$(sed -n 's/^cp_errors=//p' "$WORK/src.info")
say "source $SRC: $SRC_BYTES bytes, $SRC_FILES files, $SRC_ENTRIES entries (of /usr/share + /usr/lib, $SRC_FULL bytes; left out: ${SRC_EXCLUDED:-nothing}; cp errors: $CP_ERRORS)"

# ---------------------------------------------------------------- helpers
if (sync && echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then
  CACHE="cold (sync; echo 3 > /proc/sys/vm/drop_caches before each timed command)"
  drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
else
  CACHE="NOT dropped (drop_caches refused): warm"
  drop() { sync; }
fi
now() { date +%s.%N; }
load1() { cut -d' ' -f1 /proc/loadavg; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
maxof() { printf '%s\n' "$@" | sort -g | tail -1; }
mib() { echo "scale=1; $1 / 1048576" | bc -l; }
bytes() { du -sb "$1" | cut -f1; }

declare -A T M C S L   # T[key]="secs...", M[key]="KiB...", C[key]="CPU secs...", S[key]="stored bytes...", L[key]="load..."

# timed KEY OKCODES CMD...: drops the cache, runs CMD under /usr/bin/time,
# syncs; appends seconds (to the end of the sync), peak KiB and CPU seconds
# (user + system, all threads) to T/M/C[KEY].
timed() {
  local key=$1 ok=$2; shift 2
  drop
  local l t0 t1 rc=0
  l=$(load1)
  t0=$(now)
  /usr/bin/time -f '%M %U %S' -o "$WORK/time.out" "$@" > "$WORK/cmd.out" 2> "$WORK/cmd.err" || rc=$?
  sync
  t1=$(now)
  if [[ " $ok " != *" $rc "* ]]; then
    echo "bench: $key failed with exit code $rc: $*" >&2
    tail -20 "$WORK/cmd.err" >&2
    exit 1
  fi
  local secs kib cpu u s
  secs=$(echo "$t1 - $t0" | bc -l)
  read -r kib u s < <(tail -1 "$WORK/time.out")
  cpu=$(echo "$u + $s" | bc -l)
  T[$key]+="$secs "
  M[$key]+="$kib "
  C[$key]+="$cpu "
  L[$key]+="$l "
  printf 'bench: %-15s %8.2f s  %6.2f s CPU  %6d MiB peak  load %s  (exit %d)\n' "$key" "$secs" "$cpu" $((kib / 1024)) "$l" "$rc" | tee -a "$LOG" >&2
  if [ "$rc" != 0 ]; then
    { echo "bench: $key exit $rc; its stderr (first 20 lines):"; head -20 "$WORK/cmd.err"; } | tee -a "$LOG" >&2
  fi
}

# ---------------------------------------------------------------- wait for quiet
waited=0
while awk -v l="$(load1)" -v m="$LOAD_MAX" 'BEGIN { exit !(l >= m) }'; do
  if [ "$waited" -ge "$LOAD_WAIT" ]; then
    say "load average still $(load1) after ${LOAD_WAIT}s: running anyway"
    break
  fi
  [ "$waited" = 0 ] && say "load average $(load1) >= $LOAD_MAX: waiting (up to ${LOAD_WAIT}s)"
  sleep 20
  waited=$((waited + 20))
done
LOAD_START=$(load1)
say "starting timed runs at load $LOAD_START after waiting ${waited}s; page cache $CACHE"

V=$WORK/ferry-vault; D1=$WORK/ferry-disk1; R=$WORK/restic-repo; B=$WORK/borg-repo
OUT_F=$WORK/out-ferry; OUT_R=$WORK/out-restic; OUT_B=$WORK/out-borg

# ---------------------------------------------------------------- backups
for run in $(seq "$RUNS"); do
  say "backup run $run of $RUNS"
  rm -rf "$V" "$D1" "$R" "$B" "$BORG_BASE_DIR" "$RESTIC_CACHE_DIR"

  timed ferry_init "0" "${FERRY[@]}" init "$V" --quiet
  timed ferry_seed "0 3" "${FERRY[@]}" seed --vault "$V" --item bench --kind files --disk "$D1" "$SRC" --quiet
  S[ferry_disk]+="$(bytes "$D1") "
  timed ferry_import "0 3" "${FERRY[@]}" import --vault "$V" "$D1" --quiet
  S[ferry_vault]+="$(bytes "$V") "
  s=$(echo "${T[ferry_seed]}" | awk '{print $NF}'); i=$(echo "${T[ferry_import]}" | awk '{print $NF}')
  T[ferry_seedimport]+="$(echo "$s + $i" | bc -l) "
  s=$(echo "${C[ferry_seed]}" | awk '{print $NF}'); i=$(echo "${C[ferry_import]}" | awk '{print $NF}')
  C[ferry_seedimport]+="$(echo "$s + $i" | bc -l) "
  rm -rf "$D1"

  restic init -r "$R" -q >> "$LOG" 2>&1
  timed restic_backup "0 3" restic backup -r "$R" -q "$SRC"
  S[restic_repo]+="$(bytes "$R") "

  borg init -e repokey-blake2 "$B" >> "$LOG" 2>&1
  timed borg_create "0 1" borg create --compression zstd,1 "$B::bench" "$SRC"
  S[borg_repo]+="$(bytes "$B") "
done

# ---------------------------------------------------------------- restores
for run in $(seq "$RUNS"); do
  say "restore run $run of $RUNS"
  rm -rf "$OUT_F" "$OUT_R" "$OUT_B"
  mkdir -p "$OUT_B"
  timed ferry_restore "0 3" "${FERRY[@]}" restore --vault "$V" --item bench --to "$OUT_F" --quiet
  timed restic_restore "0" restic restore -r "$R" latest --target "$OUT_R" -q
  timed borg_extract "0 1" env -C "$OUT_B" borg extract "$B::bench"
done

# ---------------------------------------------------------------- checks
listing() { # type, mode, owner, size (not of directories), link target, mtime
  (cd "$1" && { find . -type d -printf '%p\t%y\t%m\t%U:%G\t-\t-\t%T@\n'; find . ! -type d -printf '%p\t%y\t%m\t%U:%G\t%s\t%l\t%T@\n'; } | LC_ALL=C sort)
}
SRC_LIST=$WORK/list-src.txt
listing "$SRC" > "$SRC_LIST"
declare -A SAME META
for t in ferry restic borg; do
  case $t in
    ferry) out=$OUT_F$SRC ;;
    restic) out=$OUT_R$SRC ;;
    borg) out=$OUT_B$SRC ;;
  esac
  if diff -r --no-dereference "$SRC" "$out" > "$WORK/diff-$t.txt" 2>&1; then
    SAME[$t]="identical (diff -r --no-dereference)"
  else
    SAME[$t]="DIFFERENT: $(wc -l < "$WORK/diff-$t.txt") lines in $WORK/diff-$t.txt"
  fi
  listing "$out" > "$WORK/list-$t.txt"
  n=$(diff "$SRC_LIST" "$WORK/list-$t.txt" | grep -c '^>' || true)
  if [ "$n" = 0 ]; then META[$t]="type, mode, owner, size, link target and mtime of all $SRC_ENTRIES entries equal"
  else META[$t]="$n of $SRC_ENTRIES entries differ in type, mode, owner, size, link target or mtime (diff $WORK/list-src.txt $WORK/list-$t.txt)"
  fi
  say "$t restore: ${SAME[$t]}; ${META[$t]}"
done

# ---------------------------------------------------------------- table
row() { # tool op key stored
  local tool=$1 op=$2 key=$3 stored=$4 secs peak cpu
  # shellcheck disable=SC2086
  secs=$(median ${T[$key]})
  cpu=$(median ${C[$key]})
  if [ -n "${M[$key]:-}" ]; then peak=$(( $(maxof ${M[$key]}) / 1024 )); else peak=$5; fi
  printf '| %-6s | %-14s | %8.2f | %6.2f | %8s | %12s | %s|\n' "$tool" "$op" "$secs" "$cpu" "$peak" "$stored" "$(printf '%.2f ' ${T[$key]})"
}
stored() { mib "$(median ${S[$1]})"; }
FERRY_PEAK_BACKUP=$(maxof ${M[ferry_seed]} ${M[ferry_import]})

{
  echo "| tool   | operation      | seconds  | CPU s  | peak MiB | stored MiB   | runs (s) |"
  echo "|--------|----------------|----------|--------|----------|--------------|----------|"
  row ferry "init (apart)" ferry_init "-"
  row ferry seed ferry_seed "$(stored ferry_disk) (disk)"
  row ferry import ferry_import "$(stored ferry_vault)"
  row ferry "seed+import" ferry_seedimport "$(stored ferry_vault)" $((FERRY_PEAK_BACKUP / 1024))
  row restic backup restic_backup "$(stored restic_repo)"
  row borg create borg_create "$(stored borg_repo)"
  row ferry restore ferry_restore "-"
  row restic restore restic_restore "-"
  row borg extract borg_extract "-"
} > "$WORK/table.md"

ratio() { echo "scale=3; $1 / $2" | bc -l | sed 's/^\./0./'; }
SI=$(median ${T[ferry_seedimport]}); RB=$(median ${T[restic_backup]}); BC=$(median ${T[borg_create]})
FR=$(median ${T[ferry_restore]}); RR=$(median ${T[restic_restore]}); BE=$(median ${T[borg_extract]})
CSI=$(median ${C[ferry_seedimport]}); CRB=$(median ${C[restic_backup]}); CFR=$(median ${C[ferry_restore]}); CRR=$(median ${C[restic_restore]})
MRB=$(maxof ${M[restic_backup]}); MFR=$(maxof ${M[ferry_restore]}); MRR=$(maxof ${M[restic_restore]})
met() { awk -v a="$1" -v b="$2" 'BEGIN { print (a <= b ? "met" : "NOT met") }'; }
r1=$(ratio "$SI" "$RB"); r2=$(ratio "$FR" "$RR"); r3=$(ratio "$FERRY_PEAK_BACKUP" "$MRB"); r4=$(ratio "$MFR" "$MRR")
LOADS=$(printf '%s\n' "${L[@]}" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1; s+=$1} END {printf "min %s, mean %.2f, max %s", a[1], s/NR, a[NR]}')

{
  echo "ferry $FERRY_REV; $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r), node $(node --version), $(restic version | cut -d' ' -f1-2), $(borg --version)"
  echo "source: $SRC_BYTES bytes ($(mib "$SRC_BYTES") MiB), $SRC_FILES files, $SRC_ENTRIES entries; a copy of /usr/share and /usr/lib$( [ -n "$SRC_EXCLUDED" ] && echo " without $SRC_EXCLUDED (the whole is $(mib "$SRC_FULL") MiB)")"
  echo "median of $RUNS runs, each on fresh repositories / targets; page cache $CACHE; time to the end of a sync; CPU s = median user + system time (all threads); peak MiB = highest peak RSS of the runs (seed+import: of either); stored = du -sb (ferry: the vault after import; the seed disk on the seed row)"
  echo "load average (1 min) at the start of the timed commands: $LOADS (waited ${waited}s for < $LOAD_MAX before starting)"
  echo "restic: repository v2, compression auto; borg: repokey-blake2, zstd,1; ferry: vault defaults (zstd 1, AES-256-GCM, default scrypt KDF)"
  echo
  cat "$WORK/table.md"
  echo
  echo "- ferry seed+import / restic backup = $r1 (target <= 0.333: $(met "$r1" 0.3334)); / borg create = $(ratio "$SI" "$BC")"
  echo "- ferry restore / restic restore = $r2 (target <= 0.5: $(met "$r2" 0.5)); / borg extract = $(ratio "$FR" "$BE")"
  echo "- CPU (user + system): ferry seed+import / restic backup = $(ratio "$CSI" "$CRB"); ferry restore / restic restore = $(ratio "$CFR" "$CRR")"
  echo "- ferry peak RSS (seed, import) / restic backup = $r3 (target <= 1: $(met "$r3" 1))"
  echo "- ferry restore peak RSS / restic restore = $r4 (target <= 1: $(met "$r4" 1))"
  echo "- restored trees: ferry ${SAME[ferry]}; restic ${SAME[restic]}; borg ${SAME[borg]}"
  echo "- metadata: ferry: ${META[ferry]}; restic: ${META[restic]}; borg: ${META[borg]}"
} > "$WORK/results.md"
cat "$WORK/results.md"

# ---------------------------------------------------------------- profile
if [ "$PROFILE" = 1 ]; then
  P=$WORK/prof
  rm -rf "$P" "$WORK/prof-vault" "$WORK/prof-disk" "$WORK/prof-out"
  mkdir -p "$P"
  "${FERRY[@]}" init "$WORK/prof-vault" --quiet
  prof() { # NAME ferry-args...
    local name=$1; shift
    drop
    local t0; t0=$(now)
    node --max-semi-space-size=2 --heap-growing-percent=60 --cpu-prof --cpu-prof-dir="$P/$name" "$FROOT/bin/ferry" "$@" --quiet || [ $? = 3 ]
    sync
    echo "$name: $(echo "$(now) - $t0" | bc -l | xargs printf '%.1f') s under the profiler"
    node "$ROOT/bench/peers-profile.mjs" "$P/$name" 12
  }
  {
    echo
    echo "CPU profiles (node --cpu-prof), self time per function and thread:"
    prof seed seed --vault "$WORK/prof-vault" --item bench --kind files --disk "$WORK/prof-disk" "$SRC"
    prof import import --vault "$WORK/prof-vault" "$WORK/prof-disk"
    prof restore restore --vault "$WORK/prof-vault" --item bench --to "$WORK/prof-out"
  } | tee "$WORK/profile.txt"
  rm -rf "$WORK/prof-vault" "$WORK/prof-disk" "$WORK/prof-out"
fi

rm -rf "$D1" "$OUT_F" "$OUT_R" "$OUT_B"
say "done; results in $WORK/results.md, log in $LOG (source kept in $SRC, repositories of the last run in $WORK)"
