#!/usr/bin/env bash
# The strata CLI end to end, as a user runs it: generate/convert/inspect models and get clear
# errors for bad input. Usage: cli_test.sh STRATA_BINARY DATA_DIR
set -euo pipefail
strata=$1
data=$2
. "$(dirname "$0")/../serve_port.sh"
tmp=$(mktemp -d)
srv=""
trap 'rm -rf "$tmp"; [ -z "$srv" ] || kill "$srv" 2>/dev/null || true' EXIT
fail() { echo "FAIL: $*"; exit 1; }
expect_error() {  # expect_error "needle" cmd...: the command fails with status 1 (never a crash) and says needle
  local needle=$1; shift
  local rc=0
  out=$(timeout 60 "$@" 2>&1) || rc=$?
  [ "$rc" -eq 1 ] || fail "expected exit status 1, got $rc from: $* -- output: $out"
  grep -qF -- "$needle" <<<"$out" || fail "expected '$needle' from: $* -- got: $out"
}
# jcheck FILE 'EXPR' WHAT: a check of a command's --json results (EXPR is Python over `r`).
jcheck() {
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if eval("(" + sys.argv[2] + ")") else 1)' "$1" "$2" \
    || fail "$3: $2 does not hold for $(head -c 2000 "$1")"
}

# (outputs are captured before grep: with pipefail, grep -q closing the pipe early would fail the writer)
# Help per command, from the same table the parser reads: its options with their defaults.
out=$("$strata" generate --help)
grep -q "^usage: strata generate \[options\]" <<<"$out" || fail "generate --help: $out"
grep -qE "^  --steps N +tokens to generate \(default 256\)" <<<"$out" || fail "generate --help lists --steps: $out"
out=$("$strata" cluster multicast --help)
plan=$(grep -A1 -E "^  --plan NAME" <<<"$out")
grep -q "(default chain)" <<<"$plan" || fail "cluster multicast --help: $out"
out=$("$strata" help serve)
grep -q "^usage: strata serve \[options\]" <<<"$out" || fail "help serve: $out"
expect_error "generate: unknown option --modle (did you mean --model?)" "$strata" generate --modle x
expect_error "unknown command 'generte' (did you mean generate?)" "$strata" generte
expect_error "(see strata serve --help)" "$strata" serve --model x --port abc
out=$("$strata" policies)
grep -q "^  blitz " <<<"$out" && grep -q "^  zigzag " <<<"$out" || fail "policies: $out"

# A random model in HF format, inspected, verified and served through 2 shards.
"$strata" gen-model --out "$tmp/rand" --dim 128 --layers 4 --heads 4 --kv-heads 2 --vocab 300 --dtype bf16 \
  --seq-len 256 --shard-mb 1 >/dev/null
[ -f "$tmp/rand/model.safetensors.index.json" ] || fail "expected a sharded model"
out=$("$strata" inspect --model "$tmp/rand" --verify --write "$tmp/rand.stmf")
grep -q "verified" <<<"$out" || fail "verify"
[ -s "$tmp/rand.stmf" ] || fail "manifest not written"
out=$("$strata" generate --model "$tmp/rand" --prompt-tokens 1,5,7 --steps 12 --shards 2 2>&1)
grep -q "12 tokens from 1 requests" <<<"$out" || fail "generate on random model: $out"
# Results on stdout, the rest on stderr; a model without a tokenizer prints token ids.
out=$("$strata" generate --model "$tmp/rand" --prompt-tokens 1,5,7 --steps 12 2>/dev/null)
grep -qxE "\[0\]( [0-9]+){12}" <<<"$out" || fail "token ids on stdout: $out"
out=$("$strata" generate --model "$tmp/rand" --prompt-tokens 1,5,7 --steps 12 --quiet 2>&1 >/dev/null)
[ -z "$out" ] || fail "--quiet printed on stderr: $out"
expect_error "no tokenizer found" "$strata" generate --model "$tmp/rand" --prompt hello
expect_error "token id 300 outside the vocabulary" "$strata" generate --model "$tmp/rand" --prompt-tokens 1,300

# stories260K converted to HF f32 generates the same text as the llama2.c checkpoint.
"$strata" convert --model "$data/models/stories260K" --out "$tmp/hf" --dtype f32 >/dev/null
a=$("$strata" generate --model "$data/models/stories260K" --prompt "The little cat" --steps 60 2>/dev/null)
b=$("$strata" generate --model "$tmp/hf" --prompt "The little cat" --steps 60 --shards 5 2>/dev/null)
grep -q "^The little cat" <<<"$a" || fail "stdout is the prompt and its continuation: $a"
# --n: every completion, each its own seed (greedy: all the same text).
out=$("$strata" generate --model "$data/models/stories260K" --prompt "The little cat" --steps 60 --n 3 2>/dev/null)
[ "$(grep -c '^\[[0-2]\] The little cat' <<<"$out")" = 3 ] || fail "--n 3 prints three completions: $out"
grep -qxF "[2] $a" <<<"$out" || fail "--n 3: the third is the single request's text: $out"
[ -n "$a" ] && [ "$a" == "$b" ] || fail "converted model differs: [$a] vs [$b]"

