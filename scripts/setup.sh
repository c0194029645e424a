#!/usr/bin/env bash
# Installs Strata's Debian packages when missing, then configures and builds (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(g++ cmake ninja-build libcaf-dev libucx-dev ucx-utils libflatbuffers-dev flatbuffers-compiler
      doctest-dev nlohmann-json3-dev libxxhash-dev libtomlplusplus-dev libcpp-httplib-dev libboost-dev libssl-dev pkg-config curl
      python3 python3-torch python3-numpy libopenblas0-pthread)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The official openai npm client, for the API tests (tests/client): Node.js from Debian where
# none is installed, the client from the npm registry (pinned in package-lock.json).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing nodejs npm"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -f tests/client/node_modules/openai/package.json ]; then
  echo "setup: npm install (tests/client: the openai client)"
  (cd tests/client && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The CUDA toolkit is optional; use it where it is installed even if it is not on PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
