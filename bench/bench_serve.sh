#!/usr/bin/env bash
# Serving over a cluster, measured through HTTP with `strata bench-serve` (issue 17's evaluation).
#
#   bench/bench_serve.sh [build/bin/strata] [parts]     parts: any of agree,cold,weights,churn (default all)
#
# agree  Bursts of the Azure code trace (845-870 s), the Azure conversation trace (1865-1890 s, its
#        densest 25 s) and BurstGPT (its first 200 requests at 8/s) replayed over HTTP against
#        `serve --nodes 3` and by `autoscale --nodes 3` with the same settings (stories260K,
#        device 4 ms/layer + 0.2 ms/row, every node's egress paced to 0.25 MB/s so a model load
#        takes seconds), under blitz and stop-the-world: p99 TTFT, SLO attainment; ratios
#        blitz/stop-the-world on each path and HTTP/autoscale per policy. The front door's queue and its connections per client are made
#        as deep as the replay's (no 429, no refused connection: each streamed request holds one).
# cold   Scale from zero: one model, then four models at once (a request for each at t=0), on
#        nodes that hold no copy (placement n1,n2: parameters multicast from src over 0.25 MB/s
#        links), blitz and stop-the-world: cold-start TTFT; ratio four/one.
# weights  Scale from zero as in cold, one model held as f32, bf16 and q8 (`--weights`, nodes
#        too): the multicast image shrinks with the type, so the cold start does; ratios to f32.
# churn  Nodes started by hand, serve --controller, a steady load (gamma 6/s, 30 s); at 6 s a node
#        joins, at 12 s a node hosting an instance is drained, at 18 s another is killed (SIGKILL);
#        placement follows the view (src first, members in order, joiners after): requests ok/failed
#        and p99 TTFT of the requests that arrived within 3 s after each event vs before any.
set -euo pipefail
cd "$(dirname "$0")/.."
strata=$(realpath "${1:-build/bin/strata}")
parts=${2:-agree,cold,weights,churn}
data=$(realpath ../shared/data)
m="$data/models/stories260K"
. bench/lib.sh
summary() {  # summary JSON [policy]: p99 TTFT (ms), SLO attainment, ok/all of a bench-serve or autoscale result
  python3 - "$@" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s = j["summary"] if "summary" in j else next(p["summary"] for p in j["policies"] if p["policy"] == sys.argv[2])
print(f'{s["ttft_s"]["p99"] * 1e3:.0f} {100 * s["slo_attainment"]:.1f} {s["ok"]}/{s["requests"]}')
r = j["requests"] if "requests" in j else next(p["requests"] for p in j["policies"] if p["policy"] == sys.argv[2])
for e in sorted({q["error"] for q in r if not q["ok"]})[:2]:
    print("  failure:", e, file=sys.stderr)
PY
}
ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}' if b > 0 else 'n/a')" "$1" "$2"; }

if [[ ,$parts, == *,agree,* ]]; then
  echo "### bursts over HTTP (bench-serve vs serve --nodes 3) and by autoscale --nodes 3; stories260K, device 4 ms/layer + 0.2 ms/row, links 0.25 MB/s"
  knobs=(--max 4 --max-running 16 --link-mbs 0.25 --chunk-kb 32 "${dev[@]}")
  declare -A p99 slo
  labels=("Azure code 845-870 s" "Azure conversation 1865-1890 s" "BurstGPT first 200 at 8/s")
  traces=("--trace $data/traces/AzureLLMInferenceTrace_code.csv --start 845 --duration 25 --max-requests 1000"
          "--trace $data/traces/AzureLLMInferenceTrace_conv.csv --start 1865 --duration 25 --max-requests 1000"
          "--trace $data/traces/burstgpt1_first400.csv --max-requests 200 --rate 8")
  printf '%-32s %-16s %-10s %12s %7s %8s\n' trace policy path "p99 TTFT ms" "SLO %" ok
  for i in "${!traces[@]}"; do
    read -r -a trace <<<"${traces[$i]} --max-prompt 64"
    label=${labels[$i]}
    for pol in blitz stop-the-world; do
      start_serve "agree-$i-$pol.log" --model "$m" --nodes 3 --policy "$pol" --max-waiting 4096 \
        --max-connections-per-client 4096 "${knobs[@]}"
      "$strata" bench-serve --url "$url" "${trace[@]}" --vocab 512 --json "$tmp/http-$i-$pol.json" >/dev/null 2>&1 || true
      stop_serve
      read -r a b c < <(summary "$tmp/http-$i-$pol.json")
      p99[http-$i-$pol]=$a
      printf '%-32s %-16s %-10s %12s %7s %8s\n' "$label" "$pol" HTTP "$a" "$b" "$c"
      "$strata" autoscale --model "$m" "${trace[@]}" --nodes 3 --policies "$pol" "${knobs[@]}" --threads 1 \
        --json "$tmp/auto-$i-$pol.json" >/dev/null 2>&1 || true
      read -r a b c < <(summary "$tmp/auto-$i-$pol.json" "$pol")
      p99[auto-$i-$pol]=$a
      printf '%-32s %-16s %-10s %12s %7s %8s\n' "$label" "$pol" autoscale "$a" "$b" "$c"
    done
  done
  for i in "${!traces[@]}"; do
    echo "${labels[$i]}: p99 TTFT blitz / stop-the-world: HTTP $(ratio "${p99[http-$i-blitz]}" "${p99[http-$i-stop-the-world]}"), autoscale $(ratio "${p99[auto-$i-blitz]}" "${p99[auto-$i-stop-the-world]}"); HTTP / autoscale: blitz $(ratio "${p99[http-$i-blitz]}" "${p99[auto-$i-blitz]}"), stop-the-world $(ratio "${p99[http-$i-stop-the-world]}" "${p99[auto-$i-stop-the-world]}")"
  done
  echo