# Malformed input: precise errors, non-zero exit, no crash.
head -c 5000 "$tmp/hf/model.safetensors" > "$tmp/hf/cut" && mv "$tmp/hf/cut" "$tmp/hf/model.safetensors"
expect_error "truncated" "$strata" generate --model "$tmp/hf" --prompt hi
expect_error "unknown option --bogus" "$strata" generate --bogus 1
expect_error "unsupported dtype 'f8'" "$strata" gen-model --out "$tmp/x" --dtype f8
expect_error "cannot split 5 layers into 9 shards" "$strata" generate --model "$data/models/stories260K" --shards 9
expect_error "--steps: expected an integer, got 'many'" "$strata" generate --model "$data/models/stories260K" --steps many
# Every value is checked before it is used: bad values end in one line and status 1, never an abort.
expect_error "--min: expected an integer, got 'abc'" "$strata" serve --model "$data/models/stories260K" --min abc
expect_error "--http-threads: expected an integer in [1, 256], got '0'" "$strata" serve --model "$data/models/stories260K" --http-threads 0
expect_error "--http-threads: expected an integer in [1, 256], got '-5'" "$strata" serve --model "$data/models/stories260K" --http-threads -5
expect_error "--threads: expected an integer in [0, 1024], got '-1'" "$strata" generate --model "$data/models/stories260K" --threads -1
expect_error "--drain-timeout-s: expected a number in [0, 86400], got '-1'" "$strata" serve --model "$data/models/stories260K" --drain-timeout-s -1
expect_error "--max-waiting: expected an integer in [1, 1048576], got '0'" "$strata" serve --model "$data/models/stories260K" --max-waiting 0
expect_error "--chunk-kb: expected an integer, got 'abc'" "$strata" autoscale --model "$data/models/stories260K" --trace gamma --nodes 2 --chunk-kb abc
expect_error "--chunk-kb: expected an integer in [1, 1048576], got '0'" "$strata" autoscale --model "$data/models/stories260K" --trace gamma --nodes 2 --chunk-kb 0
expect_error "--chunk-kb: expected an integer in [1, 1048576], got '-5'" "$strata" autoscale --model "$data/models/stories260K" --trace gamma --nodes 2 --chunk-kb -5
expect_error "--scheduler: unknown route scheduler 'x' (expected one of zigzag, least-loaded)" "$strata" autoscale --model "$data/models/stories260K" --trace gamma --scheduler x
expect_error "--max-sources: expected an integer in [1, 1024], got '0'" "$strata" cluster multicast --controller 127.0.0.1:1 --max-sources 0
expect_error "--memory-gb: expected a number, got 'abc'" "$strata" node --memory-gb abc
# Clients of a frozen controller give up within their patience (they once waited forever).
"$strata" node --name frozen --listen 127.0.0.1:0 --port-file "$tmp/frozen.port" > "$tmp/frozen.log" 2>&1 &
frozen=$!
for _ in $(seq 100); do [ -s "$tmp/frozen.port" ] && break; sleep 0.1; done
kill -STOP "$frozen"
expect_error "did not answer within 5 s" timeout 20 "$strata" cluster view --controller "127.0.0.1:$(cat "$tmp/frozen.port")"
expect_error "did not answer within 10 s" timeout 20 "$strata" node --name late --controller "127.0.0.1:$(cat "$tmp/frozen.port")"
kill -KILL "$frozen"; wait "$frozen" 2>/dev/null || true
# --logits: every generated position's logits; the greedy token is their argmax, and the text is
# the same as without the dump.
"$strata" generate --model "$data/models/stories260K" --prompt "Once upon" --steps 12 --logits "$tmp/logits.json" > "$tmp/logits.out" \
  2> "$tmp/logits.err" || fail "generate --logits"
