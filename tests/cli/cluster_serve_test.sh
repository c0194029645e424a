#!/usr/bin/env bash
# The HTTP front door over a cluster, as an operator runs it: node processes started by hand (a
# controller holding the model, one more node), `strata serve --controller` places the model's
# instances on them. Checks: bad setups fail at once with the reason; greedy text over HTTP is
# the in-process pipeline's; a burst scales out onto the other node with every text identical;
# SIGTERM drains, exits 0 and leaves the nodes with only their host copy; with --min 0 a cold
# request starts an instance (parameters multicast to it) and idle instances go back to zero;
# two models behind one front door each start and serve (also under bench-serve).
# usage: cluster_serve_test.sh STRATA_BIN DATA_DIR
set -uo pipefail
strata=$1
data=$2
m="$data/models/stories260K"
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/../serve_port.sh"
port=$(free_port)
ctl="127.0.0.1:$port"
view() { "$strata" cluster view --controller "$ctl" 2>&1; }
expect_error() {  # expect_error "needle" serve-args...: serve fails with status 1 within 60 s and says needle
  local needle=$1; shift
  local rc=0
  out=$(timeout 60 "$strata" serve --model "$m" --port 0 --threads 1 "$@" 2>&1) || rc=$?
  [ "$rc" -eq 1 ] || fail "expected exit status 1, got $rc from: serve $* -- output: $out"
  grep -qF -- "$needle" <<<"$out" || fail "expected '$needle' from: serve $* -- got: $out"
}

# Nothing listening there: the reason, at once (no hang on a dead address).
dead=$(free_port)
expect_error "cannot reach controller at 127.0.0.1:$dead" --controller "127.0.0.1:$dead"
expect_error "--nodes and --controller exclude each other" --nodes 1 --controller "$ctl"
expect_error "--tls needs --controller" --tls /nonexistent

"$strata" node --name src --listen "$ctl" --model "stories260K=$m" >"$tmp/src.log" 2>&1 &
pids+=($!)
"$strata" node --name n1 --controller "$ctl" --listen 127.0.0.1:0 >"$tmp/n1.log" 2>&1 &
pids+=($!)
wait_view "^2 node(s)"
wait_view "stories260K: src (host copy)"
expect_error "no node of the cluster holds a host copy of 'other'" --controller "$ctl" --served-model-name other
expect_error "unknown node 'zz' in the placement (the cluster's nodes: src, n1)" --controller "$ctl" --placement zz
expect_error "policy all-cache loads from a host copy on every node" --controller "$ctl" --policy all-cache
echo "ok: bad setups fail with the reason"

# Small instances (2 sequences each, scale out above 1 waiting) that leave 2 s after their last request.
"$strata" serve --model "$m" --controller "$ctl" --port 0 --threads 1 --max-running 2 --queue 1 --keep-alive-s 2 \
  --device-layer-ms 2 >"$tmp/serve.log" 2>&1 &
srv=$!
pids+=($srv)
hport=$(serve_port "$tmp/serve.log" 300)
[ -n "$hport" ] || fail "serve did not start"
url="http://127.0.0.1:$hport"
for _ in $(seq 300); do curl -sf "$url/ready" >/dev/null && break; sleep 0.1; done
curl -sf "$url/ready" >/dev/null || fail "serve never became ready"
complete() {  # complete FILE: a greedy completion of 60 tokens into FILE
  curl -s "$url/v1/completions" -H 'content-type: application/json' \
    -d '{"model":"stories260K","prompt":"Once upon a time","max_tokens":60,"temperature":0}' -o "$1"
}
text_of() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"], end="")' "$1"; }
complete "$tmp/one.json"
one=$(text_of "$tmp/one.json") || fail "no completion: $(cat "$tmp/one.json")"
gen=$("$strata" generate --model "$m" --prompt "Once upon a time" --steps 80 --temperature 0 2>/dev/null)
python3 -c 'import sys; sys.exit(0 if sys.argv[2].startswith("Once upon a time" + sys.argv[1]) else 1)' "$one" "$gen" ||
  fail "greedy text over the cluster '$one' is not the in-process pipeline's '$gen'"
