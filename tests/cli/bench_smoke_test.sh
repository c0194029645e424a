#!/usr/bin/env bash
# The benchmarks still run (their options parse, their setup works) at toy sizes: their ratios
# mean nothing there, so a FAIL or MISS (exit 1) is accepted, a crash or usage error is not.
# Usage: bench_smoke_test.sh BIN_DIR DATA_DIR
set -u
bin=$1 data=$2
fail() { echo "FAIL: $*"; exit 1; }
run() {  # run NAME PATTERN ARGS...: exit 0 or 1 and PATTERN in its output
  local name=$1 pattern=$2; shift 2
  out=$(timeout 300 "$bin/$name" "$@" 2>&1)
  rc=$?
  [ "$rc" -le 1 ] || fail "$name $*: exit $rc: $(echo "$out" | tail -5)"
  echo "$out" | grep -q "$pattern" || fail "$name $*: no '$pattern' in: $(echo "$out" | tail -5)"
  echo "ok: $name $* (exit $rc)"
}
run bench_decode "ratio per-layer / single" --model "$data/models/stories260K" --reps 1 --steps 4
run bench_decode "ratio per-layer / single" --dim 64 --hidden 128 --layers 2 --heads 2 --kv-heads 2 --vocab 256 --reps 1 --steps 2
run bench_multicast "binomial-pipeline" --mib 8 --reps 1 --transports tcp
run bench_gemm "decode (1 row)" --in 256 --out 256 --rows 1,4 --reps 1
run bench_quality "forced argmax ok" --model "$data/models/stories260K" --tokens 8
run bench_subnets "memory: 3 subnets as separate models" --model "$data/models/stories260K" --reps 1 --space full,d3w50,h50
# The SlackFit evaluation over HTTP, one trace and three policies.
root="$(cd "$(dirname "$0")/../.." && pwd)"
out=$(DATA="$data" timeout 300 bash "$root/bench/bench_slackfit.sh" "$bin/strata" quick 2>&1) ||
  fail "bench_slackfit.sh quick: $(echo "$out" | tail -5)"
echo "$out" | grep -qE '^gamma CV2 4 +slackfit +[0-9.]+ +[0-9.]+ ' || fail "bench_slackfit.sh quick: no slackfit row in: $out"
echo "ok: bench_slackfit.sh quick"
