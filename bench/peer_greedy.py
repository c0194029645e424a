#!/usr/bin/env python3
"""Greedy agreement of Strata and llama.cpp on the same GGUF files (issue 19's greedy-ids target).

For each model, llama.cpp runs greedy decoding in its four attention set-ups (KV cache f16 or f32,
flash attention on or off) and Strata runs the same GGUF file; the table gives how many leading
generated ids each pair shares. llama.cpp against itself says how sensitive a model is to the
order of float operations alone: a random model's near-tied logits part early whoever computes.

  /usr/bin/python3 bench/peer_greedy.py [--steps 64] [--dtype bf16]
Needs ../shared/tools/peer-llamacpp/run.sh to have run once (node-llama-cpp and the 200 M model
in $PEER_DIR, default /tmp/peer-llamacpp). Progress on stderr, the table on stdout.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER_TOOL = os.path.join(ROOT, "..", "shared", "tools", "peer-llamacpp")


def log(msg):
    sys.stderr.write("peer_greedy: %s\n" % msg)
    sys.stderr.flush()


def run(cmd, env=None):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        raise SystemExit("peer_greedy: %s failed (exit %d):\n%s" % (" ".join(map(str, cmd)), p.returncode,
                                                                    p.stderr[-2000:]))
    return p.stdout


def llama_ids(gguf, prompt, steps, kv, flash, env):
    out = run(["node", os.path.join(PEER_TOOL, "llama_run.mjs"), "greedy", "--model", gguf, "--prompt-tokens", prompt,
               "--steps", steps, "--kv", kv, "--flash", flash], env)
    return json.loads(out.strip().splitlines()[-1])["tokens"]


def strata_ids(strata, gguf, prompt, steps):
    with tempfile.TemporaryDirectory() as tmp:
        logits = os.path.join(tmp, "logits.json")
        run([strata, "generate", "--model", gguf, "--prompt-tokens", prompt, "--steps", steps, "--temperature", 0,
             "--threads", 2, "--logits", logits])
        return json.load(open(logits))["tokens"]


def shared_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--dtype", default="bf16", help="weight type of both GGUF files (gguf_write.py's --dtype)")
    ap.add_argument("--strata", default=os.path.join(ROOT, "build", "bin", "strata"))
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "models", "stories260K"))
    a = ap.parse_args()
    peer = os.environ.get("PEER_DIR", "/tmp/peer-llamacpp")
    env = dict(os.environ, PEER_DIR=peer)
    models = os.path.join(peer, "models")
    big = os.path.join(models, "big-%s.gguf" % a.dtype)
    if not os.path.exists(os.path.join(peer, "node_modules")) or not os.path.exists(big):
        raise SystemExit("peer_greedy: %s lacks node-llama-cpp or %s: run LLAMA_DTYPES=%s "
                         "../shared/tools/peer-llamacpp/run.sh once" % (peer, big, a.dtype))
    small = os.path.join(models, "stories260K-%s.gguf" % a.dtype)
    if not os.path.exists(small):
        log("writing %s" % small)
        run([sys.executable, os.path.join(PEER_TOOL, "gguf_write.py"), "llama2c", "--model",
             os.path.join(a.data, "stories260K.bin"), "--tokenizer", os.path.join(a.data, "tok512.bin"), "--out", small,
             "--dtype", a.dtype])
    setups = [("f16", "on"), ("f16", "off"), ("f32", "on"), ("f32", "off")]
    print("greedy ids generated from the same GGUF (%s weights), %d steps: leading ids shared" % (a.dtype, a.steps))
    print("%-28s %-10s %s" % ("model", "prompt", "  ".join("%-13s" % ("kv %s fa %s" % s) for s in setups)))
    for name, gguf, prompt in (("stories260K (trained)", small, "1"), ("200M (random weights)", big, "1,10,20,30")):
        log("%s: llama.cpp in %d set-ups, then Strata" % (name, len(setups)))
        ll = [llama_ids(gguf, prompt, a.steps, kv, fa, env) for kv, fa in setups]
        st = strata_ids(a.strata, gguf, prompt, a.steps)
        print("%-28s %-10s %s" % (name + ": Strata", prompt, "  ".join("%-13d" % shared_prefix(st, x) for x in ll)))
        print("%-28s %-10s %s" % (name + ": llama kv f16 fa on", prompt,
                                  "  ".join("%-13d" % shared_prefix(ll[0], x) for x in ll)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
