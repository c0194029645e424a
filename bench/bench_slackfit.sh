#!/usr/bin/env bash
# SlackFit against fixed subnets and the other subnet policies, over HTTP (issue 18's evaluation).
#
#   bench/bench_slackfit.sh [build/bin/strata] [quick|scaling|sweep]
#
# The model's subnet catalogue is profiled on an emulated device (4 ms per layer and step, 0.2 ms
# per row and layer, charged by the share of a layer a subnet runs), then `strata serve` (one
# instance on that device, EDF, predictions from the emulated latencies) serves each trace once
# per subnet policy; every request carries only an SLO (`bench-serve --slo-ms`: the TTFT SLO),
# so the policy picks its subnet. Per trace and policy: SLO attainment and the mean profiled
# quality (top-1 agreement) of what was served. Then, against the front of the fixed subnets
# (linear between neighbours by attainment), SuperServe's two claims on this setup:
#   quality gain at equal attainment   (slackfit's quality - the fixed front's at its attainment)
#   attainment gain at equal quality   (slackfit's attainment / the fixed front's at its quality)
# and an SVG per run (attainment vs quality, one panel per trace).
# Traces: gamma arrivals at 12/s with CV^2 1, 4 and 8 (shape 1, 1/4, 1/8), the Azure code trace
# (845-870 s) and BurstGPT (first 200) rescaled to 12/s; prompts clipped to 16 tokens, outputs
# to 32. MODEL=path picks another model (an elastic supernet from tools/supernet; REFERENCE=path
# scores its quality against the model it was trained from); SLO_MS (80).
# quick: one trace, four policies, 20 requests (the smoke test). SVG=FILE keeps the plot.
# sweep: SuperServe's synthetic sweeps: the mean rate (gamma CV^2 4 at 6, 12, 18 and 24/s) and
# time-varying ramps (CV^2 4, 4/s rising to 24/s at 2 and 8 req/s^2, and falling 24 to 4/s).
# scaling: SlackFit inside live autoscaling (a combination none of the seed systems has): the
# bursty traces at 24/s, slackfit and fixed:full on one instance and under blitz (1..4 instances,
# each new one's parameters over the emulated 12.5 GB/s network, serving while they stream in),
# every instance running at most 8 sequences at once (so arrivals queue and the scaler sees it);
# slackfit+blitz+q adds the subnet-aware signal (--min-quality 0.9: scale out while the served
# quality is below 0.9).
# What it buys: attainment and quality of slackfit+blitz against fixed:full+blitz (scaling
# alone) and slackfit (subnets alone), and how many instances each started.
set -euo pipefail
cd "$(dirname "$0")/.."
strata=$(realpath "${1:-build/bin/strata}")
quick=${2:-}
data=$(realpath "${DATA:-../shared/data}")
m=${MODEL:-$data/models/stories260K}
slo=${SLO_MS:-80}
. bench/lib.sh
svg=${SVG:-$tmp/slackfit.svg}
scaling_args=()

echo "### subnet policies over HTTP: $(basename "$m")${REFERENCE:+ (quality against $(basename "$REFERENCE"))}, device 4 ms/layer + 0.2 ms/row, TTFT SLO $slo ms"
ref=()
[ -n "${REFERENCE:-}" ] && ref=(--reference "$REFERENCE")
"$strata" subnets --model "$m" "${ref[@]}" "${dev[@]}" --batches 1,4,16,64 --steps 3 --json "$tmp/cat.json" \
  >"$tmp/cat.txt" 2>/dev/null
