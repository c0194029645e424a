#!/usr/bin/env bash
# Builds everything and runs every test (unit, actors, cli; gpu tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j2 --timeout 600 "$@"
