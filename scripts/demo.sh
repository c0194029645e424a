#!/usr/bin/env bash
# The main job: builds Strata, generates text from the shipped stories260K model through the
# actor pipeline (several prompts at once, throughput summary), then replays the burst of the
# Azure LLM code trace under live scaling (blitz) and stop-the-world, printing the comparison
# and writing latency/instance timelines to build/demo-*.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
data=../shared/data
build/bin/strata demo "$@"
echo
echo "== autoscaling: the Azure code trace's burst (845-870 s) under blitz vs stop-the-world"
build/bin/strata autoscale --model "$data/models/stories260K" --threads 1 \
  --trace "$data/traces/AzureLLMInferenceTrace_code.csv" --start 845 --duration 25 --max-requests 1000 \
  --max-prompt 64 --device-layer-ms 4 --device-row-ms 0.2 --layer-mb 2000 --globals-mb 1000 --max 6 \
  --policies blitz,stop-the-world --svg-prefix build/demo-
