#!/usr/bin/env bash
# Starts `strata serve` with an API key on a free port and runs the official openai npm client
# against it (openai_client_test.mjs). The client package is installed by scripts/setup.sh
# (npm install in tests/client); without Node.js the test is skipped (exit 77). Arguments after
# DATA_DIR go to serve (e.g. --nodes 2: the instances on node processes behind the front door).
# usage: openai_client_test.sh STRATA_BIN DATA_DIR [SERVE_ARGS...]
set -uo pipefail
strata=$1
data=$2
shift 2
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../serve_port.sh"
if ! command -v node >/dev/null || [ ! -d "$here/node_modules/openai" ]; then
  echo "SKIP: Node.js or the openai package is missing (scripts/setup.sh installs them)"
  exit 77
fi
tmp=$(mktemp -d)
key="sk-test-$$"
"$strata" serve --model "$data/models/stories260K" --port 0 --threads 1 --api-key "$key" "$@" >"$tmp/serve.log" 2>&1 &
srv=$!
trap 'kill -KILL $srv 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
port=$(serve_port "$tmp/serve.log" 600)
[ -n "$port" ] || { echo "FAIL: the server did not start"; cat "$tmp/serve.log"; exit 1; }
# Ready once an instance serves (at once for a fixed pipeline; an autoscaled one starts its first).
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
# The prompt's token ids, as the server's tokenizer encodes it (BOS first).
ids=$("$strata" generate --model "$data/models/stories260K" --prompt "Once upon a time" --steps 1 --logits "$tmp/l.json" >/dev/null &&
  sed -n 's/.*"prompt_tokens": \[\([0-9, ]*\)\].*/\1/p' "$tmp/l.json" | tr -d ' ')
[ -n "$ids" ] || { echo "FAIL: no token ids for the prompt"; exit 1; }
node "$here/openai_client_test.mjs" "http://127.0.0.1:$port/v1" "$key" "$ids"
