#!/usr/bin/env bash
# A controller restarted at its address is joined again by the nodes that lost it: a node whose
# connection drops dials the controller back for a few seconds before counting it lost, and a
# node that reaches it joins as a fresh member. Usage: controller_restart_test.sh STRATA_BIN
set -u
strata=$1
. "$(dirname "$0")/lib.sh"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
controller() {
  "$strata" node --name src --listen "127.0.0.1:$port" >>"$tmp/src.log" 2>&1 &
  pid_src=$!
  pids+=($!)
  for _ in $(seq 100); do grep -q "controller listening" "$tmp/src.log" && return 0; sleep 0.1; done
  fail "the controller did not start"
}
view() { "$strata" cluster view --controller "127.0.0.1:$port" 2>&1; }

controller
"$strata" node --name a --controller "127.0.0.1:$port" --listen 127.0.0.1:0 >"$tmp/a.log" 2>&1 &
pid_a=$!
pids+=($!)
wait_view "^2 node(s)"
echo "ok: node a joined"

: >"$tmp/src.log"
kill -KILL "$pid_src"
wait "$pid_src" 2>/dev/null
controller
wait_view "^  a  "
grep -q "reconnected to the controller; joining again as a fresh member" "$tmp/a.log" || fail "a did not log its reconnection"
kill -0 "$pid_a" 2>/dev/null || fail "node a exited"
echo "ok: node a joined the restarted controller"

# A controller that does not come back: the node stops after its attempts (it hosts nothing).
kill -KILL "$pid_src"
wait "$pid_src" 2>/dev/null
for _ in $(seq 120); do kill -0 "$pid_a" 2>/dev/null || break; sleep 0.25; done
kill -0 "$pid_a" 2>/dev/null && fail "node a still runs 30 s after its controller died for good"
grep -q "controller lost" "$tmp/a.log" || fail "a did not say why it stopped"
echo "ok: without a controller to reach, node a stopped and said why"
