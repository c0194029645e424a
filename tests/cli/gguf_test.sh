#!/usr/bin/env bash
# GGUF input end to end: files written by ../shared/tools/peer-llamacpp/gguf_write.py (the GGUF
# v3 spec, as llama.cpp reads it) load with their own tokenizer and give the text of the same
# model from its llama2.c or safetensors files; reduced-precision GGUFs stay as stored; a broken
# file is one line of error. Usage: gguf_test.sh STRATA DATA_DIR
set -u
strata=$1 data=$2
writer="$data/../tools/peer-llamacpp/gguf_write.py"
py=/usr/bin/python3
fail() { echo "FAIL: $*"; exit 1; }
[ -f "$writer" ] || fail "no GGUF writer at $writer"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
s="$data/models/stories260K"
gen() { "$strata" generate --quiet "$@"; }

# stories260K: f32 is bit for bit the llama2.c model (same text); bf16 is what --weights bf16
# computes; q8_0 (its 172-wide w2 rows are written f16 by the writer, so the matrices mix types
# and are widened to f32) keeps the f32 text here.
want=$(gen --model "$s" --prompt "Once upon a time" --steps 100) || fail "generate on the llama2.c model"
want_bf16=$(gen --model "$s" --prompt "Once upon a time" --steps 100 --weights bf16) || fail "generate --weights bf16"
for dt in f32 bf16 q8_0; do
  "$py" "$writer" llama2c --model "$s/stories260K.bin" --tokenizer "$s/tok512.bin" --out "$tmp/s-$dt.gguf" \
    --dtype "$dt" >/dev/null || fail "gguf_write.py llama2c --dtype $dt"
  got=$(gen --model "$tmp/s-$dt.gguf" --prompt "Once upon a time" --steps 100) || fail "generate on s-$dt.gguf"
  expect=$want
  [ "$dt" = bf16 ] && expect=$want_bf16
  [ "$got" = "$expect" ] || fail "stories260K $dt GGUF: '$got' is not '$expect'"
  echo "ok: stories260K $dt GGUF gives the same text (tokenizer from the file)"
done
info=$("$strata" inspect --model "$tmp/s-bf16.gguf" --verify) || fail "inspect --verify on a GGUF: $info"
echo "$info" | grep -q "(gguf)" || fail "inspect does not say gguf: $info"
echo "$info" | grep -q "weights=bf16" || fail "a bf16 GGUF is not held as bf16: $info"
echo "$info" | grep -q "verified" || fail "inspect --verify: $info"

# A random Hugging Face model (rotate_half; the writer permutes q/k back as llama.cpp's converter
# does): the GGUF's first 24 greedy ids are the safetensors model's, in f32 and in bf16 (ids, not
# text: the two synthetic vocabularies spell the byte tokens differently); a Q8_0 GGUF of it is
# held as q8.
"$strata" gen-model --out "$tmp/hf" --dim 128 --hidden 256 --layers 2 --heads 4 --kv-heads 2 --vocab 512 \
  --seq-len 128 --dtype f32 >/dev/null || fail "gen-model"
"$py" "$writer" synth-tok --vocab 512 --out "$tmp/synth.bin" >/dev/null || fail "gguf_write.py synth-tok"
for dt in f32 bf16; do
  "$py" "$writer" hf --model "$tmp/hf" --out "$tmp/hf-$dt.gguf" --dtype "$dt" >/dev/null || fail "gguf_write.py hf --dtype $dt"
  # The writer keeps norms f32 and rounds matrices to nearest even: what --weights bf16 holds.
  gen --model "$tmp/hf" --weights "$dt" --tokenizer "$tmp/synth.bin" --prompt-tokens 1,17,42 --steps 24 \
    --logits "$tmp/a.json" 2>/dev/null >&2 || fail "generate on the safetensors model (--weights $dt)"
  gen --model "$tmp/hf-$dt.gguf" --prompt-tokens 1,17,42 --steps 24 --logits "$tmp/b.json" 2>/dev/null >&2 ||
    fail "generate on hf-$dt.gguf"
  # The permuted q/k rows sum the attention scores in another order, so the bits may differ: the
  # first position's logits agree to 1e-3 and, in f32, all 24 greedy ids agree (bf16's near-tied
  # logits on a random model may part later).
  cmp=$("$py" - "$tmp/a.json" "$tmp/b.json" "$dt" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
d = max(abs(x - y) for x, y in zip(a["positions"][0]["logits"], b["positions"][0]["logits"]))
same = a["tokens"] == b["tokens"]
print("first-position max |dlogit| %.2g, ids %s" % (d, "equal" if same else "differ"))
sys.exit(0 if d < 1e-3 and (same or sys.argv[3] != "f32") else 1)
PY
) || fail "random model $dt: safetensors vs GGUF: $cmp"
  echo "ok: random HF model $dt: GGUF vs safetensors: $cmp"
done
"$py" "$writer" hf --model "$tmp/hf" --out "$tmp/hf-q8.gguf" --dtype q8_0 >/dev/null || fail "gguf_write.py hf --dtype q8_0"
info=$("$strata" inspect --model "$tmp/hf-q8.gguf") || fail "inspect hf-q8.gguf"
echo "$info" | grep -q "weights=q8" || fail "a Q8_0 GGUF is not held as q8: $info"
gen --model "$tmp/hf-q8.gguf" --prompt-tokens 1,17,42 --steps 8 >/dev/null || fail "generate on a Q8_0 GGUF"
echo "ok: a Q8_0 GGUF is held and computed as q8"

# A broken file: one line, exit 1, no crash.
head -c 300000 "$tmp/s-f32.gguf" > "$tmp/cut.gguf"
out=$("$strata" generate --model "$tmp/cut.gguf" --prompt "x" --steps 4 2>&1)
rc=$?
[ "$rc" = 1 ] || fail "a truncated GGUF: exit $rc ($out)"
echo "$out" | grep -q "cut.gguf: tensor '.*'.*beyond the end of the file" || fail "a truncated GGUF: $out"
echo "ok: a truncated GGUF: $out"
echo "PASS"