grep -q "12 position(s) of 512 logits written" "$tmp/logits.err" || fail "logits summary: $(cat "$tmp/logits.err")"
[ "$(grep -o '"position"' "$tmp/logits.json" | wc -l)" = 12 ] || fail "logits: expected 12 positions"
dumped=$(cat "$tmp/logits.out")
plain=$("$strata" generate --model "$data/models/stories260K" --prompt "Once upon" --steps 12 2>/dev/null)
[ -n "$dumped" ] && grep -qxF "$dumped" <<<"$plain" || fail "logits text '$dumped' is not the pipeline's: $plain"
expect_error "--logits runs one sequence" "$strata" generate --model "$data/models/stories260K" --n 2 --logits "$tmp/x.json"
# TLS: certificates are made and checked before anything connects.
"$strata" cluster init-certs "$tmp/certs" --names src,a | grep -q "3 new member(s)" || fail "init-certs"
"$strata" cluster init-certs "$tmp/certs" --names src,a,b | grep -q "made $tmp/certs/b.pem" || fail "init-certs adds b"
expect_error "'../x' cannot name a certificate" "$strata" cluster init-certs "$tmp/certs" --names ../x
expect_error "no certificate for 'zed' in $tmp/certs" "$strata" node --name zed --tls "$tmp/certs"
cp "$tmp/certs/b.key" "$tmp/certs/a.key"
expect_error "a.key is not the key of" "$strata" node --name a --tls "$tmp/certs"
expect_error "no certificate for 'nobody'" "$strata" cluster view --controller 127.0.0.1:1 --tls "$tmp/certs" --tls-name nobody
# A node refuses at start what it cannot offer (it once stayed up offering nothing).
expect_error "cannot load model m: $tmp/none: no such file" "$strata" node --name c1 --model "m=$tmp/none"
expect_error "exceeds its memory_gb of 0.0001 GiB" "$strata" node --name c1 --memory-gb 0.0001 --model "m=$data/models/stories260K"
expect_error "--max-memory: expected a size" "$strata" generate --model "$data/models/stories260K" --max-memory lots
expect_error "STRATA_MAX_MEMORY: expected a size" env STRATA_MAX_MEMORY=lots "$strata" generate --model "$data/models/stories260K"
expect_error "but the memory budget is 100.00 KiB" "$strata" generate --model "$data/models/stories260K" --max-memory 100K
# A FIFO where a model should be fails at once instead of blocking.
mkfifo "$tmp/fifo.bin"
expect_error "a FIFO, not a regular file" "$strata" inspect --model "$tmp/fifo.bin"
expect_error "a FIFO, not a regular file" "$strata" replay --model "$data/models/stories260K" --trace "$tmp/fifo.bin" --format azure
# A tiny temperature with top-p samples greedily instead of crashing (was SIGSEGV).
out=$("$strata" generate --model "$data/models/stories260K" --prompt "Once" --temperature 1e-40 --top-p 0.5 --steps 20)
greedy=$("$strata" generate --model "$data/models/stories260K" --prompt "Once" --temperature 0 --steps 20)
[ "$out" = "$greedy" ] || fail "temperature 1e-40 is not greedy: $out"
# Instruction-set levels: inspect --cpu says what runs; STRATA_ISA lowers it (scalar and AVX2
# accumulate alike, so their text is the same bit for bit); a bad or too high level is an error.
out=$("$strata" inspect --cpu)
grep -qE '^  kernels run at: [a-z0-9-]+ \(the best this CPU has\)$' <<<"$out" || fail "inspect --cpu: $out"
levels=$(sed -n 's/^  levels: //p' <<<"$out")
out=$(STRATA_ISA=scalar "$strata" inspect --cpu)
grep -qx '  kernels run at: scalar (STRATA_ISA=scalar)' <<<"$out" || fail "STRATA_ISA=scalar: $out"
if grep -q avx2 <<<"$levels"; then
  a=$(STRATA_ISA=scalar "$strata" generate --model "$data/models/stories260K" --prompt "Once" --steps 40 --quiet 2>/dev/null)
  b=$(STRATA_ISA=avx2 "$strata" generate --model "$data/models/stories260K" --prompt "Once" --steps 40 --quiet 2>/dev/null)
  [ -n "$a" ] && [ "$a" = "$b" ] || fail "scalar and avx2 levels disagree: '$a' vs '$b'"
fi
expect_error "STRATA_ISA: unknown instruction-set level 'avx9'" env STRATA_ISA=avx9 "$strata" generate --model "$data/models/stories260K"
grep -q amx <<<"$levels" || expect_error "STRATA_ISA=amx: this CPU runs at most" env STRATA_ISA=amx "$strata" inspect --cpu
expect_error "inspect --cpu takes no model options" "$strata" inspect --cpu --model "$data/models/stories260K"
expect_error "unknown command" "$strata" frobnicate
# Trace replay: a truncated line is reported with its number and skipped; bad input fails clearly.
m="$data/models/stories260K"
printf 'TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:17:03.5,20,5\r\n2023-11-16 18:17:03.6,30\r\n2023-11-16 18:17:03.9,25,4' > "$tmp/t.csv"
out=$("$strata" replay --model "$m" --trace "$tmp/t.csv" --svg "$tmp/r.svg" --json "$tmp/r.json" 2>&1)
grep -q "skipped line 3: has 2 columns (truncated?)" <<<"$out" || fail "replay skipped line: $out"
grep -q "2 requests (2 ok, 0 failed)" <<<"$out" || fail "replay result: $out"
jcheck "$tmp/r.json" 'r["summary"]["ok"] == 2 and [q["prompt_tokens"] for q in r["requests"]] == [20, 25] and
  all(q["generated"] == q["output_tokens"] and 0 < q["ttft_s"] <= q["e2e_s"] for q in r["requests"])' "replay --json"
