#!/usr/bin/env bash
# A cluster on hosts of its own without more machines: each node runs in a network namespace
# with its own address, joined to the others by veth pairs through a switch namespace, every
# link shaped by tc (delay and bandwidth). Checks, over those addresses: a mutual-TLS cluster
# forms and refuses an outsider; a multicast crosses the shaped links (it cannot beat their
# bandwidth) and arrives intact; a relay killed mid-multicast is repaired around; a killed node
# leaves the view at once and a frozen one rejoins; the HTTP front door on a host of its own
# serves a model from zero on the cluster's nodes, its greedy text the same as in one process.
# Needs root (skips otherwise, exit 77).
# usage: netns_test.sh STRATA_BIN DATA_DIR
set -uo pipefail
strata=$(realpath "$1")
data=$(realpath "$2")
tag="st$$"
if [ "$(id -u)" -ne 0 ] || ! ip netns add "$tag-probe" 2>/dev/null; then
  echo "SKIP: network namespaces need root (ip netns add failed)"
  exit 77
fi
ip netns del "$tag-probe"
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/../serve_port.sh"
extra_cleanup() { for ns in sw c a b x; do ip netns del "$tag-$ns" 2>/dev/null; done; }
in_ns() { local ns=$1; shift; ip netns exec "$tag-$ns" "$@"; }

# The switch: a bridge in a namespace of its own; each host gets 10.213.0.N and a link shaped to
# 80 Mbit/s (10 MB/s) on its side, and 2 ms where netem exists.
ip netns add "$tag-sw"
in_ns sw ip link add br0 type bridge
in_ns sw ip link set br0 up
n=1
for h in c a b x; do
  ip netns add "$tag-$h"
  ip link add "v$tag$h" type veth peer name "p$tag$h"
  ip link set "v$tag$h" netns "$tag-$h"
  ip link set "p$tag$h" netns "$tag-sw"
  in_ns sw ip link set "p$tag$h" master br0 up
  in_ns "$h" ip link set lo up
  in_ns "$h" ip addr add "10.213.0.$n/24" dev "v$tag$h"
  in_ns "$h" ip link set "v$tag$h" up
  # netem where the kernel has it (delay too), else tbf (bandwidth only).
  in_ns "$h" tc qdisc add dev "v$tag$h" root netem delay 2ms rate 80mbit limit 10000 2>/dev/null ||
    in_ns "$h" tc qdisc add dev "v$tag$h" root tbf rate 80mbit burst 64kb latency 100ms ||
    fail "tc cannot shape $h's link"
  eval "ip_$h=10.213.0.$n"
  n=$((n + 1))
done
echo "links: $(in_ns a tc qdisc show dev "v${tag}a" | head -1)"

# A model big enough that the links' bandwidth shows: about 12 MB of parameters.
"$strata" gen-model --out "$tmp/model" --dim 256 --hidden 768 --layers 4 --heads 4 --kv-heads 4 --vocab 2000 \
  --seq-len 128 --seed 3 >/dev/null || fail "gen-model"
"$strata" cluster init-certs "$tmp/certs" --names src,a,b,a2,b2 >/dev/null || fail "init-certs"
export UCX_TLS=tcp
node() {  # node HOST NAME ARGS...: a node process in host's namespace
  local h=$1 name=$2; shift 2
  # ip netns exec execs the command: $! is the node's own pid (a function in the background would
  # be a subshell, and killing it would leave the node running).
  ip netns exec "$tag-$h" "$strata" node --name "$name" --tls "$tmp/certs" "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
}
view() { in_ns x "$strata" cluster view --controller "$ip_c:7000" --tls "$tmp/certs" 2>&1; }
wait_nodes() { wait_view "^$1 node(s)"; }  # wait_nodes N: the view lists N nodes
node c src --listen "$ip_c:7000" --model "rand=$tmp/model" --model "stories260K=$data/models/stories260K"
for _ in $(seq 100); do grep -q "controller listening" "$tmp/src.log" && break; sleep 0.1; done
node a a --controller "$ip_c:7000" --listen "$ip_a:0"
node b b --controller "$ip_c:7000" --listen "$ip_b:0"
wait_nodes 3
echo "ok: a TLS cluster of three hosts ($ip_c, $ip_a, $ip_b)"

# An outsider on the network without the cluster's certificates is refused and logged.
out=$(in_ns x timeout 20 "$strata" cluster view --controller "$ip_c:7000" 2>&1) && fail "a client without --tls was served: $out"
echo "$out" | grep -q "cannot reach controller" || fail "unexpected refusal message: $out"
grep -q "refused TLS peer $ip_x" "$tmp/src.log" || fail "the controller did not log the refused peer $ip_x"
grep -q "authenticated as 'a'" "$tmp/src.log" || fail "the controller did not log member a"
echo "ok: an outsider at $ip_x is refused and logged"
# Members also talk directly (the mesh: the smaller name dials), over TLS, not only via src.
for _ in $(seq 40); do grep -q "TLS peer $ip_a:[0-9]* authenticated as 'a'" "$tmp/b.log" && break; sleep 0.25; done
grep -q "TLS peer $ip_a:[0-9]* authenticated as 'a'" "$tmp/b.log" || fail "a did not connect to b directly"
echo "ok: members a and b connected directly over TLS"