echo "ok: greedy text over the cluster front door is the in-process pipeline's"

for i in $(seq 12); do complete "$tmp/burst$i.json" & done
wait_jobs() { for j in $(jobs -p); do [[ " ${pids[*]} " == *" $j "* ]] || wait "$j"; done; }
wait_jobs
for i in $(seq 12); do
  [ "$(text_of "$tmp/burst$i.json")" = "$one" ] || fail "burst request $i: $(cat "$tmp/burst$i.json")"
done
metrics=$(curl -s "$url/metrics")
grep -qE '^strata:scale_events_total\{model_name="stories260K",event="scale-out"\} [1-9]' <<<"$metrics" ||
  fail "the burst did not scale out: $(grep '^strata:' <<<"$metrics")"
echo "ok: a burst of 12 scaled out onto the cluster's other node; every text identical"

kill -TERM "$srv"
for _ in $(seq 200); do kill -0 "$srv" 2>/dev/null || break; sleep 0.1; done
kill -0 "$srv" 2>/dev/null && fail "serve did not exit within 20 s of SIGTERM"
wait "$srv"
rc=$?
[ "$rc" -eq 0 ] || fail "serve exited with $rc"
grep -q "drained; bye" "$tmp/serve.log" || fail "no drain"
wait_view "^  stories260K: src (host copy)$"
echo "ok: SIGTERM drained and exited; the nodes keep only their host copy"

# Scale from zero: no instance until the first request, which starts one on n1 (its parameters
# multicast from src's host copy) and is served; idle, the model goes back to zero.
"$strata" serve --model "$m" --controller "$ctl" --port 0 --threads 1 --min 0 --placement n1 --keep-alive-s 1 \
  >"$tmp/serve0.log" 2>&1 &
srv=$!
pids+=($srv)
hport=$(serve_port "$tmp/serve0.log" 300)
[ -n "$hport" ] || fail "serve --min 0 did not start"
url="http://127.0.0.1:$hport"
curl -sf "$url/ready" >/dev/null || fail "a model that scales from zero is not ready: $(curl -s "$url/ready")"
grep -q '^strata:instances{model_name="stories260K"} 0$' <(curl -s "$url/metrics") || fail "an instance before any request"
state() {  # state, instances and whether layers were loaded onto new instances
  curl -s "$url/v1/models/stories260K" |
    python3 -c 'import json, sys; s = json.load(sys.stdin)["strata"]; print(s["state"], s["instances"], s["layers_loaded"] > 0)'
}
[ "$(state)" = "cold 0 False" ] || fail "/v1/models before any request: $(curl -s "$url/v1/models")"
t0=$(date +%s.%N)
complete "$tmp/cold.json"
cold_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
[ "$(text_of "$tmp/cold.json")" = "$one" ] || fail "cold request: $(cat "$tmp/cold.json")"
grep -qE '^strata:scale_events_total\{model_name="stories260K",event="scale-out"\} 1$' <(curl -s "$url/metrics") ||
  fail "the cold request did not scale out: $(curl -s "$url/metrics" | grep '^strata:scale')"
# Serving, unless (a slow machine) the keep-alive already took it back to zero: layers landed.
case "$(state)" in "serving 1 True" | "cold 0 True") ;; *) fail "/v1/models after the cold request: $(curl -s "$url/v1/models")" ;; esac
echo "ok: a cold request started an instance on n1 and was served in $cold_s s (same text); /v1/models: cold, then layers loaded"
for _ in $(seq 100); do
  grep -q '^strata:instances{model_name="stories260K"} 0$' <(curl -s "$url/metrics") && break
  sleep 0.1
done
grep -q '^strata:instances{model_name="stories260K"} 0$' <(curl -s "$url/metrics") || fail "never back to zero"
complete "$tmp/cold2.json"
[ "$(text_of "$tmp/cold2.json")" = "$one" ] || fail "second cold request: $(cat "$tmp/cold2.json")"
echo "ok: idle, back to zero instances; the next request starts one again"
kill -TERM "$srv"
wait "$srv" || fail "serve --min 0 did not drain cleanly"
# A node that joins while serve runs is used by the next placement (serve follows the view).
"$strata" serve --model "$m" --controller "$ctl" --port 0 --threads 1 --max-running 1 --queue 1 --max 3 \
  --keep-alive-s 30 --device-layer-ms 2 >"$tmp/serve3.log" 2>&1 &
