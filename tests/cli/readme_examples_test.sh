#!/usr/bin/env bash
# Every example command in the README's sh blocks keeps working. Each `build/bin/...` line (with
# its continuation lines) is checked: its options exist in `strata CMD --help`; then it runs,
# bounded: /tmp paths go to a temp dir, replays and autoscale runs are cut to a few requests,
# serve starts on a free port and is drained by SIGTERM; bench-serve runs against a front door
# of its own. Commands that need a running cluster on
# fixed ports (node, cluster view/multicast/drain, serve --controller) are only checked for their
# options.
# Usage: readme_examples_test.sh BUILD_BIN_DIR DATA_DIR README
set -euo pipefail
bin=$1
data=$2
readme=$3
tmp=$(mktemp -d)
export STRATA_DATA_DIR=$data  # the demo and app files find their default model from anywhere
srv=""
trap 'rm -rf "$tmp"; [ -z "$srv" ] || kill "$srv" 2>/dev/null || true' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# One example per line: continuation lines joined, comments and a trailing '&' dropped.
awk '/^```sh/ { on = 1; next } /^```/ { on = 0; next }
     on { line = line $0; if (sub(/\\$/, "", line)) next; print line; line = "" }' "$readme" |
  sed -E 's/[[:space:]]+#.*$//; s/[[:space:]]*&[[:space:]]*$//' | grep -E '^build/bin/' > "$tmp/examples" || true
n=$(wc -l < "$tmp/examples")
[ "$n" -ge 10 ] || fail "found only $n example commands in $readme"

ran=0 checked=0
while IFS= read -r line; do
  line=${line//\/tmp\//$tmp\/}  # first: the data and build paths may lie under /tmp themselves
  line=${line//..\/shared\/data/$data}
  line=${line//build\/bin\//$bin\/}
  eval "words=($line)"  # the README's quoting, as a shell reads it
  prog=$(basename "${words[0]}")
  cmd=${words[1]:-}
  sub=""
  [ "$cmd" = cluster ] && sub=${words[2]:-}
  if [ "$prog" = strata ] && [ -n "$cmd" ] && [ "$cmd" != help ]; then
    help=$("${words[0]}" $cmd $sub --help) || fail "no help for: strata $cmd $sub"
    for w in "${words[@]}"; do
      if [[ $w == --* ]]; then
        grep -qE -- "^  ${w%%=*}( |$)" <<<"$help" || fail "README example uses $w, which 'strata $cmd $sub' does not take: $line"
      fi
    done
    checked=$((checked + 1))
  fi
  # serve --controller needs a running cluster too.
  [ "$cmd" = serve ] && [[ " ${words[*]} " == *" --controller "* ]] && continue
  case "$prog:$cmd:$sub" in
    strata:node:* | strata:cluster:view | strata:cluster:multicast | strata:cluster:drain) continue ;;
    strata:replay:* | strata:autoscale:*)
      words+=(--max-requests 6 --duration 5) ;;
    strata:bench-serve:*)  # against a front door of its own, whatever URL the example names
      "$bin/strata" serve --model "$data/models/stories260K" --port 0 > "$tmp/bench-serve.log" 2>&1 &
      srv=$!
      port=""
      for _ in $(seq 300); do
        port=$(sed -n 's|.*http://127.0.0.1:\([0-9]*\).*|\1|p' "$tmp/bench-serve.log")
        [ -n "$port" ] && break
        sleep 0.1
      done
      [ -n "$port" ] || fail "no front door for the bench-serve example: $(cat "$tmp/bench-serve.log")"
      for i in "${!words[@]}"; do [ "${words[$i]}" = --url ] && words[$((i + 1))]="http://127.0.0.1:$port"; done
      words+=(--max-requests 6 --duration 5)
      out=$(cd "$tmp" && timeout 300 "${words[@]}" 2>&1) || fail "README example failed: $line -- output: $(tail -5 <<<"$out")"
      kill -TERM "$srv"
      wait "$srv" || fail "the bench-serve example's front door did not drain: $(cat "$tmp/bench-serve.log")"
      srv=""
      ran=$((ran + 1))
      continue ;;
    strata:serve:*)
      "${words[@]}" --port 0 > "$tmp/serve.log" 2>&1 &
      srv=$!
      for _ in $(seq 300); do grep -q "^serving " "$tmp/serve.log" && break; sleep 0.1; done
      grep -q "^serving " "$tmp/serve.log" || fail "serve example did not come up: $(cat "$tmp/serve.log")"
      kill -TERM "$srv"
      wait "$srv" || fail "serve example did not drain cleanly: $(cat "$tmp/serve.log")"
      srv=""
      ran=$((ran + 1))
      continue ;;
  esac
  if ! out=$(cd "$tmp" && timeout 300 "${words[@]}" 2>&1); then
    fail "README example failed: $line -- output: $(tail -5 <<<"$out")"
  fi
  ran=$((ran + 1))
done < "$tmp/examples"
echo "docs: $n README examples: $checked checked against their command's options, $ran run"
