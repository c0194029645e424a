#!/usr/bin/python3
"""Makes an elastic supernet of a llama2.c model for Strata's subnets (SuperServe's SubNetAct).

A plain pretrained model degrades when sliced: dropping a layer or the last FFN neurons was never
part of its training. This script turns it into a supernet whose subnets (the `dNwPhP` specs of
`strata subnets`, dataflow/compute/subnet.hpp) stay close to the original model:

1. Importance order (so that a width prefix is the best slice of its size), measured on text
   sampled from the model itself:
   - FFN neuron j of a layer: mean |silu(w1 x)_j * (w3 x)_j| over the calibration tokens times the
     L2 norm of column j of w2 (the activation-weighted norm of what the neuron writes back);
   - KV head group g of a layer: how much the output changes without it (KL to the model's
     output when its query heads' outputs are zeroed), the most harmful to lose first.
   Neurons and groups are sorted by it, most important first, and the weights permuted (w1/w3
   rows with w2 columns; wk/wv rows of a group with its query heads' wq rows and wo columns). The
   permuted model computes the same function.
2. LayerSelect's drop order, chosen greedily: the next layer to drop is the one whose removal
   (with those already dropped) changes the output least (KL on the calibration text). Layer 0 is
   never dropped. It is recorded in a side file that Strata reads with the model.
3. Distillation with progressive shrinking (Once-for-All): the student starts as the permuted
   model; each step runs the full subnet, the smallest and two random subnets of the space on a
   batch of text sampled from the original (teacher) model and minimises KL(teacher || subnet).
   The space opens in phases: depth first, then FFN width, then KV heads.

Output: OUT (a llama2.c checkpoint) and OUT's stem + ".supernet.json" beside it (the drop order,
how it was made, quality before and after). Quality is top-1 agreement with the ORIGINAL model's
argmax, teacher-forced on held-out sampled text; `strata subnets --model OUT --reference IN`
measures the same in the engine.

Needs Debian's python3-torch (and python3-numpy). Runs on the CPU.
"""
import argparse
import json
import math
import os
import random
import shutil
import struct
import sys
import time

# torch parallelises each op itself; a threaded BLAS under it oversubscribes the cores (2x slower).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np
import torch
import torch.nn.functional as F

LAYER_KEYS = ["att_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"]