# A chain multicast src -> a -> b crosses two shaped links: at 10 MB/s per link it cannot take
# less than the model's size over that bandwidth (loopback would be ~100x faster).
mc=$(in_ns x "$strata" cluster multicast --controller "$ip_c:7000" --tls "$tmp/certs" --model rand --targets a,b \
  --plan chain --chunk-kb 256 2>&1) || fail "multicast: $mc"
echo "$mc"
mib=$(echo "$mc" | sed -n 's/.*: \([0-9.]*\) MiB to.*/\1/p' | head -1)
secs=$(echo "$mc" | awk '$1 == "b" && $2 == "yes" {print $3}')
[ -n "$secs" ] || fail "no time for target b"
awk -v s="$secs" -v m="$mib" 'BEGIN { exit !(s >= 0.8 * m * 1.048576 / 10) }' ||
  fail "b received $mib MiB in $secs s: faster than the 10 MB/s links allow (did it bypass them?)"
echo "ok: multicast of $mib MiB over the shaped links to b in $secs s"

# A relay killed mid-multicast: in the chain src -> a2 -> b2 (src the one source: a and b, which
# hold the model now, only as a last resort), a2 dies; b2 is adopted by a2's parent and completes.
relay_killed() {  # relay_killed RELAY LEAF: multicast src -> RELAY -> LEAF, kill RELAY mid-way
  local r=$1 l=$2
  node a "$r" --controller "$ip_c:7000" --listen "$ip_a:0"
  node b "$l" --controller "$ip_c:7000" --listen "$ip_b:0"
  wait_nodes 5
  in_ns x "$strata" cluster multicast --controller "$ip_c:7000" --tls "$tmp/certs" --model rand --targets "$r,$l" \
    --plan chain --chunk-kb 64 --max-sources 1 --busy a,b >"$tmp/mc2.out" 2>&1 &
  mc2=$!
  # Mid-way: once the relay's host has received 2 MB of the 15 (its link's counter; a client
  # process starts slowly on a busy machine, so a fixed delay once killed the relay before the
  # multicast reached the controller, and polling the view, a process per poll, could miss it).
  local rpid host=a
  eval "rpid=\$pid_$r"
  [ "$r" = a2 ] || host=b
  rx() { in_ns "$host" cat "/sys/class/net/v$tag$host/statistics/rx_bytes"; }
  local base seen=""
  base=$(rx)
  for _ in $(seq 1500); do
    [ $(($(rx) - base)) -gt 2000000 ] && { seen=1; break; }
    sleep 0.02
  done
  [ -n "$seen" ] || fail "$r's host never received 2 MB: $(cat "$tmp/mc2.out")"
  kill -KILL "$rpid"
  wait "$rpid" 2>/dev/null
  wait "$mc2" || true
  grep -v "re-fetches chunk" "$tmp/mc2.out"
}
relay_killed a2 b2
grep -E "^  b2 +yes" "$tmp/mc2.out" >/dev/null || fail "b2 did not complete after its relay a2 was killed"
echo "ok: relay a2 killed mid-multicast; b2 completed"
wait_nodes 4

# Killed: gone from the view at once. Frozen past the heartbeat timeout: dropped, then rejoins.
t0=$(date +%s.%N)
{ kill -KILL "$pid_b2"; wait "$pid_b2"; } 2>/dev/null
wait_nodes 3
echo "ok: a killed node left the view after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s"
kill -STOP "$pid_b"
wait_nodes 2
kill -CONT "$pid_b"
wait_nodes 3
grep -q "rejoining" "$tmp/b.log" || fail "b did not say it rejoined"
echo "ok: a frozen node was dropped and rejoined"

# The front door on host x, attached to the TLS cluster: no instance until a request comes (min
# 0), then one on a, stories260K's layers multicast from src over the shaped link; greedy text
# through HTTP equals the same generation in one process.
# ip netns exec, not in_ns: $! must be serve's own pid (see node()).
ip netns exec "$tag-x" "$strata" serve --model "$data/models/stories260K" --controller "$ip_c:7000" --tls "$tmp/certs" --min 0 \
  --placement a,b --port 0 --threads 1 >"$tmp/serve.log" 2>&1 &
pids+=($!)
port=$(serve_port "$tmp/serve.log" 300)
[ -n "$port" ] || fail "serve on host x did not start"
got=$(in_ns x curl -s --max-time 60 "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' \
  -d '{"model":"stories260K","prompt":"Once upon a time","max_tokens":24,"temperature":0}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["text"])') || fail "no completion from the cluster"
want=$("$strata" generate --model "$data/models/stories260K" --prompt "Once upon a time" --steps 24 --quiet 2>/dev/null)
[ "Once upon a time$got" = "$want" ] || fail "over the cluster: '$got', in one process: '$want'"
grep -q "scale-out.* on a, loading from" "$tmp/serve.log" || fail "no scale-out onto a: $(grep 'strata scaler' "$tmp/serve.log")"
echo "ok: the front door on $ip_x served from zero on the cluster's nodes, the same text as in one process"
echo "netns cluster test passed"
