#!/usr/bin/env bash
# The HTTP front door over a cluster, as an operator runs it: node processes started by hand (a
# controller holding the model, one more node), `strata serve --controller` places the model's
# instances on them. Checks: bad setups fail at once with the reason; greedy text over HTTP is
# the in-process pipeline's; a burst scales out onto the other node with every text identical;
# SIGTERM drains, exits 0 and leaves the nodes with only their host copy; with --min 0 a cold
# request starts an instance (parameters multicast to it) and idle instances go back to zero;
# `strata cluster drain` under streaming load loses no request and the node exits; a node
# SIGKILLed under streaming load loses none either; placement respects each node's memory across
# models; two models behind one front door each start and serve (also under bench-serve);
# serve --weights reaches the node processes it starts.
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
start_serve() {  # start_serve LOG "what failed" serve-args...: srv, hport and url of a serve on a free port
  local log=$1 what=$2
  shift 2
  "$strata" serve "$@" >"$tmp/$log" 2>&1 &
  srv=$!
  pids+=($srv)
  hport=$(serve_port "$tmp/$log" 300)
  [ -n "$hport" ] || fail "$what"
  url="http://127.0.0.1:$hport"
}
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

"$strata" node --name src --listen "$ctl" --model "stories260K=$m" --model "other=$m" >"$tmp/src.log" 2>&1 &
pids+=($!)
"$strata" node --name n1 --controller "$ctl" --listen 127.0.0.1:0 >"$tmp/n1.log" 2>&1 &
n1pid=$!
pids+=($n1pid)
wait_view "^2 node(s)"
wait_view "stories260K: src (host copy)"
expect_error "no node of the cluster holds a host copy of 'nope'" --controller "$ctl" --served-model-name nope
expect_error "unknown node 'zz' in the placement (the cluster's nodes: n1, src)" --controller "$ctl" --placement zz
expect_error "policy all-cache loads from a host copy on every node" --controller "$ctl" --policy all-cache
echo "ok: bad setups fail with the reason"

# Small instances (2 sequences each, scale out above 1 waiting) that leave 2 s after their last request.
start_serve serve.log "serve did not start" --model "$m" --controller "$ctl" --port 0 --threads 1 --max-running 2 --queue 1 --keep-alive-s 2 \
  --device-layer-ms 2
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
start_serve serve0.log "serve --min 0 did not start" --model "$m" --controller "$ctl" --port 0 --threads 1 --min 0 --placement n1 --keep-alive-s 1 \
 
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
grep -q '^strata:cold_start_time_to_first_token_seconds_count{model_name="stories260K"} 1$' <(curl -s "$url/metrics") ||
  fail "the cold request is not in the cold-start TTFT histogram: $(curl -s "$url/metrics" | grep cold_start)"
# Serving, unless (a slow machine) the keep-alive is already taking it back to zero (its routes
# gone, the instance retiring: "loading 1") or took it: layers landed.
case "$(state)" in "serving 1 True" | "loading 1 True" | "cold 0 True") ;; *) fail "/v1/models after the cold request: $(curl -s "$url/v1/models")" ;; esac
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
start_serve serve3.log "serve did not start (joining node)" --model "$m" --controller "$ctl" --port 0 --threads 1 --max-running 1 --queue 1 --max 3 \
  --keep-alive-s 30 --device-layer-ms 2
"$strata" node --name n2 --controller "$ctl" --listen 127.0.0.1:0 >"$tmp/n2.log" 2>&1 &
n2=$!
pids+=($n2)
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

# Draining a node under streaming load: the instance on n2 takes no new request, its running
# ones finish, a replacement starts on src, n2 leaves the cluster and exits 0; no request fails.
start_serve serve4.log "serve did not start (drain)" --model "$m" --controller "$ctl" --port 0 --threads 1 --placement n2,src --keep-alive-s 30 \
  --device-layer-ms 2
for _ in $(seq 300); do curl -sf "$url/ready" >/dev/null && break; sleep 0.1; done
grep -qE "^  stories260K: .* n2( |$)" <(view) || fail "no instance on n2 to drain: $(view)"
"$strata" bench-serve --url "$url" --trace gamma --n 40 --gamma-rate 8 --max-output 120 --json "$tmp/drain.json" \
  >"$tmp/drain-bench.out" 2>"$tmp/drain-bench.log" &
