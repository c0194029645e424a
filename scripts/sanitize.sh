#!/usr/bin/env bash
# The sanitizer build: everything compiled with clang, AddressSanitizer and UBSan (and libFuzzer
# coverage) into build-san/, then the unit, actor, HTTP and CLI tests run there, and every fuzz
# target runs bounded (STRATA_FUZZ_SECONDS each, default 25). Called by scripts/test.sh;
# extra arguments go to ctest. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
for p in clang-14 libclang-rt-14-dev; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends clang-14 libclang-rt-14-dev >/dev/null
    break
  fi
done
cmake -S . -B build-san -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DSTRATA_FUZZ=ON -DSTRATA_CUDA=OFF -DSTRATA_NATIVE=ON -DSTRATA_FUZZ_SECONDS="${STRATA_FUZZ_SECONDS:-25}" >/dev/null
cmake --build build-san -j"$(nproc)"
# Leak checking stays off: CAF keeps its actor system's singletons until exit by design.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1
# null is recoverable only so that tests/ubsan.supp can exempt one CAF idiom; halt_on_error
# still stops at any other report.
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$PWD/tests/ubsan.supp
ctest --test-dir build-san --output-on-failure -j2 --timeout 900 -L "unit|actors|http|cli|fuzz" "$@"