grep -q "<svg" "$tmp/r.svg" || fail "no svg written"
out=$("$strata" replay --model "$m" --trace "$tmp/t.csv" --quiet 2>&1 >/dev/null)
[ -z "$out" ] || fail "replay --quiet printed on stderr: $out"
expect_error "line 3: has 2 columns" "$strata" replay --model "$m" --trace "$tmp/t.csv" --strict
expect_error "trace $tmp/none.csv: cannot open" "$strata" replay --model "$m" --trace "$tmp/none.csv"
# Gamma options shape only a gamma process; a ramp moves the rate (5/s to 50/s at 50/s^2: 30
# arrivals in about 1 s instead of 6 s at 5/s).
expect_error "--burstiness shapes a gamma process; it does not apply to --trace FILE" "$strata" replay --model "$m" --trace "$tmp/t.csv" --burstiness 0.5
expect_error "--ramp-accel needs --ramp-to" "$strata" replay --model "$m" --trace gamma --ramp-accel 3
out=$("$strata" replay --model "$m" --trace gamma --n 30 --gamma-rate 5 --ramp-to 50 --ramp-accel 50 --burstiness 1 --max-output 2 2>&1)
span=$(sed -n 's/.*replaying 30 over \([0-9.]*\) s.*/\1/p' <<<"$out")
python3 -c "import sys; sys.exit(0 if 0.5 < float('${span:-0}') < 2.5 else 1)" || fail "a 5->50/s ramp spans ${span:-?} s: $out"
expect_error "unknown policy 'magic'" "$strata" autoscale --model "$m" --trace gamma --n 5 --policies magic
out=$("$strata" autoscale --model "$m" --trace gamma --n 20 --gamma-rate 20 --policies blitz,stop-the-world --threads 1)
grep -qE "^blitz .* ([0-9.]+|-) +[0-9]+ +[0-9.]+$" <<<"$out" || fail "autoscale table: $out"
# ... and across node processes (instances in `strata node` processes, parameters over UCX).
# all-cache puts a host copy on every node for its run only, then drops them again (blitz after it
# loads over the network from the one copy left).
out=$("$strata" autoscale --model "$m" --trace gamma --n 20 --gamma-rate 20 --policies all-cache,blitz --threads 1 \
  --nodes 2 --link-mbs 2 --device-layer-ms 2 --json "$tmp/a.json" 2>&1)
jcheck "$tmp/a.json" '[p["policy"] for p in r["policies"]] == ["all-cache", "blitz"] and "cluster_dir" in r and
  all(p["summary"]["ok"] == 20 and p["summary"]["failed"] == 0 for p in r["policies"])' "autoscale --nodes"
# The report counts only what happened: a time to serving per scale-out at most, layers loaded
# only where an instance was started.
jcheck "$tmp/a.json" 'all(len(p["scaling"]["to_first_layer_s"]) <= sum(e["what"] == "scale-out" for e in
  p["scaling"]["events"]) and (p["scaling"]["layers_loaded"] > 0) == any(e["what"] == "scale-out" for e in
  p["scaling"]["events"]) for p in r["policies"])' \
  "autoscale --nodes blitz report"
# Without a stop-the-world run there is nothing to compare with: "-", not a 0 that reads as a ratio.
grep -qE "^blitz +([0-9.]+ +){7}- " <<<"$out" || fail "autoscale: vs STW column without STW: $out"
expect_error "unknown node 'n7' in --placement" "$strata" autoscale --model "$m" --trace gamma --n 5 --nodes 1 \
  --placement n7
# Topology files: a shipped example runs (overridden from the command line); mistakes name the key.
topos="$(cd "$(dirname "$0")/../../apps/topologies" && pwd)"
out=$("$strata" run "$topos/conv-replay.toml" --max-requests 10 --svg "$tmp/topo.svg")
grep -q "10 requests (10 ok, 0 failed)" <<<"$out" || fail "run conv-replay: $out"
# A topology with a random model: written to a temp dir first, then the job runs on it.
out=$("$strata" run "$topos/gamma-random-model.toml" --max-requests 6 --policies blitz --nodes 2 --link-mbs 8 \
  --json "$tmp/run.json" 2>&1)
