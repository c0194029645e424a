#!/usr/bin/env bash
# Seed corpora for the fuzz targets, from the real files in DATA (../shared/data), the committed
# hand-written seeds, a tiny random model written by STRATA and well-formed messages written by
# the wire and messages targets. Usage: seeds.sh OUT DATA SEEDS STRATA FUZZ_WIRE FUZZ_MESSAGES
set -euo pipefail
out=$1 data=$2 committed=$3 strata=$4 fuzz_wire=$5 fuzz_messages=$6
rm -rf "$out"
mkdir -p "$out"/{llama2c,tokenizer,safetensors,hf,gguf,toml,trace,openai,wire,messages}
m=$data/models/stories260K
cp "$m/stories260K.bin" "$out/llama2c/"
head -c 4096 "$m/stories260K.bin" > "$out/llama2c/head.bin"
sep=$'\n--8<--\n'
{ printf 'Once upon a time, there was a little girl named Lily.%s' "$sep"; cat "$m/tok512.bin"; } > "$out/tokenizer/tok512"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$strata" gen-model --out "$tmp/hf" --dim 16 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --vocab 259 --seq-len 16 \
  --dtype bf16 >/dev/null
cp "$tmp/hf/model.safetensors" "$out/safetensors/"
{ cat "$tmp/hf/config.json"; printf '%s' "$sep"; printf '%s' "$sep"; cat "$tmp/hf/model.safetensors"; } > "$out/hf/one-file"
# A q8 safetensors file too (U8 blocks under strata_weights = q8).
"$strata" convert --model "$tmp/hf" --out "$tmp/hf-q8" --dtype q8 >/dev/null
{ cat "$tmp/hf-q8/config.json"; printf '%s' "$sep"; printf '%s' "$sep"; cat "$tmp/hf-q8/model.safetensors"; } > "$out/hf/q8"
# GGUFs from the shared writer: the tiny random model (its synthetic vocabulary) in f32 and q8_0.
writer="$data/../tools/peer-llamacpp/gguf_write.py"
for dt in f32 q8_0; do
  /usr/bin/python3 "$writer" hf --model "$tmp/hf" --out "$out/gguf/tiny-$dt.gguf" --dtype "$dt" >/dev/null
done
cp "$(dirname "$0")"/../../apps/topologies/*.toml "$out/toml/" 2>/dev/null || true
cp "$committed"/toml/* "$out/toml/" 2>/dev/null || true
for f in "$data"/traces/*.csv "$data"/traces/*.jsonl; do head -n 40 "$f" > "$out/trace/$(basename "$f")"; done
cp "$committed"/openai/* "$out/openai/"
"$strata" inspect --model "$tmp/hf" --write "$out/wire/manifest.stmf" >/dev/null
STRATA_FUZZ_SEED_OUT="$out/wire" "$fuzz_wire" >/dev/null 2>&1
STRATA_FUZZ_SEED_OUT="$out/messages" "$fuzz_messages" >/dev/null 2>&1
echo "seeds: $(find "$out" -type f | wc -l) files in $out"
