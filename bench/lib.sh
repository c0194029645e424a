# Shared by the benchmark scripts that drive `strata serve` (sourced after `strata` is set): a
# temp folder (kept with STRATA_BENCH_KEEP=1), the processes a script started (killed on every
# way out), the emulated device, and starting/stopping a front door.
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null
  if [ -n "${STRATA_BENCH_KEEP:-}" ]; then echo "logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
. "$(dirname "${BASH_SOURCE[0]}")/../tests/serve_port.sh"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dev=(--device-layer-ms 4 --device-row-ms 0.2)
start_serve() {  # start_serve LOG serve-args...: sets srv and url once /ready answers 200
  local log=$1
  shift
  "$strata" serve --port 0 --threads 1 "$@" >"$tmp/$log" 2>&1 &
  srv=$!
  pids+=($srv)
  local port
  port=$(serve_port "$tmp/$log" 600)
  [ -n "$port" ] || { echo "serve did not start: $(tail -5 "$tmp/$log")"; exit 1; }
  url="http://127.0.0.1:$port"
  for _ in $(seq 600); do curl -sf "$url/ready" >/dev/null && return 0; sleep 0.1; done
  echo "serve never ready: $(tail -5 "$tmp/$log")"
  exit 1
}
stop_serve() { kill -TERM "$srv"; wait "$srv" || true; }
