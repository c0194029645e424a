#!/usr/bin/env bash
# tools/supernet/train_supernet.py end to end at a toy size, checked by the engine:
# - with no training steps the output is the base model with its FFN neurons and KV head groups
#   reordered: the same function, so Strata's greedy text is the base model's and the full
#   subnet agrees with the base model everywhere (strata subnets --reference);
# - the side file's drop order is what Strata's LayerSelect uses (d3 keeps the layers it names);
# - a few steps of training change the weights and the report says before/after per subnet;
# - bad inputs are clear errors.
# Usage: supernet_test.sh STRATA_BIN DATA_DIR
set -u
strata=$1
data=$2
. "$(dirname "$0")/lib.sh"
py=/usr/bin/python3
train="$(cd "$(dirname "$0")/../.." && pwd)/tools/supernet/train_supernet.py"
base="$data/models/stories260K/stories260K.bin"
small=(--batch 4 --length 32 --train-samples 16 --held-out 4 --threads 1)

"$py" "$train" --model "$base" --out "$tmp/ordered.bin" --steps 0 "${small[@]}" >"$tmp/ordered.out" 2>"$tmp/ordered.log" ||
  fail "train_supernet --steps 0: $(tail -3 "$tmp/ordered.log")"
[ -s "$tmp/ordered.supernet.json" ] || fail "no side file ordered.supernet.json"
[ -s "$tmp/tok512.bin" ] || fail "the base model's tokenizer was not copied beside the supernet"
cmp -s "$base" "$tmp/ordered.bin" && fail "the reordered model is byte-identical to the base (no permutation applied)"
want=$("$strata" generate --model "$base" --prompt "Once upon a time" --steps 40 --quiet 2>/dev/null)
got=$("$strata" generate --model "$tmp/ordered.bin" --prompt "Once upon a time" --steps 40 --quiet 2>/dev/null)
[ "$got" = "$want" ] || fail "reordered model's greedy text differs: '$got' vs '$want'"
echo "ok: the importance-ordered model computes the base model's function"

"$strata" subnets --model "$tmp/ordered.bin" --reference "$base" --space full,d3 --batches 1 --steps 1 \
  --samples 2 --sample-length 48 --json "$tmp/cat.json" >"$tmp/subnets.out" 2>"$tmp/subnets.log" ||
  fail "strata subnets --reference: $(cat "$tmp/subnets.log")"
awk '$1 == "full" { exit !($7 == "1.000") }' "$tmp/subnets.out" || fail "full subnet of the reordered model does not agree: $(cat "$tmp/subnets.out")"
order=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["drop_order"])' "$tmp/ordered.supernet.json")
kept=$("$py" -c 'import json, sys; d = json.load(open(sys.argv[1]))["drop_order"]; print(",".join(str(l) for l in range(5) if l not in d[:2]))' "$tmp/ordered.supernet.json")
awk -v k="$kept" '$1 == "d3" { exit !($2 == k) }' "$tmp/subnets.out" || fail "d3 does not keep layers $kept (drop order $order): $(cat "$tmp/subnets.out")"
grep -q '"reference": "stories260K"' "$tmp/cat.json" || fail "the catalogue does not name its reference"
echo "ok: the side file's drop order $order decides LayerSelect (d3 keeps $kept); quality measured against the base"

"$py" "$train" --model "$base" --out "$tmp/trained.bin" --steps 3 "${small[@]}" >"$tmp/trained.out" 2>"$tmp/trained.log" ||
  fail "train_supernet --steps 3: $(tail -3 "$tmp/trained.log")"
cmp -s "$tmp/ordered.bin" "$tmp/trained.bin" && fail "training left the weights unchanged"
grep -qE '^w50 +[0-9.]+ +[0-9.]+ +[0-9.]+$' "$tmp/trained.out" || fail "no before/after row for w50: $(cat "$tmp/trained.out")"
"$strata" generate --model "$tmp/trained.bin" --subnet d4w75 --steps 8 --quiet >/dev/null 2>"$tmp/gen.log" ||
  fail "the trained supernet does not serve a subnet: $(cat "$tmp/gen.log")"
echo "ok: three training steps change the weights; the report lists each subnet before and after"

# A space of its own: only those subnets are trained and reported.
"$py" "$train" --model "$base" --out "$tmp/space.bin" --steps 2 --space full,d4,w50 "${small[@]}" >"$tmp/space.out" 2>"$tmp/space.log" ||
  fail "train_supernet --space: $(tail -3 "$tmp/space.log")"