bench=$!
for _ in $(seq 100); do grep -q "requests finished" "$tmp/drain-bench.log" && break; sleep 0.1; done
out=$(timeout 60 "$strata" cluster drain --controller "$ctl" --node src 2>&1) && fail "draining the only host copy's node: $out"
grep -qE "node 'src' holds the only host copy of (stories260K|other)" <<<"$out" || fail "drain src: $out"
out=$(timeout 60 "$strata" cluster drain --controller "$ctl" --node zz 2>&1) && fail "draining an unknown node: $out"
grep -q "no node 'zz' in the cluster" <<<"$out" || fail "drain zz: $out"
timeout 60 "$strata" cluster drain --controller "$ctl" --node n2 >"$tmp/drain.out" 2>&1 || fail "drain n2: $(cat "$tmp/drain.out")"
grep -q "node n2 drained and left the cluster" "$tmp/drain.out" || fail "drain n2: $(cat "$tmp/drain.out")"
wait "$n2" || fail "the drained node exited with $?"
grep -q "draining: 1 instance(s) to finish" "$tmp/n2.log" || fail "n2 had no instance when drained"
wait "$bench" || fail "requests failed while n2 drained: $(cat "$tmp/drain-bench.out")"
python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert j["summary"]["ok"] == 40 and all(q["generated"] == q["output_tokens"] for q in j["requests"]), j["summary"]' \
  "$tmp/drain.json" || fail "drain: $(cat "$tmp/drain-bench.out")"
view | grep -q "^  n2 " && fail "n2 still in the view: $(view)"
metrics=$(curl -s "$url/metrics")
grep -qE '^strata:scale_events_total\{model_name="stories260K",event="drain"\} 1$' <<<"$metrics" || fail "no drain event: $metrics"
grep -qE '^strata:instances\{model_name="stories260K"\} 1$' <<<"$metrics" || fail "no replacement: $metrics"
kill -TERM "$srv"
wait "$srv" || fail "serve (drain) did not drain cleanly"
echo "ok: n2 drained under streaming load: 40/40 requests served, a replacement on src, n2 left and exited 0"

# A node killed under streaming load: the requests on its instance are re-admitted on src's (they
# resume from the tokens they streamed) and every stream ends whole.
start_serve serve6.log "serve did not start (kill)" --model "$m" --controller "$ctl" --port 0 --threads 1 \
  --placement n1,src --min 2 --max 2 --keep-alive-s 30 --device-layer-ms 2
for _ in $(seq 300); do curl -sf "$url/ready" >/dev/null && break; sleep 0.1; done
wait_view "^  stories260K: .* n1\b"
"$strata" bench-serve --url "$url" --trace gamma --n 30 --gamma-rate 8 --max-output 120 --json "$tmp/kill.json" \
  >"$tmp/kill-bench.out" 2>"$tmp/kill-bench.log" &
bench=$!
for _ in $(seq 100); do grep -q "requests finished" "$tmp/kill-bench.log" && break; sleep 0.1; done
kill -KILL "$n1pid"
wait "$bench" || fail "requests failed when n1 was killed: $(cat "$tmp/kill-bench.out")"
python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert j["summary"]["ok"] == 30 and all(q["generated"] == q["output_tokens"] for q in j["requests"]), j["summary"]' \
  "$tmp/kill.json" || fail "kill: $(cat "$tmp/kill-bench.out")"
grep -qE "strata scaler stories260K: .* lost #[0-9]+: n1" "$tmp/serve6.log" || fail "n1's instance was not lost: $(grep 'strata scaler' "$tmp/serve6.log")"
kill -TERM "$srv"
wait "$srv" || fail "serve (kill) did not drain cleanly"
echo "ok: n1 killed under streaming load: 30/30 streams ended whole"

# Placement knows memory across models: n3 has room for one copy of the model's parameters, so
# once stories260K runs there, other (the same weights under another name) is not placed there;
# the scaler says why and the request fails after the queue timeout, with the reason.
"$strata" node --name n3 --controller "$ctl" --listen 127.0.0.1:0 --memory-gb 0.0015 >"$tmp/n3.log" 2>&1 &
pids+=($!)
wait_view "^  n3 "
start_serve serve5.log "serve did not start (memory)" --model "stories260K=$m" --model "other=$m" --controller "$ctl" \
  --policy blitz --placement n3 --min 0 --keep-alive-s 30 --queue-timeout-s 3 --port 0 --threads 1