fi

if [[ ,$parts, == *,cold,* ]]; then
  echo "### scale from zero onto nodes without a copy (placement n1,n2; multicast from src over 0.25 MB/s links); stories260K"
  printf '%-16s %-9s %14s %14s\n' policy models "cold TTFT ms" "max of models"
  declare -A cold
  for pol in blitz stop-the-world; do
    for k in 1 4; do
      names=(a b c d)
      args=()
      for n in "${names[@]:0:$k}"; do args+=(--model "$n=$m"); done
      start_serve "cold-$pol-$k.log" "${args[@]}" --nodes 2 --placement n1,n2 --min 0 --policy "$pol" --link-mbs 0.25 \
        --chunk-kb 32 --keep-alive-s 60
      list=$(IFS=,; echo "${names[*]:0:$k}")
      "$strata" bench-serve --url "$url" --model "$list" --trace gamma --n "$k" --gamma-rate 1000 --max-prompt 16 \
        --max-output 16 --vocab 512 --json "$tmp/cold-$pol-$k.json" >/dev/null 2>&1 || true
      stop_serve
      read -r mean mx < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["requests"]
t = [q["ttft_s"] * 1e3 for q in r if q["ok"]]
print(f"{sum(t) / len(t):.0f} {max(t):.0f}" if len(t) == len(r) else "failed failed")' "$tmp/cold-$pol-$k.json")
      cold[$pol-$k]=$mean
      printf '%-16s %-9s %14s %14s\n' "$pol" "$k" "$mean" "$mx"
    done
  done
  echo "cold-start TTFT four models / one: blitz $(ratio "${cold[blitz-4]}" "${cold[blitz-1]}"), stop-the-world $(ratio "${cold[stop-the-world-4]}" "${cold[stop-the-world-1]}")"
  echo
fi

if [[ ,$parts, == *,weights,* ]]; then
  echo "### scale from zero with the model held as f32, bf16 and q8 (--weights; placement n1; multicast from src over 0.25 MB/s links); stories260K"
  printf '%-8s %14s %14s\n' weights "cold TTFT ms" "of f32"
  declare -A wcold
  for w in f32 bf16 q8; do
    start_serve "weights-$w.log" --model "$m" --weights "$w" --nodes 2 --placement n1 --min 0 --policy blitz \
      --link-mbs 0.25 --chunk-kb 32 --keep-alive-s 60
    "$strata" bench-serve --url "$url" --trace gamma --n 1 --gamma-rate 1000 --max-prompt 16 --max-output 16 \
      --vocab 512 --json "$tmp/weights-$w.json" >/dev/null 2>&1 || true
    stop_serve
    wcold[$w]=$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["requests"]
t = [q["ttft_s"] * 1e3 for q in r if q["ok"]]
print(f"{t[0]:.0f}" if len(t) == len(r) == 1 else "failed")' "$tmp/weights-$w.json")
    printf '%-8s %14s %14s\n' "$w" "${wcold[$w]}" "$(ratio "${wcold[$w]}" "${wcold[f32]}")"
  done
  echo
fi