# The fixed baselines: the Pareto-optimal subnets, thinned to at most 6 spread over quality.
front=$(python3 -c '
import json, sys
c = sorted((s for s in json.load(open(sys.argv[1]))["subnets"] if s["pareto"]), key=lambda s: -(s["top1"] or 0))
k = min(6, len(c))
pick = sorted({round(i * (len(c) - 1) / max(1, k - 1)) for i in range(k)})
print(" ".join(c[i]["spec"] for i in pick))' "$tmp/cat.json")
echo "fixed baselines (Pareto-optimal by emulated latency at batch 1 and top-1, thinned): $front"

# The INFaaS baseline: the same subnets as separately loaded variants (strata convert --subnet),
# one device's memory for one of them at a time (--variant-slots 1), each loaded on demand from a
# host copy (all-cache: GPU-sized 400 MB per whole layer + 500 MB of globals at 25 GB/s), its
# layers' emulated bytes and device time scaled by their size against the base's.
variant_args=(--model "s=$m")
layers=$("$strata" inspect --model "$m" | sed -n 's/.* layers=\([0-9]*\) .*/\1/p')
for v in $front; do
  [ "$v" = full ] && continue
  "$strata" convert --model "$m" --subnet "$v" --out "$tmp/v-$v" >/dev/null 2>&1
  knobs=$(python3 -c '
import json, sys
s = {x["spec"]: x for x in json.load(open(sys.argv[1]))["subnets"]}[sys.argv[2]]
n = int(sys.argv[3])
f = s["share"] * n / (len(s["layers"]) or n)  # the share of a whole layer each of its layers holds
print(f"layer-mb={400 * f:.1f},device-layer-ms={4 * f:.3f},device-row-ms={0.2 * f:.4f}")' "$tmp/cat.json" "$v" "$layers")
  variant_args+=(--model "s@$v=$tmp/v-$v" --model-knobs "s@$v:$knobs")
done
variant_args+=(--subnet-catalogue "s=$tmp/cat.json" --variant-slots 1 --min 0 --keep-alive-s 600)
echo "infaas-like variants: $(echo "$front" | tr ' ' '\n' | grep -vx full | tr '\n' ' ')(and the whole model), one slot"

if [ "$quick" = scaling ]; then
  labels=("gamma CV2 8 at 24/s" "Azure code at 24/s" "BurstGPT at 24/s")
  traces=("--trace gamma --n 300 --max-requests 300 --gamma-rate 24 --burstiness 0.125"
          "--trace $data/traces/AzureLLMInferenceTrace_code.csv --start 845 --duration 25 --max-requests 300 --rate 24"
          "--trace $data/traces/burstgpt1_first400.csv --max-requests 300 --rate 24")
  policies=(fixed:full slackfit fixed:full+blitz slackfit+blitz slackfit+blitz+q)
  # A device runs 8 sequences at a time (else every arrival joins the batch, nothing queues and
  # a scaler sees no pressure, only slow steps).
  scaling_args=(--max-running 8)
elif [ "$quick" = sweep ]; then
  labels=("gamma CV2 4 at 6/s" "gamma CV2 4 at 12/s" "gamma CV2 4 at 18/s" "gamma CV2 4 at 24/s"
          "ramp 4-24/s at 2/s2" "ramp 4-24/s at 8/s2" "ramp 24-4/s at 2/s2")
  traces=()
  for r in 6 12 18 24; do traces+=("--trace gamma --n 150 --gamma-rate $r --burstiness 0.25"); done
  traces+=("--trace gamma --n 150 --gamma-rate 4 --ramp-to 24 --ramp-accel 2 --burstiness 0.25"
           "--trace gamma --n 150 --gamma-rate 4 --ramp-to 24 --ramp-accel 8 --burstiness 0.25"
           "--trace gamma --n 150 --gamma-rate 24 --ramp-to 4 --ramp-accel 2 --burstiness 0.25")
  policies=(slackfit max-accuracy max-batch infaas-like)
  for s in $front; do policies+=("fixed:$s"); done
elif [ "$quick" = quick ]; then
  labels=("gamma CV2 4")
  traces=("--trace gamma --n 20 --gamma-rate 12 --burstiness 0.25")
  policies=(slackfit max-batch infaas-like "fixed:$(echo "$front" | awk '{print $1}')")
else
  labels=("gamma CV2 1" "gamma CV2 4" "gamma CV2 8" "Azure code 845-870 s" "BurstGPT first 200")
  traces=("--trace gamma --n 150 --gamma-rate 12 --burstiness 1"
          "--trace gamma --n 150 --gamma-rate 12 --burstiness 0.25"
          "--trace gamma --n 150 --gamma-rate 12 --burstiness 0.125"
          "--trace $data/traces/AzureLLMInferenceTrace_code.csv --start 845 --duration 25 --max-requests 150 --rate 12"
          "--trace $data/traces/burstgpt1_first400.csv --max-requests 150 --rate 12")
  policies=(slackfit max-accuracy max-batch infaas-like)
  for s in $front; do policies+=("fixed:$s"); done
fi

printf '%-22s %-18s %8s %9s %s\n' trace policy "SLO %" quality "subnets chosen"
for i in "${!traces[@]}"; do
  read -r -a trace <<<"${traces[$i]} --max-prompt 16 --max-output 32"
  for pol in "${policies[@]}"; do
    if [ "$pol" = infaas-like ]; then
      serving=("${variant_args[@]}" --policy all-cache --max 1)
    elif [ "${pol%+blitz*}" != "$pol" ]; then
      serving=(--model "$m" --subnet-catalogue "$tmp/cat.json" --policy blitz --min 1 --max 4 --ttft-slo-ms "$slo")
      [ "${pol%+q}" = "$pol" ] || serving+=(--min-quality 0.9)
    else
      serving=(--model "$m" --subnet-catalogue "$tmp/cat.json" --policy all-cache --min 1 --max 1)
    fi
    start_serve "serve-$i-${pol//:/_}.log" "${serving[@]}" "${scaling_args[@]}" "${dev[@]}" --subnet-latency emulated \
      --subnet-policy "${pol%%+*}" \
      --batch-scheduler edf --max-waiting 4096 --max-connections-per-client 4096
    out="$tmp/run-$i-${pol//:/_}.json"
    "$strata" bench-serve --url "$url" --model "$(curl -s "$url/v1/models" | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')" \
      "${trace[@]}" --vocab 512 --slo-ms "$slo" --json "$out" --quiet >/dev/null 2>&1 || true
    stop_serve 2>/dev/null
    python3 - "$out" "${labels[$i]}" "$pol" "$tmp/cat.json" >>"$tmp/rows.tsv" <<'PY'
import json, sys, collections
j = json.load(open(sys.argv[1]))
cat = {s["spec"]: s for s in json.load(open(sys.argv[4]))["subnets"]}
r = j["requests"]
chosen = collections.Counter(q.get("subnet") or "?" for q in r if q["ok"])
tokens = narrowed = 0
for q in r:
    for s, k in (q.get("served") or {}).items():
        tokens += k
        narrowed += k if s != q.get("subnet") else 0
def top1(spec):
    return max(0.0, cat[spec]["top1"] or 0.0) if spec in cat else 0.0
def quality_of(q):  # token-weighted over the subnets that made its tokens (SlackFit narrows per step)
    served = q.get("served") or {}
    n = sum(served.values())
    return sum(top1(s) * k for s, k in served.items()) / n if n else top1(q.get("subnet"))
quality = sum(quality_of(q) for q in r if q["ok"]) / len(r) if r else 0.0  # a failed request served nothing
att = 100 * j["summary"]["slo_attainment"]
note = f" ({100 * narrowed / tokens:.0f}% of tokens FFN-narrowed)" if narrowed else ""
print("\t".join([sys.argv[2], sys.argv[3], f"{att:.1f}", f"{quality:.3f}",
                 ",".join(f"{k}x{v}" for k, v in chosen.most_common(4)) + note]))
PY
    tail -1 "$tmp/rows.tsv" | awk -F'\t' '{ printf "%-22s %-18s %8s %9s %s\n", $1, $2, $3, $4, $5 }'
    [ "$pol" != infaas-like ] || echo "  (infaas-like: $(grep -c 'evicted by the front door' "$tmp/serve-$i-${pol//:/_}.log") evictions, $(grep -c ': .* scale-out #' "$tmp/serve-$i-${pol//:/_}.log") loads)"
    [ "${pol%+blitz*}" = "$pol" ] || echo "  ($pol: $(grep -c ': .* scale-out #' "$tmp/serve-$i-${pol//:/_}.log") instances started, $(grep -c ': .* stopped #' "$tmp/serve-$i-${pol//:/_}.log") stopped)"
  done
done

python3 - "$tmp/rows.tsv" "$svg" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
by = collections.OrderedDict()
for t, p, a, q, _ in rows:
    by.setdefault(t, {})[p] = (float(a), float(q))

def front(points):  # fixed subnets: the upper-right hull by attainment, monotone
    pts = sorted(points, key=lambda x: (x[0], -x[1]))
    out = []
    for a, q in pts:
        while out and out[-1][1] <= q:
            out.pop()
        out.append((a, q))
    return out

def interp(pts, x, xi, yi):  # y at x on the front, linear between neighbours (None outside)
    pts = sorted(pts, key=lambda p: p[xi])
    for (p0, p1) in zip(pts, pts[1:]):
        if p0[xi] <= x <= p1[xi]:
            if p1[xi] == p0[xi]:
                return max(p0[yi], p1[yi])
            t = (x - p0[xi]) / (p1[xi] - p0[xi])
            return p0[yi] + t * (p1[yi] - p0[yi])
    return None

print()
compared = [(t, pol) for t, pol in by.items()
            if "slackfit" in pol and sum(k.startswith("fixed:") and not k.endswith("+blitz") for k in pol) >= 2]
if compared:
    print(f"{'trace':<22} {'slackfit SLO %':>14} {'quality':>8} {'front quality at its SLO %':>27} {'front SLO % at its quality':>27}")
for t, pol in compared:
    fixed = [v for k, v in pol.items() if k.startswith("fixed:") and not k.endswith("+blitz")]
    a, q = pol["slackfit"]
    f = front(fixed)
    fq = interp(f, a, 0, 1)
    fa = interp(f, q, 1, 0)
    dq = f"{fq:.3f} (gain {q - fq:+.3f})" if fq is not None else "outside the front"
    da = f"{fa:.1f} (ratio {a / fa:.2f}x)" if fa else "outside the front"
    print(f"{t:<22} {a:>14.1f} {q:>8.3f} {dq:>27} {da:>27}")

# Scaling mode: what SlackFit buys inside live autoscaling, and what scaling buys SlackFit.
scaled = [(t, pol) for t, pol in by.items() if {"slackfit+blitz", "fixed:full+blitz", "slackfit"} <= set(pol)]
if scaled:
    print(f"{'trace':<22} {'slackfit+blitz SLO %, quality':>30} {'vs fixed:full+blitz':>26} {'vs slackfit on one instance':>30}")
    for t, pol in scaled:
        a, q = pol["slackfit+blitz"]
        fa, fq = pol["fixed:full+blitz"]
        sa, sq = pol["slackfit"]
        vs_full = f"{a / fa:.2f}x SLO, {q - fq:+.3f} q" if fa > 0 else f"{a - fa:+.1f} SLO, {q - fq:+.3f} q"
        print(f"{t:<22} {a:>21.1f}, {q:.3f} {vs_full:>26} {f'{a - sa:+.1f} SLO %, {q - sq:+.3f} q':>30}")
    aware = [(t, pol) for t, pol in scaled if "slackfit+blitz+q" in pol]
    if aware:
        print(f"{'trace':<22} {'subnet-aware (+q) SLO %, quality':>33} {'vs slackfit+blitz':>26}")
    for t, pol in aware:
        a, q = pol["slackfit+blitz+q"]
        ba, bq = pol["slackfit+blitz"]
        print(f"{t:<22} {a:>24.1f}, {q:.3f} {f'{a - ba:+.1f} SLO %, {q - bq:+.3f} q':>26}")

# One panel per trace: attainment (x) vs mean served quality (y).
W, H, P = 300, 260, 45
n = len(by)
svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W * n}' height='{H + 40}' font-family='sans-serif' "
       "font-size='10'><rect width='100%' height='100%' fill='white'/>",
       f"<text x='10' y='14' font-size='12'>SLO attainment (x, %) vs mean served quality (y, top-1): fixed subnets "
       "(grey, front dashed), slackfit (red), max-accuracy (blue), max-batch (green), infaas-like variants (purple)</text>"]
colour = {"slackfit": "#d62728", "max-accuracy": "#1f77b4", "max-batch": "#2ca02c", "infaas-like": "#9467bd",
          "slackfit+blitz": "#8c1a1a", "fixed:full+blitz": "#555555"}
for k, (t, pol) in enumerate(by.items()):
    ox, oy = k * W, 30
    X = lambda a: ox + P + (W - P - 15) * a / 100
    Y = lambda q: oy + H - P - (H - P - 20) * q
    svg.append(f"<text x='{ox + W / 2}' y='{oy + 12}' text-anchor='middle' font-size='11'>{t}</text>")
    svg.append(f"<line x1='{X(0)}' y1='{Y(0)}' x2='{X(100)}' y2='{Y(0)}' stroke='black'/>"
               f"<line x1='{X(0)}' y1='{Y(0)}' x2='{X(0)}' y2='{Y(1)}' stroke='black'/>")
    for v in (0, 50, 100):
        svg.append(f"<text x='{X(v)}' y='{Y(0) + 12}' text-anchor='middle'>{v}</text>")
    for v in (0, 0.5, 1):
        svg.append(f"<text x='{X(0) - 4}' y='{Y(v) + 3}' text-anchor='end'>{v}</text>")
    f = front([v for p, v in pol.items() if p.startswith("fixed:") and not p.endswith("+blitz")])
    if len(f) > 1:
        svg.append("<polyline fill='none' stroke='#999' stroke-dasharray='4 3' points='" +
                   " ".join(f"{X(a):.1f},{Y(q):.1f}" for a, q in sorted(f)) + "'/>")
    for p, (a, q) in pol.items():
        c = colour.get(p, "#999")
        svg.append(f"<circle cx='{X(a):.1f}' cy='{Y(q):.1f}' r='{5 if p in colour else 3.5}' fill='{c}'/>")
        if p in colour or len(pol) < 12:
            svg.append(f"<text x='{X(a) + 5:.1f}' y='{Y(q) - 4:.1f}' fill='{c}'>{p.replace('fixed:', '')}</text>")
svg.append("</svg>")
open(sys.argv[2], "w").write("\n".join(svg) + "\n")
PY
echo "plot: $svg"
