# Shared by the multi-process CLI tests (sourced): a temp folder for logs, the processes a test
# started (killed on every way out), failure with every log's tail, and waiting on the cluster
# view, a free port. A test defines view() (how it asks for the view) and may define extra_cleanup().
tmp=$(mktemp -d)
pids=()
extra_cleanup() { :; }
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  extra_cleanup
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$tmp"/*.log; do echo "--- $f"; tail -20 "$f"; done
  exit 1
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_view() {  # wait_view PATTERN: the view matches within 20 s
  for _ in $(seq 80); do view | grep -q "$1" && return 0; sleep 0.25; done
  fail "the view never matched '$1': $(view)"
}