if [[ ,$parts, == *,churn,* ]]; then
  echo "### node churn under load (gamma 6/s for 30 s, serve --controller over src + n1..n3, blitz, min 2): n4 joins at 6 s, a node with an instance drains at 12 s, another is killed at 18 s"
  port=$(free_port)
  ctl="127.0.0.1:$port"
  "$strata" node --name src --listen "$ctl" --model "stories260K=$m" >"$tmp/src.log" 2>&1 &
  pids+=($!)
  declare -A node
  for n in n1 n2 n3; do
    "$strata" node --name "$n" --controller "$ctl" --listen 127.0.0.1:0 >"$tmp/$n.log" 2>&1 &
    node[$n]=$!
    pids+=($!)
  done
  for _ in $(seq 100); do "$strata" cluster view --controller "$ctl" 2>/dev/null | grep -q "^4 node(s)" && break; sleep 0.2; done
  start_serve churn.log --model "$m" --controller "$ctl" --min 2 --max 4 --max-running 8 \
    --keep-alive-s 60 "${dev[@]}"
  "$strata" bench-serve --url "$url" --trace gamma --n 180 --gamma-rate 6 --burstiness 1 --max-output 64 --vocab 512 \
    --json "$tmp/churn.json" >"$tmp/churn.out" 2>/dev/null &
  bench=$!
  t0=$(date +%s.%N)
  at() { sleep "$(python3 -c "import sys, time; print(max(0, $1 - (time.time() - float(sys.argv[1]))))" "$t0")"; }
  at 6
  "$strata" node --name n4 --controller "$ctl" --listen 127.0.0.1:0 >"$tmp/n4.log" 2>&1 &
  node[n4]=$!
  pids+=($!)
  hosts() {  # nodes other than src with an instance of the model now
    "$strata" cluster view --controller "$ctl" 2>/dev/null | sed -n 's/^  stories260K: //p' | tr ' ' '\n' | grep -E '^n[0-9]+$'
  }
  at 12
  drained_node=$(hosts | head -1)
  "$strata" cluster drain --controller "$ctl" --node "${drained_node:-n1}" --timeout-s 60 >"$tmp/drain.out" 2>&1 &
  drain=$!
  at 18
  killed_node=$(hosts | grep -vx "${drained_node:-n1}" | head -1)
  killed_node=${killed_node:-n2}
  { kill -KILL "${node[$killed_node]}"; wait "${node[$killed_node]}" || true; } 2>/dev/null
  wait "$bench" || true
  wait "$drain" && drained=$(grep -o 'in [0-9.]* s' "$tmp/drain.out") || drained="failed: $(tail -1 "$tmp/drain.out")"
  echo "scaling events: $(grep -oE 'strata scaler [^:]*: [0-9.]+ s (started|scale-out|drain|lost|stopped)[^,]*(, on [a-z0-9]+|: on [a-z0-9]+|: node [a-z0-9]+)?' "$tmp/churn.log" | sed -E 's/strata scaler [^:]*: //' | paste -sd ';' | sed 's/;/; /g')"
  stop_serve
  python3 - "$tmp/churn.json" "$drained" "${drained_node:-n1}" "$killed_node" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
r = j["requests"]
def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(0.99 * len(xs) + 0.999) - 1))] * 1e3 if xs else float("nan")
def window(a, b):
    w = [q for q in r if a <= q["arrival_s"] < b]
    return len(w), sum(q["ok"] for q in w), p99([q["ttft_s"] for q in w if q["ok"]])
n0, ok0, base = window(0, 6)
print(f'{"window":<26} {"requests":>8} {"ok":>4} {"p99 TTFT ms":>12} {"x before":>9}')
print(f'{"before any event (0-6 s)":<26} {n0:>8} {ok0:>4} {base:>12.0f} {1.0:>9.2f}')
for name, t in (("n4 joins (6-9 s)", 6), (f"{sys.argv[3]} drains (12-15 s)", 12), (f"{sys.argv[4]} killed (18-21 s)", 18)):
    n, ok, p = window(t, t + 3)
    print(f'{name:<26} {n:>8} {ok:>4} {p:>12.0f} {p / base:>9.2f}')
s = j["summary"]
print(f'all: {s["ok"]}/{s["requests"]} ok (limit: all), SLO attainment {100 * s["slo_attainment"]:.1f}%; drain of {sys.argv[3]}: {sys.argv[2]}')
fails = sorted({q["error"] for q in r if not q["ok"]})
for e in fails[:3]:
    print("  failure:", e)
PY
fi
