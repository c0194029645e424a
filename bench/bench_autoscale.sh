#!/usr/bin/env bash
# All scaling policies on the same trace in one run, reported as ratios to stop-the-world
# (p99 TTFT) plus decision -> serving and decision -> full local times.
#
#   bench/bench_autoscale.sh [build/bin/strata]
#
# 1. Across node processes (the real system): a controller node holding the one host copy and 5
#    more `strata node` processes; instances live in the nodes, parameters are multicast over UCX
#    tcp with every node's egress paced to 1 MB/s (so the 3.5 MB model takes ~3.5 s to load, as a
#    large model would on a real network), activations cross processes. For all-cache (only) every
#    node holds a host copy and loads from it at 2 MB/s (host-to-device is 2x the network).
# 2. In-process instances with an emulated device and link profile (parameter bytes per layer,
#    GB/s per path, ms per layer and per row); the math is the real model's. Loading a layer takes
#    2000 MB / GB/s: 0.16 s over the network, 1 s from a remote host copy, so loading spans much
#    of the burst.
set -euo pipefail
cd "$(dirname "$0")/.."
strata=${1:-build/bin/strata}
data=../shared/data
model=$(mktemp -d)/m24
trap 'rm -rf "$(dirname "$model")"' EXIT
"$strata" gen-model --out "$model" --dim 64 --hidden 128 --layers 24 --heads 4 --kv-heads 2 --vocab 512 \
  --seq-len 512 --dtype f32 >/dev/null
echo "### across node processes: bursty gamma arrivals (rate 8/s, burstiness 0.3, 200 requests), random 24-layer model (3.5 MB), links paced to 1 MB/s, device 1 ms/layer + 0.05 ms/row"
"$strata" autoscale --model "$model" --trace gamma --n 200 --gamma-rate 8 --burstiness 0.3 --threads 1 --max 6 \
  --max-prompt 64 --device-layer-ms 1 --device-row-ms 0.05 --nodes 5 --link-mbs 1 --chunk-kb 32 \
  --policies blitz,lambda-pipe,all-cache,stop-the-world | grep -vE '^ +t=|^ +[0-9.]+ s  '
echo
profile=(--threads 1 --layer-mb 2000 --globals-mb 1000 --max 6 --max-prompt 64
         --policies blitz,lambda-pipe,all-cache,stop-the-world,has-gpu)
echo "### Azure LLM code trace, the burst at 845-870 s, stories260K (5 layers), device 4 ms/layer + 0.2 ms/row"
"$strata" autoscale --model "$data/models/stories260K" --trace "$data/traces/AzureLLMInferenceTrace_code.csv" \
  --start 845 --duration 25 --max-requests 1000 --device-layer-ms 4 --device-row-ms 0.2 "${profile[@]}" \
  | grep -vE '^ +t=|^ +[0-9.]+ s  '
echo
echo "### bursty gamma arrivals (rate 8/s, burstiness 0.3, 200 requests), random 24-layer model, device 1 ms/layer + 0.05 ms/row"
"$strata" autoscale --model "$model" --trace gamma --n 200 --gamma-rate 8 --burstiness 0.3 \
  --device-layer-ms 1 --device-row-ms 0.05 "${profile[@]}" | grep -vE '^ +t=|^ +[0-9.]+ s  '
