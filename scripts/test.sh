#!/usr/bin/env bash
# Builds everything and runs every test (unit, actors, http, cli, multi-process, bench smoke; gpu
# tests skip without a GPU), then the sanitizer build's tests and the bounded fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j2 --timeout 600 "$@"
scripts/sanitize.sh
