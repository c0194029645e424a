#!/usr/bin/env bash
# The main job: builds Strata, generates text from the shipped stories260K model through the
# actor pipeline (several prompts at once, throughput summary), then starts a cluster of node
# processes on this machine (one holds the host copy; parameters move over UCX with each node's
# egress paced to 0.25 MB/s, so the model loads as slowly as a large one would) and replays the
# burst of the Azure LLM code trace under live scaling (blitz) and stop-the-world, printing the
# comparison and writing latency/instance timelines to build/demo-*.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
data=../shared/data
build/bin/strata demo "$@"
echo
echo "== autoscaling across node processes: the Azure code trace's burst (845-870 s), blitz vs stop-the-world"
build/bin/strata autoscale --model "$data/models/stories260K" --threads 1 \
  --trace "$data/traces/AzureLLMInferenceTrace_code.csv" --start 845 --duration 25 --max-requests 1000 \
  --max-prompt 64 --device-layer-ms 4 --device-row-ms 0.2 --max 6 \
  --nodes 5 --link-mbs 0.25 --chunk-kb 32 \
  --policies blitz,stop-the-world --svg-prefix build/demo-
