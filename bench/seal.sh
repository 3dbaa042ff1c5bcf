#!/usr/bin/env bash
# Sealing throughput (zstd + AES-256-GCM) on real files, one thread and the
# worker pool; then (bench/store.sh, as root: it drops the page cache) storing
# a 2 GiB VHD into a directory vault next to cp of the same file, so that one
# run gives both figures issue 3 asks for (STORE=0 skips the second part).
# Usage: npm run build && bash bench/seal.sh [MB]   (default 256)
# The corpus is half /usr/lib, half /usr/share (binaries, libraries, text,
# already-compressed files), cut into 2 MiB blocks as a backup would be.
# It is generated here and never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-256}
CORPUS=${FERRY_BENCH_CORPUS:-/tmp/ferry-seal-corpus-${MB}M.bin}
if [ ! -s "$CORPUS" ]; then
  half=$((MB / 2))
  echo "bench: building a ${MB} MB corpus from /usr/lib and /usr/share into $CORPUS" >&2
  {
    find /usr/lib -type f -readable -size +0 2>/dev/null | LC_ALL=C sort | xargs -d '\n' cat 2>/dev/null | head -c "${half}M" || true
    find /usr/share -type f -readable -size +0 2>/dev/null | LC_ALL=C sort | xargs -d '\n' cat 2>/dev/null | head -c "$((MB - half))M" || true
  } > "$CORPUS"
fi
[ -f dist/bench/seal.js ] || npx tsc -p .
node dist/bench/seal.js "$CORPUS"
if [ "${STORE:-1}" != 0 ]; then
  echo
  bash bench/store.sh
fi