rows=$(awk 'NR > 1 && $1 != "wrote" { printf "%s ", $1 }' "$tmp/space.out")
[ "$rows" = "full d4 w50 " ] || fail "--space full,d4,w50 reported: $rows"
grep -q '"space": \[' "$tmp/space.supernet.json" || fail "the side file does not record the space"
for bad in "d4,w50:lacks 'full'" "full,d9:subnet 'd9' is outside depth 1..5" "full,x2:bad subnet spec 'x2'"; do
  "$py" "$train" --model "$base" --out "$tmp/x.bin" --steps 0 --space "${bad%%:*}" "${small[@]}" >/dev/null 2>"$tmp/bad.log" &&
    fail "--space ${bad%%:*} was accepted"
  grep -q "${bad#*:}" "$tmp/bad.log" || fail "--space ${bad%%:*}: $(tail -1 "$tmp/bad.log")"
done
echo "ok: --space trains and reports only its subnets; bad spaces are clear errors"

# The per-subnet norm gains probe: one row per subnet of the side file's space, shared vs own.
probe="$(dirname "$train")/probe_norms.py"
"$py" "$probe" --base "$base" --supernet "$tmp/space.bin" --steps 2 --batch 4 --length 32 --train-samples 8 \
  --held-out 4 --threads 1 >"$tmp/probe.out" 2>"$tmp/probe.log" || fail "probe_norms: $(tail -3 "$tmp/probe.log")"
rows=$(awk '$2 ~ /^[0-9.]+$/ && $3 ~ /^[0-9.]+$/ && $4 ~ /^[-+][0-9.]+$/ { printf "%s ", $1 }' "$tmp/probe.out")
[ "$rows" = "full d4 w50 " ] || fail "probe_norms rows: $(cat "$tmp/probe.out")"
"$py" "$probe" --base "$base" --supernet "$tmp/bad-none.bin" >/dev/null 2>"$tmp/probe.log" && fail "probe_norms without a supernet file"
grep -q "bad-none.bin: cannot read (No such file or directory)" "$tmp/probe.log" || fail "probe_norms, no file: $(tail -1 "$tmp/probe.log")"
"$py" "$probe" --base "$base" --supernet "$tmp/ordered.bin" --steps 0 --held-out 1 --train-samples 16 --batch 1 --length 8 \
  >/dev/null 2>"$tmp/probe.log" || fail "probe_norms on the ordered model: $(tail -2 "$tmp/probe.log")"
cp "$tmp/ordered.bin" "$tmp/noside.bin"
"$py" "$probe" --base "$base" --supernet "$tmp/noside.bin" >/dev/null 2>"$tmp/probe.log" && fail "probe_norms without a side file"
grep -q "noside.supernet.json: not train_supernet.py's side file" "$tmp/probe.log" || fail "probe_norms, no side file: $(tail -1 "$tmp/probe.log")"
echo "ok: probe_norms reports shared vs own norm gains per subnet; a missing side file is a clear error"

# Bad inputs: a truncated checkpoint, a malformed side file.
head -c 1000 "$base" >"$tmp/cut.bin"
"$py" "$train" --model "$tmp/cut.bin" --out "$tmp/x.bin" --steps 0 "${small[@]}" >/dev/null 2>"$tmp/cut.log" &&
  fail "a truncated checkpoint was accepted"
grep -q "truncated\|size mismatch" "$tmp/cut.log" || fail "truncated checkpoint: $(tail -2 "$tmp/cut.log")"
cp "$tmp/ordered.bin" "$tmp/bad.bin"
echo '{"drop_order": [2, 2]}' >"$tmp/bad.supernet.json"
out=$("$strata" generate --model "$tmp/bad.bin" --steps 2 2>&1) && fail "a drop order naming a layer twice was accepted"
grep -q "bad.supernet.json: drop_order names layer 2 twice" <<<"$out" || fail "bad side file: $out"
echo '{"drop_order": [9]}' >"$tmp/bad.supernet.json"
out=$("$strata" generate --model "$tmp/bad.bin" --steps 2 2>&1) && fail "a drop order naming layer 9 was accepted"
grep -q "drop_order names layer 9, outside \[0, 5)" <<<"$out" || fail "bad side file: $out"
echo "ok: bad checkpoints and side files are clear errors"
echo "supernet tool test passed"