jcheck "$tmp/run.json" 'r["policies"][0]["policy"] == "blitz" and r["policies"][0]["summary"]["ok"] == 6' \
  "run gamma-random-model"
grep -q "^topology .*: strata autoscale .*--model /tmp/strata-topology-" <<<"$out" || fail "run prints its command: $out"
# Several models need names of their own and autoscaling (each its own router and scaler).
expect_error "two models named 'stories260K'" "$strata" serve --model "$m" --model "$m" --policy blitz --port 0
expect_error "several models need --policy" "$strata" serve --model "a=$m" --model "b=$m" --port 0
expect_error "--served-model-name names the one model" "$strata" serve --model "a=$m" --model "b=$m" \
  --served-model-name x --policy blitz --port 0
# The cluster front door from its topology: nodes started here, scale from zero, one request, drain.
"$strata" run "$topos/serve-cluster.toml" --port 0 --threads 1 > "$tmp/topo-serve.log" 2>&1 &
tsrv=$!
tport=$(serve_port "$tmp/topo-serve.log" 300)
[ -n "$tport" ] || { kill "$tsrv"; fail "run serve-cluster.toml did not start: $(cat "$tmp/topo-serve.log")"; }
out=$(curl -s "http://127.0.0.1:$tport/v1/completions" -H 'content-type: application/json' \
  -d '{"model":"stories260K","prompt":"Once","max_tokens":8,"temperature":0}')
kill -TERM "$tsrv"
wait "$tsrv" || fail "run serve-cluster.toml did not drain: $(cat "$tmp/topo-serve.log")"
grep -q '"completion_tokens":8' <<<"$out" || fail "run serve-cluster.toml: $out"
grep -q "cluster up (3 nodes: src, n1, n2" "$tmp/topo-serve.log" || fail "serve-cluster.toml: no cluster: $(cat "$tmp/topo-serve.log")"
# Per-model knobs (topology [models.NAME]): chat has an instance from the start, batch scales
# from zero; each keeps its own values.
"$strata" run "$topos/serve-models.toml" --port 0 --threads 1 > "$tmp/topo-models.log" 2>&1 &
msrv=$!
mport=$(serve_port "$tmp/topo-models.log" 300)
[ -n "$mport" ] || { kill "$msrv"; fail "run serve-models.toml did not start: $(cat "$tmp/topo-models.log")"; }
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$mport/ready" >/dev/null && break; sleep 0.1; done
states=$(curl -s "http://127.0.0.1:$mport/v1/models" |
  python3 -c 'import json, sys; print(" ".join(d["id"] + "=" + d["strata"]["state"] for d in json.load(sys.stdin)["data"] if "parent" not in d))')
out=$(curl -s "http://127.0.0.1:$mport/v1/completions" -H 'content-type: application/json' \
  -d '{"model":"batch","prompt":"Once","max_tokens":8,"temperature":0}')
kill -TERM "$msrv"
wait "$msrv" || fail "run serve-models.toml did not drain: $(cat "$tmp/topo-models.log")"
[ "$states" = "batch=cold chat=serving" ] || [ "$states" = "chat=serving batch=cold" ] || fail "serve-models.toml states: $states"
grep -q '"completion_tokens":8' <<<"$out" || fail "serve-models.toml, the cold model: $out"
grep -q -- "--model-knobs batch:keep-alive-s=60,max-waiting=64,min=0,queue-timeout-s=30 --model-knobs chat:min=1,queue=1,ttft-slo-ms=500" \
  "$tmp/topo-models.log" || fail "serve-models.toml command line: $(head -2 "$tmp/topo-models.log")"
expect_error "--model-knobs: no model 'zz' is served (a, b)" "$strata" serve --model "a=$m" --model "b=$m" --policy blitz \
  --model-knobs zz:min=0 --port 0
expect_error "--model-knobs a: unknown key 'mn' (did you mean min?)" "$strata" serve --model "a=$m" --model "b=$m" \
  --policy blitz --model-knobs a:mn=0 --port 0
expect_error "model a: --max: expected an integer" "$strata" serve --model "a=$m" --model "b=$m" --policy blitz \
  --model-knobs a:max=-1 --port 0
expect_error "model b: unknown policy 'nope'" "$strata" serve --model "a=$m" --model "b=$m" --policy blitz \
  --model-knobs b:policy=nope --port 0
