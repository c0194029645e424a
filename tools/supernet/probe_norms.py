#!/usr/bin/python3
"""Measures what per-subnet norm gains would buy a supernet (SuperServe's SubnetNorm, for RMSNorm).

RMSNorm keeps no running statistics, so the only per-subnet normalisation state a transformer
supernet could carry is its own copy of the norm gains (every layer's attention and FFN norm and
the final norm: (2 L + 1) x dim values per subnet). Before building that into the engine, this
probe fits them: for each subnet of a trained supernet (train_supernet.py's side file names its
space and drop order), the shared weights frozen, only that subnet's gains are tuned by the same
distillation (KL to the base model on text sampled from it). It prints each subnet's top-1
agreement with the base model on held-out samples with the shared gains and with its own; the
difference is the most per-subnet gains can add on top of the shared weights.

  /usr/bin/python3 tools/supernet/probe_norms.py --base BASE.bin --supernet SUPERNET.bin
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_supernet as T  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the llama2.c model the supernet was trained from (the teacher)")
    ap.add_argument("--supernet", required=True, help="train_supernet.py's output (its .supernet.json beside it)")
    ap.add_argument("--steps", type=int, default=300, help="tuning steps per subnet")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--train-samples", type=int, default=512)
    ap.add_argument("--held-out", type=int, default=64, help="the same held-out seeds as train_supernet.py")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.steps < 0 or a.batch < 1 or a.length < 2 or a.train_samples < a.batch or a.held_out < 1:
        raise SystemExit("probe_norms: --steps >= 0, --batch >= 1, --length >= 2, --held-out >= 1 and "
                         "--train-samples >= --batch")
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    t0 = time.time()
    cfg, teacher = T.read_llama2c(a.base)
    scfg, sn = T.read_llama2c(a.supernet)
    if scfg != cfg:
        raise SystemExit(f"probe_norms: {a.supernet} has another shape than {a.base}")
    side = os.path.splitext(a.supernet)[0] + ".supernet.json"
    try:
        report = json.load(open(side))
        drop, specs = report["drop_order"], report["training"]["space"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"probe_norms: {side}: not train_supernet.py's side file ({e})")
    subs = {s: T.resolve(s, cfg, drop) for s in specs}
    T.log(f"sampling {a.train_samples} training and {a.held_out} held-out sequences of {a.length} tokens")
    data = T.sample(cfg, teacher, a.train_samples, a.length, seed=a.seed)
    held = T.sample(cfg, teacher, a.held_out, a.length, seed=a.seed + 1_000_003)
    with torch.no_grad():
        ref = T.forward(cfg, teacher, held[:, :-1]).argmax(-1)
    print(f"{'subnet':<10} {'shared gains':>12} {'own gains':>10} {'gain':>7}")
    for s in specs:
        own = {"att_norm": [torch.nn.Parameter(t.clone()) for t in sn["att_norm"]],
               "ffn_norm": [torch.nn.Parameter(t.clone()) for t in sn["ffn_norm"]],
               "final_norm": torch.nn.Parameter(sn["final_norm"].clone())}
        w = dict(sn)
        w.update(own)
        opt = torch.optim.Adam(own["att_norm"] + own["ffn_norm"] + [own["final_norm"]], lr=a.lr)
        for _ in range(a.steps):
            batch = data[torch.randint(0, len(data), (a.batch,))]
            with torch.no_grad():
                tlogp = F.log_softmax(T.forward(cfg, teacher, batch), -1)
            opt.zero_grad()
            T.kl_to(tlogp, T.forward(cfg, w, batch, subs[s])).backward()
            opt.step()
        shared = T.agreement(cfg, sn, subs[s], held, ref)
        tuned = T.agreement(cfg, w, subs[s], held, ref)
        print(f"{s:<10} {shared:>12.3f} {tuned:>10.3f} {tuned - shared:>+7.3f}", flush=True)
    print(f"{a.steps} steps per subnet, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
