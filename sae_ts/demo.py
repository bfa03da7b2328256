"""``sae-ts demo``: steer the embedded model and show steered vs unsteered generations."""

from __future__ import annotations

import argparse
import time

import torch

from .models import load_default_model, sink_mask, to_tokens
from .steering import generate, steer

__all__ = ["add_cli_commands", "run_demo"]

_POS = ["I love weddings: the bride, the groom, the wedding dress and the vows."]
_NEG = ["I love mornings: the coffee, the quiet street, the newspaper and the birds."]


def run_demo(
    hook_name: str = "blocks.12.hook_resid_post",
    scale: float = 4.0,
    prompt: str = "I think",
    max_new_tokens: int = 24,
    seed: int = 0,
) -> dict[str, str]:
    """Load the default model, build a contrastive vector, print steered vs unsteered text."""
    t0 = time.time()
    model = load_default_model()
    print(f"loaded {model.cfg.model_name} in {time.time() - t0:.1f}s")
    with torch.no_grad():
        acts = {}
        for name, texts in (("pos", _POS), ("neg", _NEG)):
            _, cache = model.run_with_cache(to_tokens(model, texts), names_filter=hook_name)
            a = cache[hook_name]
            keep = ~sink_mask(a)
            acts[name] = a[keep].mean(0)
        vec = acts["pos"] - acts["neg"]
        vec = vec / vec.norm()
        norm = float(cache[hook_name][~sink_mask(cache[hook_name])].norm(dim=-1).median())
    toks = to_tokens(model, [prompt])
    out: dict[str, str] = {}
    for label, s in (("unsteered", 0.0), (f"steered (scale {scale} x median norm)", scale)):
        g = torch.Generator().manual_seed(seed)
        with steer(model, vec, hook_name, scale=s * norm):
            ids = generate(model, toks, max_new_tokens, temperature=0.7, top_k=50, generator=g)
        out[label] = str(model.to_string(ids[0, 1:]))
        print(f"\n== {label}\n{out[label]}")
    return out


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.hook, args.scale, args.prompt, args.max_new_tokens, args.seed)
    return 0


def add_cli_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``sae-ts demo``."""
    p = sub.add_parser("demo", help="steer the embedded model and print steered vs unsteered text")
    p.add_argument("--hook", default="blocks.12.hook_resid_post")
    p.add_argument("--scale", type=float, default=4.0, help="multiple of the median residual norm")
    p.add_argument("--prompt", default="I think")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