expect_error "--model-knobs is for several models" "$strata" serve --model "$m" --model-knobs x:min=0 --port 0
printf '[models.a]\npath = "%s"\nmn = 1\n' "$m" > "$tmp/models.toml"
expect_error "unknown key 'mn' in [models.a]" "$strata" run "$tmp/models.toml"
printf '[models.a]\nmin = 1\n' > "$tmp/models2.toml"
expect_error "[models.a] needs path" "$strata" run "$tmp/models2.toml"
printf '[model]\npath = "%s"\n[workload]\ntrace = "gamma"\n[scaling]\nmaxx = 2\n' "$m" > "$tmp/bad.toml"
expect_error "unknown key 'maxx' in [scaling]" "$strata" run "$tmp/bad.toml"
expect_error "topology $tmp/none.toml: cannot open" "$strata" run "$tmp/none.toml"
# Values are checked before the job runs (a negative SLO once failed only after a whole replay).
printf '[model]\npath = "%s"\n[workload]\ntrace = "gamma"\n[slo]\nttft_ms = -5\n' "$m" > "$tmp/slo.toml"
expect_error "$tmp/slo.toml: [slo] ttft_ms: expected a number in [0, 1e+09], got '-5'" timeout 10 "$strata" run "$tmp/slo.toml"
expect_error "--ttft-slo-ms: expected a number in [0, 1e+09], got '-7'" timeout 10 "$strata" run "$tmp/slo.toml" --ttft-slo-ms -7
printf '[model]\npath = "%s"\n[workload]\ntrace = "gamma"\n[scaling]\nmax = 0\n' "$m" > "$tmp/max.toml"
expect_error "$tmp/max.toml: [scaling] max: expected an integer in" timeout 10 "$strata" run "$tmp/max.toml"
# The HTTP front door as an operator runs it: any free port, real HTTP (curl), SIGTERM drains.
"$strata" serve --model "$m" --port 0 --threads 1 > "$tmp/serve.log" 2>&1 &
srv=$!
port=$(serve_port "$tmp/serve.log")
[ -n "$port" ] || fail "serve did not start: $(cat "$tmp/serve.log")"
url="http://127.0.0.1:$port"
out=$(curl -sf "$url/health") && grep -q '"ok"' <<<"$out" || fail "health"
out=$(curl -sf "$url/ready") && grep -q '"ready"' <<<"$out" || fail "ready"
out=$(curl -s "$url/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model":"stories260K","prompt":"Once upon a time","max_tokens":8,"temperature":0}')
grep -q '"object":"text_completion"' <<<"$out" || fail "completion: $out"
out=$(curl -sN "$url/v1/chat/completions" -d '{"model":"stories260K","messages":[{"role":"user","content":"Hi"}],"max_tokens":5,"stream":true}')
grep -q '^data: \[DONE\]' <<<"$out" || fail "stream: $out"
out=$(curl -s -w ' %{http_code}' "$url/v1/completions" -d '{"model":"stories260K","prompt":"x","top_p":3}')
grep -qF "'top_p' must be in (0, 1]" <<<"$out" && grep -q ' 400$' <<<"$out" || fail "bad top_p: $out"
out=$(curl -s -w ' %{http_code}' "$url/v1/completions" -d '{"model":"stories260K","prompt":"x","suffix":"end"}')
grep -qF '"param":"suffix"' <<<"$out" && grep -q ' 400$' <<<"$out" || fail "suffix not refused: $out"
expect_error "cannot listen on 127.0.0.1:$port" "$strata" serve --model "$m" --port "$port"
# A long request in flight when SIGTERM arrives still completes; then the server exits 0.
curl -s "$url/v1/completions" -d '{"model":"stories260K","prompt":"Once","max_tokens":400}' > "$tmp/long.json" &
long=$!
sleep 0.2
kill -TERM "$srv"
wait "$long"
grep -q '"finish_reason"' "$tmp/long.json" || fail "in-flight request lost on SIGTERM: $(cat "$tmp/long.json")"
wait "$srv" || fail "serve exited $? after SIGTERM: $(cat "$tmp/serve.log")"
grep -q "drained; bye" "$tmp/serve.log" || fail "no drain: $(cat "$tmp/serve.log")"
# Subnets: a catalogue profiled here, served with it (/v1/models shows latency and quality), a
# subnet named as a model generates the text the plain forward pass gives for it.
"$strata" subnets --model "$m" --space full,d4,d3w50 --batches 1,2 --steps 3 --samples 2 --sample-length 32 \
  --device-layer-ms 0.5 --json "$tmp/cat.json" --svg "$tmp/cat.svg" > "$tmp/cat.out" 2>"$tmp/cat.log" ||
  fail "subnets: $(cat "$tmp/cat.out" "$tmp/cat.log")"
