#!/usr/bin/env bash
# strata bench-serve against real endpoints: Strata's front door (every streamed request
# accounted for, token counts equal to what was asked, a full queue's 429s reported as failures
# with the server's reason) and a hostile server (a stream of non-JSON, a response that never
# comes), plus bad URLs. Results are read from --json.
# usage: bench_serve_test.sh STRATA_BIN DATA_DIR
set -uo pipefail
strata=$1
data=$2
m="$data/models/stories260K"
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/../serve_port.sh"
expect_error() {  # expect_error "needle" bench-serve-args...: exit 1 within 30 s, saying needle
  local needle=$1; shift
  local rc=0
  out=$(timeout 30 "$strata" bench-serve "$@" 2>&1) || rc=$?
  [ "$rc" -eq 1 ] || fail "expected exit status 1, got $rc from: bench-serve $* -- output: $out"
  grep -qF -- "$needle" <<<"$out" || fail "expected '$needle' from: bench-serve $* -- got: $out"
}
jq_py() { python3 -c "import json, sys; j = json.load(open(sys.argv[1])); $2" "$1"; }

expect_error "bench-serve needs --url URL and --trace FILE|gamma" --trace gamma
expect_error "https is not supported" --url https://127.0.0.1:1 --trace gamma
expect_error "bad port '99999'" --url http://127.0.0.1:99999 --trace gamma
expect_error "must start with http://" --url 127.0.0.1:8000 --trace gamma
dead=$(free_port)
expect_error "connect to 127.0.0.1:$dead" --url "http://127.0.0.1:$dead" --trace gamma

"$strata" serve --model "$m" --port 0 --threads 1 --max-running 2 --max-waiting 2 >"$tmp/serve.log" 2>&1 &
srv=$!
pids+=($srv)
port=$(serve_port "$tmp/serve.log" 300)
[ -n "$port" ] || fail "serve did not start"
url="http://127.0.0.1:$port"
expect_error "--model: 'nope' is not served at $url (it serves stories260K and 17 subnets of them (NAME@SPEC))" --url "$url" --trace gamma --model nope
expect_error "--model: 'other@d3' is not served" --url "$url" --trace gamma --model other@d3

# A gamma trace with at most 2 requests in flight (the server runs 2; so none waits, however slow
# the build): every request served, each with the tokens it asked for.
"$strata" bench-serve --url "$url" --trace gamma --n 24 --gamma-rate 6 --max-concurrency 2 --json "$tmp/ok.json" --svg "$tmp/ok.svg" \
  >"$tmp/ok.out" 2>"$tmp/ok.log" || fail "bench-serve failed: $(cat "$tmp/ok.out")"
grep -q "HTTP statuses: 200 x24" "$tmp/ok.out" || fail "statuses: $(cat "$tmp/ok.out")"
jq_py "$tmp/ok.json" '
s = j["summary"]; r = j["requests"]
assert s["requests"] == 24 and s["ok"] == 24, s
assert j["statuses"] == {"200": 24}, j["statuses"]
assert all(q["ok"] and q["generated"] == q["output_tokens"] and q["ttft_s"] is not None and
           0 < q["ttft_s"] <= q["e2e_s"] and q["model"] == "stories260K" for q in r), r
assert s["ttft_s"]["n"] == 24 and s["tbt_s"]["n"] > 0' || fail "results: $(head -c 2000 "$tmp/ok.json")"
grep -q "<svg" "$tmp/ok.svg" || fail "no SVG"
echo "ok: a gamma trace over HTTP, every request streamed and counted"

# Subnets as models: a listed one and one outside the listed space, each request counted under its name.
"$strata" bench-serve --url "$url" --trace gamma --n 6 --gamma-rate 6 --max-concurrency 2 --model stories260K@d3w50,stories260K@d2w10 \
  --json "$tmp/sub.json" >"$tmp/sub.out" 2>"$tmp/sub.log" || fail "bench-serve of subnets failed: $(cat "$tmp/sub.out" "$tmp/sub.log")"
jq_py "$tmp/sub.json" '
r = j["requests"]
assert [q["model"] for q in r] == ["stories260K@d3w50", "stories260K@d2w10"] * 3, r
assert all(q["ok"] and q["generated"] == q["output_tokens"] for q in r), r' || fail "subnet results: $(head -c 2000 "$tmp/sub.json")"
echo "ok: subnets named as models are benchmarked per subnet"

# A burst beyond the queue (2 running, 2 waiting): the server's 429s are failures with its reason,
# the rest are served, and the run exits 1.
rc=0
"$strata" bench-serve --url "$url" --trace gamma --n 40 --gamma-rate 2000 --max-output 120 --json "$tmp/burst.json" \
  >"$tmp/burst.out" 2>"$tmp/burst.log" || rc=$?
[ "$rc" -eq 1 ] || fail "a burst with 429s exited $rc: $(cat "$tmp/burst.out")"
jq_py "$tmp/burst.json" '
st = j["statuses"]; r = j["requests"]
assert st.get("429", 0) > 0 and st.get("200", 0) > 0 and st["200"] + st["429"] == 40, st
bad = [q for q in r if not q["ok"]]
assert len(bad) == st["429"] and all(q["error"].startswith("HTTP 429: ") for q in bad), bad[:3]
assert all(q["generated"] == q["output_tokens"] for q in r if q["ok"])' || fail "burst: $(head -c 2000 "$tmp/burst.json")"
grep -q "first failure: HTTP 429" "$tmp/burst.out" || fail "no first failure line: $(cat "$tmp/burst.out")"
echo "ok: a burst past the queue: 429s reported with the server's reason"
kill -TERM "$srv"

# A hostile endpoint: it lists a model, then streams non-JSON to the first request, an error
# event to the second, and never answers the rest. Each fails with its own reason, within the
# timeout.
hport=$(free_port)
cat >"$tmp/hostile.py" <<'PY'
import http.server, sys, time, threading
n = [0]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = b'{"object":"list","data":[{"id":"m","max_model_len":64}]}'
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        with lock:
            i = n[0]; n[0] += 1
        if i == 0:
            self.send_response(200); self.send_header("Connection", "close"); self.end_headers()
            self.wfile.write(b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: not json\n\n"); return
        if i == 1:
            self.send_response(200); self.send_header("Connection", "close"); self.end_headers()
            self.wfile.write(b"data: {\"error\":{\"message\":\"engine fell over\"}}\n\n"); return
        time.sleep(30)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$tmp/hostile.py" "$hport" &
pids+=($!)
for _ in $(seq 50); do curl -s "http://127.0.0.1:$hport/v1/models" >/dev/null && break; sleep 0.1; done
rc=0
timeout 60 "$strata" bench-serve --url "http://127.0.0.1:$hport" --trace gamma --n 4 --gamma-rate 50 --timeout-s 2 \
  --max-concurrency 1 --json "$tmp/hostile.json" >"$tmp/hostile.out" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || fail "hostile endpoint: exit $rc: $(cat "$tmp/hostile.out")"
jq_py "$tmp/hostile.json" '
r = j["requests"]
assert [q["ok"] for q in r] == [False] * 4, r
assert "an event that is not JSON" in r[0]["error"], r[0]
assert r[1]["error"] == "in the stream: engine fell over", r[1]
assert all("no complete response within 2" in q["error"] for q in r[2:]), r[2:]
assert all(q["prompt_tokens"] + q["output_tokens"] <= 64 for q in r)' || fail "hostile: $(cat "$tmp/hostile.json")"
echo "ok: a hostile endpoint: bad streams and silence fail with their reasons, within the timeout"
echo "bench-serve test passed"
