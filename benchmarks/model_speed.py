"""Load time and throughput of the embedded default model on this machine.

python benchmarks/model_speed.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from sae_ts.generation import generate
from sae_ts.models import load_default_model, to_tokens


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    load_default_model()  # make sure the cache exists; the timed load below is a cached load
    t = time.perf_counter()
    model = load_default_model()
    load_s = time.perf_counter() - t
    x = torch.randint(
        100, 40000, (args.batch, args.seq), generator=torch.Generator().manual_seed(args.seed)
    )
    with torch.no_grad():
        model(x[:1, :8])
        t = time.perf_counter()
        model(x)
        fwd = x.numel() / (time.perf_counter() - t)
    toks = to_tokens(model, ["I think"] * args.batch)
    t = time.perf_counter()
    generate(
        model,
        toks,
        args.new_tokens,
        top_k=50,
        top_p=0.3,
        generator=torch.Generator().manual_seed(args.seed),
    )
    gen = args.batch * args.new_tokens / (time.perf_counter() - t)
    res = {
        "command": " ".join(["python", *sys.argv]),
        "load_seconds_cached": load_s,
        f"forward_tok_s_batch{args.batch}x{args.seq}": fwd,
        f"generate_tok_s_batch{args.batch}": gen,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