grep -q "^d3w50 " "$tmp/cat.out" || fail "subnets table: $(cat "$tmp/cat.out")"
python3 - "$tmp/cat.json" <<'PY' || fail "catalogue: $(head -c 1500 "$tmp/cat.json")"
import json, sys
c = json.load(open(sys.argv[1]))
s = {x["spec"]: x for x in c["subnets"]}
assert list(s) == ["full", "d4", "d3w50"], list(s)
assert s["full"]["top1"] == 1.0 and s["full"]["kl"] < 1e-9 and s["full"]["pareto"], s["full"]
assert 0 <= s["d3w50"]["top1"] < 1 and s["d3w50"]["kl"] > 0 and s["d3w50"]["layers"] == [0, 1, 4], s["d3w50"]
assert set(s["d4"]["step_ms"]) == {"1", "2"} and all(v > 0 for v in s["d4"]["step_ms"].values()), s["d4"]
assert s["d4"]["emulated_ms"]["1"] < s["full"]["emulated_ms"]["1"], (s["d4"], s["full"])
PY
grep -q "<svg" "$tmp/cat.svg" || fail "no Pareto SVG"
expect_error "--space: subnet 'q1': unknown part 'q'" "$strata" subnets --model "$m" --space full,q1
expect_error "--batches: '0' is not a batch size" "$strata" subnets --model "$m" --batches 0
expect_error "--subnet: subnet 'd3x': unknown part 'x'" "$strata" generate --model "$m" --subnet d3x
printf '{"subnets": [{"spec": "d9"}]}' > "$tmp/badcat.json"
expect_error "--subnet-catalogue: $tmp/badcat.json: subnets[0]: subnet 'd9': depth 9" "$strata" serve --model "$m" \
  --subnet-catalogue "$tmp/badcat.json" --port 0
"$strata" serve --model "$m" --port 0 --threads 1 --subnet-catalogue "$tmp/cat.json" > "$tmp/subserve.log" 2>&1 &
ssrv=$!
sport=$(serve_port "$tmp/subserve.log" 300)
[ -n "$sport" ] || { kill "$ssrv"; fail "serve with a catalogue did not start: $(cat "$tmp/subserve.log")"; }
listed=$(curl -s "http://127.0.0.1:$sport/v1/models" | python3 -c '
import json, sys
d = json.load(sys.stdin)["data"]
print(" ".join(x["id"] + ":" + str(x["strata"]["profiled"]) for x in d if "parent" in x))
assert all(x["strata"]["latency_ms"] > 0 and 0 <= x["strata"]["quality"] <= 1 for x in d if "parent" in x), d')
[ "$listed" = "stories260K@d4:True stories260K@d3w50:True" ] || fail "/v1/models with a catalogue: $listed"
got=$(curl -s "http://127.0.0.1:$sport/v1/completions" -H 'content-type: application/json' \
  -d '{"model":"stories260K@d4","prompt":"Once upon a time","max_tokens":20,"temperature":0}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["text"])')
# SLO-only load: every request's subnet is the server's choice, reported per request and counted.
"$strata" bench-serve --url "http://127.0.0.1:$sport" --trace gamma --n 6 --gamma-rate 6 --max-output 4 --max-concurrency 1 \
  --slo-ms 100000 --json "$tmp/slo.json" > "$tmp/slo.out" 2>"$tmp/slo.log" || fail "bench-serve --slo-ms: $(cat "$tmp/slo.out" "$tmp/slo.log")"
grep -q "subnets chosen: full x6" "$tmp/slo.out" && grep -q "mean quality (profiled top-1 agreement) of 6 requests: 1.000" "$tmp/slo.out" ||
  fail "bench-serve --slo-ms summary: $(cat "$tmp/slo.out")"
python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); assert j["subnets"] == {"full": 6} and all(r["subnet"] == "full" for r in j["requests"]), j' \
  "$tmp/slo.json" || fail "bench-serve --slo-ms JSON: $(head -c 800 "$tmp/slo.json")"
kill -TERM "$ssrv"
wait "$ssrv" || fail "serve with a catalogue did not drain: $(cat "$tmp/subserve.log")"
want=$("$strata" generate --model "$m" --prompt "Once upon a time" --steps 20 --subnet d4 --logits "$tmp/d4.json" 2>/dev/null)
[ "Once upon a time$got" = "$want" ] || fail "stories260K@d4 over HTTP: '$got', the forward pass: '$want'"
echo "ok: subnets profiled, served with their catalogue, and generated as the forward pass does"
# Variants (INFaaS's setting): subnets written as models of their own, each with its own instances
# (scale from zero); the front door picks one for an SLO-only request, infaas-like keeping to a
# loaded one. A variant generates its subnet's text; a variant of the wrong shape, of a subnet the
# catalogue lacks or of a model not served is refused at start.
for v in d4 d3w50; do
  "$strata" convert --model "$m" --subnet "$v" --out "$tmp/v-$v" >/dev/null 2>"$tmp/conv.log" || fail "convert --subnet $v: $(cat "$tmp/conv.log")"