ask() {  # ask MODEL FILE: a short greedy completion; prints the HTTP status
  curl -s -o "$2" -w '%{http_code}' "$url/v1/completions" -H 'content-type: application/json' \
    -d '{"model":"'"$1"'","prompt":"Once","max_tokens":8,"temperature":0}'
}
[ "$(ask stories260K "$tmp/mem1.json")" = 200 ] || fail "stories260K on n3: $(cat "$tmp/mem1.json")"
wait_view "^  stories260K: .* n3"
sleep 1.5  # an absence of its own: the scaler's next look at the view (every second)
code=$(ask other "$tmp/mem2.json")
[ "$code" != 200 ] || fail "other was served though n3 has no room: $(view)"
[ "$code" = 503 ] && grep -q "no instance took the request within 3000 ms" "$tmp/mem2.json" || fail "other: $code $(cat "$tmp/mem2.json")"
grep -qE "strata scaler other: .* no node: .*n3 has [0-9.e-]+ of [0-9.e-]+ GiB free \(1 model\(s\) there\), [0-9.e-]+ GiB needed" \
  "$tmp/serve5.log" || fail "no reason for not placing other: $(grep 'strata scaler' "$tmp/serve5.log")"
view | grep -qE "^  other: .* n3" && fail "other placed on n3 without room: $(view)"
# Per-node series: the instance on n3, its memory, what it holds and that it does not drain.
metrics=$(curl -s "$url/metrics")
for want in 'strata:node_instances{model_name="stories260K",node="n3"} 1' 'strata:node_memory_bytes{node="n3"} 1610612' \
  'strata:node_models{node="n3"} 1' 'strata:node_draining{node="n3"} 0' 'strata:node_layers_loaded_total{model_name="stories260K",node="n3"} 6'; do
  grep -qF "$want" <<<"$metrics" || fail "no '$want' in /metrics: $(grep '^strata:node' <<<"$metrics")"
done
grep -qE '^strata:node_memory_used_bytes\{node="n3"\} [1-9]' <<<"$metrics" || fail "n3 holds nothing: $(grep '^strata:node' <<<"$metrics")"
kill -TERM "$srv"
wait "$srv" || fail "serve (memory) did not drain cleanly"
echo "ok: placement across models respects a node's memory and says why it did not place"

# Two models behind one front door, on node processes started here (src holds a host copy of
# each), both scaling from zero: each request goes to its own model's instances.
start_serve serve2.log "serve with two models did not start" --model "a=$m" --model "b=$m" --nodes 2 --min 0 --port 0 --threads 1
[ "$(curl -s "$url/v1/models" | python3 -c 'import json, sys; print(",".join(d["id"] for d in json.load(sys.stdin)["data"] if "parent" not in d))')" = "a,b" ] ||
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
# Each scaler numbers its instances from 1: on a shared node they must not collide.
grep -q "start failed" "$tmp/serve2.log" && fail "an instance failed to start: $(grep 'strata scaler' "$tmp/serve2.log")"
kill -TERM "$srv"
wait "$srv" || fail "serve with two models did not drain cleanly"
echo "ok: two models behind one front door, each started from zero on the cluster and served"
# --weights reaches the node processes serve starts: src holds q8 and the instance loaded on n1
# receives q8's image, about a quarter of the f32 model's 1.04 MB.
start_serve serve7.log "serve --weights q8 did not start" --model "$m" --weights q8 --nodes 2 --placement n1 --min 0 \
  --port 0 --threads 1
curl -s "$url/v1/completions" -H 'content-type: application/json' \
  -d '{"model":"stories260K","prompt":"Once upon a time","max_tokens":16,"temperature":0}' -o "$tmp/q8.json"
[ -n "$(text_of "$tmp/q8.json")" ] || fail "q8 over the cluster: $(cat "$tmp/q8.json")"
used=
for _ in $(seq 100); do  # the metrics show the controller's view, refreshed every second
  used=$(curl -s "$url/metrics" | sed -nE 's/^strata:node_memory_used_bytes\{node="n1"\} ([1-9][0-9.e+]*)$/\1/p')
  [ -n "$used" ] && break
  sleep 0.1
done
python3 -c 'import sys; b = float(sys.argv[1]); sys.exit(0 if 1e5 < b < 4e5 else 1)' "${used:-0}" ||
  fail "n1 holds ${used:-nothing} bytes, not q8's ~0.28 MB: $(curl -s "$url/metrics" | grep '^strata:node')"
kill -TERM "$srv"
wait "$srv" || fail "serve --weights q8 did not drain cleanly"
echo "ok: serve --weights q8 --nodes: the nodes hold and multicast q8 ($used bytes on n1)"
echo "cluster serve test passed"