srv=$!
pids+=($srv)
hport=$(serve_port "$tmp/serve3.log" 300)
[ -n "$hport" ] || fail "serve did not start (joining node)"
url="http://127.0.0.1:$hport"
"$strata" node --name n2 --controller "$ctl" --listen 127.0.0.1:0 >"$tmp/n2.log" 2>&1 &
pids+=($!)
wait_view "^3 node(s)"
sleep 1.5  # an absence of its own: the scaler's next look at the view (every second)
for i in $(seq 12); do complete "$tmp/join$i.json" & done
wait_jobs
for i in $(seq 12); do
  [ "$(text_of "$tmp/join$i.json")" = "$one" ] || fail "request $i with a joined node: $(cat "$tmp/join$i.json")"
done
grep -qE "^  stories260K: .* n2( |$)" <(view) || fail "no instance was placed on the node that joined: $(view)"
kill -TERM "$srv"
wait "$srv" || fail "serve (joining node) did not drain cleanly"
echo "ok: a node that joined while serving took an instance"

# Two models behind one front door, on node processes started here (src holds a host copy of
# each), both scaling from zero: each request goes to its own model's instances.
"$strata" serve --model "a=$m" --model "b=$m" --nodes 2 --min 0 --port 0 --threads 1 >"$tmp/serve2.log" 2>&1 &
srv=$!
pids+=($srv)
hport=$(serve_port "$tmp/serve2.log" 300)
[ -n "$hport" ] || fail "serve with two models did not start"
url="http://127.0.0.1:$hport"
[ "$(curl -s "$url/v1/models" | python3 -c 'import json, sys; print(",".join(d["id"] for d in json.load(sys.stdin)["data"]))')" = "a,b" ] ||
  fail "/v1/models: $(curl -s "$url/v1/models")"
for name in a b; do
  curl -s "$url/v1/completions" -H 'content-type: application/json' \
    -d '{"model":"'$name'","prompt":"Once upon a time","max_tokens":60,"temperature":0}' -o "$tmp/$name.json"
  [ "$(text_of "$tmp/$name.json")" = "$one" ] || fail "model $name: $(cat "$tmp/$name.json")"
  [ "$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["model"])' "$tmp/$name.json")" = "$name" ] ||
    fail "model $name answered as another"
done
metrics=$(curl -s "$url/metrics")
for name in a b; do  # each started an instance of its own (whole on a holder, or loaded over the cluster)
  grep -qE "^strata:scale_events_total\{model_name=\"$name\",event=\"(started|scale-out)\"\} [1-9]" <<<"$metrics" ||
    fail "model $name started no instance: $metrics"
done
# bench-serve across both models (request i asks for a or b in turn): each model's requests all
# served, each with the tokens it asked for.
"$strata" bench-serve --url "$url" --model a,b --trace gamma --n 12 --gamma-rate 6 --max-output 24 \
  --json "$tmp/bench2.json" >"$tmp/bench2.out" 2>"$tmp/bench2.log" || fail "bench-serve on two models: $(cat "$tmp/bench2.out")"
python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert set(j["models"]) == {"a", "b"} and all(j["models"][k]["ok"] == 6 for k in "ab"), j["models"]
assert all(q["ok"] and q["generated"] == q["output_tokens"] for q in j["requests"])' "$tmp/bench2.json" ||
  fail "bench-serve on two models: $(cat "$tmp/bench2.out")"
grep -q "^model a: 6 requests (6 ok" "$tmp/bench2.out" || fail "no per-model table: $(cat "$tmp/bench2.out")"
kill -TERM "$srv"
wait "$srv" || fail "serve with two models did not drain cleanly"
echo "ok: two models behind one front door, each started from zero on the cluster and served"
echo "cluster serve test passed"
