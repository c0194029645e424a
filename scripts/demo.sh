#!/usr/bin/env bash
# The main job: builds Strata and generates text from the shipped stories260K model through the
# actor pipeline, several prompts at once, with a throughput summary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec build/bin/strata demo "$@"