def log(msg):
    print(f"train_supernet: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- llama2.c checkpoints

def read_llama2c(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SystemExit(f"{path}: cannot read ({e.strerror})")
    if len(data) < 28:
        raise SystemExit(f"{path}: {len(data)} bytes, the llama2.c header alone needs 28")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", data[:28])
    cfg = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
               vocab=abs(vocab), seq_len=seq_len, tied=vocab > 0)
    if min(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len) <= 0 or dim % heads or heads % kv_heads:
        raise SystemExit(f"{path}: bad llama2.c header {cfg}")
    hd = dim // heads
    kvd = kv_heads * hd
    shapes = {"att_norm": (dim,), "wq": (dim, dim), "wk": (kvd, dim), "wv": (kvd, dim), "wo": (dim, dim),
              "ffn_norm": (dim,), "w1": (hidden, dim), "w2": (dim, hidden), "w3": (hidden, dim)}
    floats = np.frombuffer(data, dtype="<f4", offset=28)
    off = 0

    def take(shape):
        nonlocal off
        n = int(np.prod(shape))
        if off + n > floats.size:
            raise SystemExit(f"{path}: truncated at tensor of shape {shape}")
        t = torch.from_numpy(floats[off:off + n].copy().reshape(shape))
        off += n
        return t

    w = {"tok_emb": take((abs(vocab), dim))}
    for k in LAYER_KEYS:
        w[k] = [take(shapes[k]) for _ in range(layers)]
    w["final_norm"] = take((dim,))
    off += 2 * seq_len * (hd // 2)  # the unused RoPE tables
    if not cfg["tied"]:
        w["wcls"] = take((abs(vocab), dim))
    if off != floats.size:
        raise SystemExit(f"{path}: size mismatch: the header implies {28 + 4 * off} bytes, the file has {len(data)}")
    return cfg, w


def write_llama2c(path, cfg, w):
    hd = cfg["dim"] // cfg["heads"]
    vocab = cfg["vocab"] if cfg["tied"] else -cfg["vocab"]
    parts = [struct.pack("<7i", cfg["dim"], cfg["hidden"], cfg["layers"], cfg["heads"], cfg["kv_heads"], vocab,
                         cfg["seq_len"])]
    out = [w["tok_emb"]]
    for k in LAYER_KEYS:
        out += list(w[k])
    out.append(w["final_norm"])
    # The RoPE tables llama2.c once stored (Strata and llama2.c recompute them).
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    ang = torch.outer(torch.arange(cfg["seq_len"]).float(), freqs)
    out += [torch.cos(ang), torch.sin(ang)]
    if not cfg["tied"]:
        out.append(w["wcls"])
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(parts[0])
        for t in out:
            f.write(t.detach().contiguous().float().numpy().astype("<f4").tobytes())
    os.replace(tmp, path)


# ---------------------------------------------------------------- the model and its subnets

class Subnet:
    """A subnet as Strata resolves it (subnet.hpp): kept layers, FFN neurons, KV head groups."""

    def __init__(self, spec, layers, ffn, kv):
        self.spec, self.layers, self.ffn, self.kv = spec, layers, ffn, kv


def resolve(spec, cfg, drop_order):
    depth, ffn_pct, head_pct = cfg["layers"], 100, 100
    s = spec
    if s != "full":
        import re
        m = re.fullmatch(r"(?:d(\d+))?(?:w(\d+))?(?:h(\d+))?", s)
        if not m or not s:
            raise SystemExit(f"train_supernet: bad subnet spec '{spec}' (want full or dNwPhP, e.g. d4w75)")
        depth = int(m.group(1) or depth)
        ffn_pct = int(m.group(2) or 100)
        head_pct = int(m.group(3) or 100)
        if not 1 <= depth <= cfg["layers"] or not 1 <= ffn_pct <= 100 or not 1 <= head_pct <= 100:
            raise SystemExit(f"train_supernet: subnet '{spec}' is outside depth 1..{cfg['layers']}, widths 1..100 %")
    gone = set(drop_order[: cfg["layers"] - depth])
    layers = [l for l in range(cfg["layers"]) if l not in gone]
    ffn = max(1, (cfg["hidden"] * ffn_pct + 99) // 100)
    kv = max(1, (cfg["kv_heads"] * head_pct + 99) // 100)
    return Subnet(spec, layers, ffn, kv)


def rope_tables(cfg, T):
    hd = cfg["dim"] // cfg["heads"]
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(T).float(), freqs)
    return torch.cos(ang), torch.sin(ang)


def rope(x, cos, sin):
    # Interleaved pairs (llama2.c): (x0, x1) rotated by the position's angle.
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def rmsnorm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g


def forward(cfg, w, tokens, sub=None, probe=None, cache=None, pos0=0):
    """Logits [B, T, vocab] of `tokens` [B, T] at positions pos0.. through subnet `sub` (None: the
    whole model). With `cache` (per layer K and V, [B, kv_heads, length, head_dim]) the tokens'
    K/V are stored there and attention sees positions 0..pos0+T-1 (incremental decoding).
    `probe(layer, ffn_act)` sees each layer's FFN activations."""
    B, T = tokens.shape
    H, KV = cfg["heads"], cfg["kv_heads"]
    hd = cfg["dim"] // H
    group = H // KV
    layers = sub.layers if sub else range(cfg["layers"])
    f = sub.ffn if sub else cfg["hidden"]
    kv = sub.kv if sub else KV
    q_heads = kv * group
    cos, sin = rope_tables(cfg, pos0 + T)
    cos, sin = cos[pos0:], sin[pos0:]
    mask = torch.full((T, pos0 + T), float("-inf")).triu(pos0 + 1)
    x = w["tok_emb"][tokens]
    for l in layers:
        h = rmsnorm(x, w["att_norm"][l])
        q = (h @ w["wq"][l][: q_heads * hd].T).view(B, T, q_heads, hd)
        k = (h @ w["wk"][l][: kv * hd].T).view(B, T, kv, hd)
        v = (h @ w["wv"][l][: kv * hd].T).view(B, T, kv, hd)
        q = rope(q, cos[:, None, :], sin[:, None, :]).transpose(1, 2)
        k = rope(k, cos[:, None, :], sin[:, None, :]).transpose(1, 2)
        v = v.transpose(1, 2)
        if cache is not None:
            cache[l][0][:, :kv, pos0:pos0 + T], cache[l][1][:, :kv, pos0:pos0 + T] = k, v
            k, v = cache[l][0][:, :kv, : pos0 + T], cache[l][1][:, :kv, : pos0 + T]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, dim=-1)
        o = (att @ v).transpose(1, 2)  # [B, T, q_heads, hd]
        wo = w["wo"][l][:, : q_heads * hd]
        x = x + o.reshape(B, T, q_heads * hd) @ wo.T
        h = rmsnorm(x, w["ffn_norm"][l])
        a = F.silu(h @ w["w1"][l][:f].T) * (h @ w["w3"][l][:f].T)
        if probe is not None:
            probe(l, a)
        x = x + a @ w["w2"][l][:, :f].T
    x = rmsnorm(x, w["final_norm"])
    return x @ (w["tok_emb"] if cfg["tied"] else w["wcls"]).T


@torch.no_grad()
def sample(cfg, w, n, length, seed, bos=1, chunk=512):
    """`n` sequences of `length` tokens sampled at temperature 1 from BOS (the teacher's text)."""
    g = torch.Generator().manual_seed(seed)
    hd = cfg["dim"] // cfg["heads"]
    out = []
    for i in range(0, n, chunk):
        b = min(chunk, n - i)
        cache = [(torch.zeros(b, cfg["kv_heads"], length, hd), torch.zeros(b, cfg["kv_heads"], length, hd))
                 for _ in range(cfg["layers"])]
        seq = torch.full((b, length), bos, dtype=torch.long)
        for pos in range(length - 1):
            logits = forward(cfg, w, seq[:, pos:pos + 1], cache=cache, pos0=pos)[:, -1]
            seq[:, pos + 1] = torch.multinomial(torch.softmax(logits, -1), 1, generator=g)[:, 0]
        out.append(seq)
    return torch.cat(out)


# ---------------------------------------------------------------- importance and drop order

@torch.no_grad()
def importance_permute(cfg, w, calib, calib_logp):
    L, H, KV = cfg["layers"], cfg["heads"], cfg["kv_heads"]
    hd, group = cfg["dim"] // H, H // KV
    ffn_act = [torch.zeros(cfg["hidden"]) for _ in range(L)]

    def probe(l, a):
        ffn_act[l] += a.abs().mean(dim=(0, 1))

    forward(cfg, w, calib, probe=probe)
    w = {k: (list(v) if isinstance(v, list) else v) for k, v in w.items()}
    for l in range(L):
        score = ffn_act[l] * w["w2"][l].norm(dim=0)
        p = torch.argsort(score, descending=True)
        w["w1"][l], w["w3"][l], w["w2"][l] = w["w1"][l][p], w["w3"][l][p], w["w2"][l][:, p]
        harm = torch.zeros(KV)
        for x in range(KV):
            cut = dict(w)
            cut["wo"] = list(w["wo"])
            cut["wo"][l] = w["wo"][l].clone()
            cut["wo"][l][:, x * group * hd:(x + 1) * group * hd] = 0
            harm[x] = kl_to(calib_logp, forward(cfg, cut, calib))
        g = torch.argsort(harm, descending=True)
        kv_rows = torch.cat([torch.arange(int(x) * hd, (int(x) + 1) * hd) for x in g])
        q_rows = torch.cat([torch.arange(int(x) * group * hd, (int(x) + 1) * group * hd) for x in g])
        w["wk"][l], w["wv"][l] = w["wk"][l][kv_rows], w["wv"][l][kv_rows]
        w["wq"][l], w["wo"][l] = w["wq"][l][q_rows], w["wo"][l][:, q_rows]
    return w


def kl_to(teacher_logp, logits):
    """Mean KL(teacher || student) per position."""
    return F.kl_div(F.log_softmax(logits, -1), teacher_logp, log_target=True, reduction="none").sum(-1).mean()


@torch.no_grad()
def choose_drop_order(cfg, w, calib, teacher_logp):
    dropped = []
    candidates = list(range(1, cfg["layers"]))
    while candidates:
        best = None
        for l in candidates:
            keep = [x for x in range(cfg["layers"]) if x not in dropped and x != l]
            kl = float(kl_to(teacher_logp, forward(cfg, w, calib, Subnet("", keep, cfg["hidden"], cfg["kv_heads"]))))
            if best is None or kl < best[1]:
                best = (l, kl)
        dropped.append(best[0])
        candidates.remove(best[0])
        log(f"drop order: layer {best[0]} next (KL {best[1]:.3f} with {len(dropped)} dropped)")
    return dropped


# ---------------------------------------------------------------- quality

@torch.no_grad()
def agreement(cfg, w, sub, held, ref_top1):
    logits = forward(cfg, w, held[:, :-1], sub)
    return float((logits.argmax(-1) == ref_top1).float().mean())


def space(cfg, depths, widths, heads):
    out = []
    for d in depths:
        for p in widths:
            for h in heads:
                parts = ("" if d == cfg["layers"] else f"d{d}") + ("" if p == 100 else f"w{p}") + \
                        ("" if h == 100 else f"h{h}")
                out.append(parts or "full")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="llama2.c checkpoint (the teacher)")
    ap.add_argument("--out", required=True, help="the supernet checkpoint to write")
    ap.add_argument("--steps", type=int, default=1500, help="training steps")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--length", type=int, default=128, help="tokens per sampled sequence")
    ap.add_argument("--train-samples", type=int, default=2048, help="sequences sampled from the teacher to train on")
    ap.add_argument("--held-out", type=int, default=64, help="sequences to measure quality on (other seeds)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--full-weight", type=float, default=2.0,
                    help="weight of the full subnet's loss against each other subnet's (it must stay the base model)")
    ap.add_argument("--space", default="",
                    help="comma-separated subnet specs to train (e.g. full,d4,w75,w50; must hold full); "
                         "default: depths L..L-2 x FFN 100/75/50 %% x KV heads 100/50 %%")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the CPU count)")
    ap.add_argument("--report", default="", help="also write the report JSON here")
    a = ap.parse_args()
    if a.steps < 0 or a.batch < 1 or a.length < 2 or a.train_samples < a.batch or a.held_out < 1:
        raise SystemExit("train_supernet: --steps >= 0, --batch >= 1, --length >= 2, --held-out >= 1 and "
                         "--train-samples >= --batch")
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    t0 = time.time()
    cfg, teacher = read_llama2c(a.model)
    if a.length > cfg["seq_len"]:
        raise SystemExit(f"train_supernet: --length {a.length} exceeds the model's context {cfg['seq_len']}")
    log(f"{a.model}: dim {cfg['dim']}, hidden {cfg['hidden']}, {cfg['layers']} layers, {cfg['heads']} heads "
        f"({cfg['kv_heads']} KV), vocab {cfg['vocab']}")

    L = cfg["layers"]
    if a.space:
        specs = list(dict.fromkeys(x.strip() for x in a.space.split(",")))
        if "full" not in specs:
            raise SystemExit(f"train_supernet: --space {a.space} lacks 'full' (the sandwich always trains it)")
        for s in specs:
            resolve(s, cfg, default_order(L))  # exits naming a malformed or out-of-range spec
    else:
        depths = list(range(L, max(1, L - 2) - 1, -1))
        widths = [100, 75, 50]
        heads = [100, 50] if cfg["kv_heads"] >= 2 else [100]
        specs = space(cfg, depths, widths, heads)

    log(f"sampling {a.train_samples} training and {a.held_out} held-out sequences of {a.length} tokens")
    data = sample(cfg, teacher, a.train_samples, a.length, seed=a.seed)
    held = sample(cfg, teacher, a.held_out, a.length, seed=a.seed + 1_000_003)
    with torch.no_grad():
        ref_top1 = forward(cfg, teacher, held[:, :-1]).argmax(-1)

    calib = data[: min(256, len(data))]
    with torch.no_grad():
        calib_logp = F.log_softmax(forward(cfg, teacher, calib), -1)
    student = importance_permute(cfg, teacher, calib, calib_logp)
    drop_order = choose_drop_order(cfg, student, calib, calib_logp)

    L = cfg["layers"]
    subnets = {s: resolve(s, cfg, drop_order) for s in specs}

    def quality(w):
        return {s: round(agreement(cfg, w, subnets[s], held, ref_top1), 4) for s in specs}

    before_plain = {s: round(agreement(cfg, teacher, resolve(s, cfg, default_order(L)), held, ref_top1), 4)
                    for s in specs}
    before = quality(student)
    log("top-1 agreement before training (importance-ordered): " +
        ", ".join(f"{s} {q:.3f}" for s, q in before.items()))

    params = {k: ([torch.nn.Parameter(t.clone()) for t in v] if isinstance(v, list) else torch.nn.Parameter(v.clone()))
              for k, v in student.items()}
    flat = [p for v in params.values() for p in (v if isinstance(v, list) else [v])]
    opt = torch.optim.AdamW(flat, lr=a.lr, weight_decay=0.0)
    phases = [("depth", [s for s in specs if subnets[s].ffn == cfg["hidden"] and subnets[s].kv == cfg["kv_heads"]]),
              ("depth+ffn", [s for s in specs if subnets[s].kv == cfg["kv_heads"]]),
              ("depth+ffn+heads", specs)]
    smallest = specs[-1]
    for step in range(a.steps):
        phase_name, pool = phases[min(len(phases) - 1, step * len(phases) // max(1, a.steps))]
        lr = a.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, a.steps)))
        for gp in opt.param_groups:
            gp["lr"] = lr
        idx = torch.randint(0, len(data), (a.batch,))
        batch = data[idx]
        with torch.no_grad():
            tlogp = F.log_softmax(forward(cfg, teacher, batch), -1)
        chosen = ["full", min(pool, key=lambda s: (len(subnets[s].layers), subnets[s].ffn, subnets[s].kv))]
        chosen += random.sample(pool, min(2, len(pool)))
        opt.zero_grad()
        total = 0.0
        for s in chosen:
            # The full subnet carries more weight: it must stay the original model.
            loss = kl_to(tlogp, forward(cfg, params, batch, subnets[s])) * (a.full_weight if s == "full" else 1.0)
            loss.backward()
            total += float(loss)
        torch.nn.utils.clip_grad_norm_(flat, 1.0)
        opt.step()
        if step % 100 == 0 or step == a.steps - 1:
            log(f"step {step + 1}/{a.steps} ({phase_name}): loss {total / len(chosen):.4f}, lr {lr:.2e}, "
                f"{time.time() - t0:.0f} s")
    trained = {k: ([p.detach() for p in v] if isinstance(v, list) else v.detach()) for k, v in params.items()}
    after = quality(trained)
    log("top-1 agreement after training: " + ", ".join(f"{s} {q:.3f}" for s, q in after.items()))
    del smallest

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    write_llama2c(a.out, cfg, trained)
    # The base model's tokenizer beside it, so the engine finds it as it finds the base's.
    base_dir, out_dir = os.path.dirname(os.path.abspath(a.model)), os.path.dirname(os.path.abspath(a.out))
    for f in os.listdir(base_dir):
        if f.startswith("tok") and f.endswith(".bin") and not os.path.exists(os.path.join(out_dir, f)):
            shutil.copyfile(os.path.join(base_dir, f), os.path.join(out_dir, f))
    report = {
        "base": os.path.basename(a.model),
        "file": os.path.basename(a.out),
        "drop_order": drop_order,
        "importance": "FFN neurons by mean |silu(w1 x) * (w3 x)| times the L2 norm of their w2 column; KV head groups "
                      "by the KL to the model's output when their query heads' outputs are zeroed; on text sampled "
                      "from the base model",
        "training": {"method": "distillation (KL to the base model) on text sampled from it, sandwich rule "
                               "(full, smallest and 2 random subnets per step), progressive shrinking: depth, "
                               "then FFN width, then KV heads",
                     "space": specs, "steps": a.steps, "batch": a.batch, "length": a.length, "train_samples": a.train_samples,
                     "lr": a.lr, "seed": a.seed, "full_weight": a.full_weight,
                     "seconds": round(time.time() - t0, 1)},
        "quality": {"measure": "top-1 agreement with the base model's argmax, teacher-forced on "
                               f"{a.held_out} held-out sequences of {a.length} tokens sampled from it",
                    "base_sliced": before_plain, "ordered": before, "trained": after},
    }
    side = os.path.splitext(a.out)[0] + ".supernet.json"
    with open(side, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report, f, indent=1)
    print(f"{'subnet':<10} {'base sliced':>11} {'ordered':>8} {'trained':>8}")
    for s in specs:
        print(f"{s:<10} {before_plain[s]:>11.3f} {before[s]:>8.3f} {after[s]:>8.3f}")
    print(f"wrote {a.out} and {side} in {time.time() - t0:.0f} s")


def default_order(n):
    """Strata's default drop order (subnet.cpp default_drop_order): middle-out, later first on ties, then the last."""
    mid = sorted(range(1, n - 1), key=lambda l: (abs(2 * l - (n - 1)), -l))
    return mid + ([n - 1] if n > 1 else [])


if __name__ == "__main__":
    main()
