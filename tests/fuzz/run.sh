#!/usr/bin/env bash
# One fuzz target, bounded: its regression inputs first (each must run clean), then SECONDS of
# libFuzzer from the seeds. A crash leaves its input in WORK/crash-* and fails the test; copy it
# to tests/fuzz/regressions/<target>/ once fixed. Usage: run.sh BIN SEEDS WORK REGRESSIONS SECONDS
set -euo pipefail
bin=$1 seeds=$2 work=$3 regressions=$4 seconds=$5
rm -rf "$work"
mkdir -p "$work/corpus"
opts=(-rss_limit_mb=2048 -timeout=30 -malloc_limit_mb=2048)
if compgen -G "$regressions/*" >/dev/null; then
  echo "== regressions: $(ls "$regressions" | wc -l) input(s)"
  "$bin" "${opts[@]}" "$regressions"/*
fi
max_len=$(find "$seeds" -type f -printf '%s\n' 2>/dev/null | sort -n | tail -1)
max_len=$(( ${max_len:-4096} + 4096 ))
echo "== fuzzing for $seconds s (max_len $max_len)"
"$bin" "${opts[@]}" -max_total_time="$seconds" -max_len="$max_len" -print_final_stats=1 \
  -artifact_prefix="$work/" "$work/corpus" "$seeds"