done
vargs=(--policy blitz --min 0 --port 0 --threads 1 --subnet-catalogue "s=$tmp/cat.json")
expect_error "model 's@d4': its shape (dim 64, 3 layers, FFN 86, 4 KV heads) is not subnet d4 of 's' (4 layers, FFN 172" \
  "$strata" serve --model "s=$m" --model "s@d4=$tmp/v-d3w50" "${vargs[@]}"
expect_error "model 's@w50': a variant is chosen by its profile, but model 's' has no subnet 'w50' in its catalogue" \
  "$strata" serve --model "s=$m" --model "s@w50=$tmp/v-d3w50" "${vargs[@]}"
expect_error "model 'x@d4': '@' names a variant (subnet SPEC of model NAME as a model of its own), but no model 'x' is served" \
  "$strata" serve --model "s=$m" --model "x@d4=$tmp/v-d4" "${vargs[@]}"
"$strata" serve --model "s=$m" --model "s@d4=$tmp/v-d4" --model "s@d3w50=$tmp/v-d3w50" "${vargs[@]}" \
  --subnet-policy infaas-like --variant-slots 1 --keep-alive-s 60 > "$tmp/varserve.log" 2>&1 &
vsrv=$!
vport=$(serve_port "$tmp/varserve.log" 300)
[ -n "$vport" ] || { kill "$vsrv"; fail "serve with variants did not start: $(cat "$tmp/varserve.log")"; }
vgot=$(curl -s "http://127.0.0.1:$vport/v1/completions" -d '{"model":"s@d4","prompt":"Once upon a time","max_tokens":20,"temperature":0}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["text"])')
sleep 0.3  # the front door sees the variant's instance within its 20 ms poll
slo_pick() {
  curl -s "http://127.0.0.1:$vport/v1/completions" -d '{"model":"s","prompt":"Once","max_tokens":5,"slo_ms":100000,"ignore_eos":true}' |
    python3 -c 'import json, sys; c = json.load(sys.stdin)["choices"][0]["strata"]; print(c["subnet"], c["served"], c["slo_feasible"])'
}
vpick=$(slo_pick)
# One slot: a request for s@d3w50 evicts the idle s@d4; SLO-only requests then keep to s@d3w50.
sleep 0.3
curl -s "http://127.0.0.1:$vport/v1/completions" -d '{"model":"s@d3w50","prompt":"Once","max_tokens":2}' >/dev/null
sleep 0.3
vpick2=$(slo_pick)
curl -s "http://127.0.0.1:$vport/metrics" > "$tmp/varmetrics.txt"
kill -TERM "$vsrv"
wait "$vsrv" || fail "serve with variants did not drain: $(cat "$tmp/varserve.log")"
[ "Once upon a time$vgot" = "$want" ] || fail "variant s@d4: '$vgot', subnet d4 of the forward pass: '$want'"
# The whole model fits the SLO and would load (slackfit, max-accuracy take it); infaas-like keeps d4.
[ "$vpick" = "d4 {'d4': 5} True" ] || fail "infaas-like over variants picked: $vpick ($(tail -5 "$tmp/varserve.log"))"
grep -q "strata scaler s@d4: .* serving #1" "$tmp/varserve.log" || fail "no instance of s@d4 started: $(cat "$tmp/varserve.log")"
grep -q "strata scaler s@d4: .* drain #1: evicted by the front door: variant s@d3w50 needs its slot" "$tmp/varserve.log" ||
  fail "s@d4 was not evicted for s@d3w50 (one slot): $(grep 'strata scaler' "$tmp/varserve.log")"
[ "$vpick2" = "d3w50 {'d3w50': 5} True" ] || fail "after the eviction infaas-like picked: $vpick2"
grep -q '^strata:variant_picks_total{model_name="s@d3w50"} 1$' "$tmp/varmetrics.txt" &&
  grep -q '^strata:variant_picks_total{model_name="s@d4"} 1$' "$tmp/varmetrics.txt" &&
  grep -qE '^strata:variant_load_seconds\{model_name="s@d4"\} [0-9.e-]+$' "$tmp/varmetrics.txt" ||
  fail "variant metrics: $(grep variant "$tmp/varmetrics.txt")"
echo "ok: variants load on demand, generate their subnet's text; infaas-like keeps to a loaded one, one slot evicts"
echo "cli: all checks passed"
