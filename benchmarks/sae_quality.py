"""Quality figures of the embedded SAE (or another SAE directory) on held-out text.

Usage (from the repository root)::

    SAE_TS_CACHE=... python benchmarks/sae_quality.py [--model gemma-3-270m] [--sae DIR] \
        [--tokens 150000] [--ce-tokens 20000]

Prints explained variance, CE-loss recovered (reconstruction spliced in at the hook, attention
sinks passed through, against mean ablation), L0 and the dead fraction on the in-domain held-out
split (Wikipedia summaries + Python docs never trained on) and on the out-of-domain split (King
James Bible, never trained on), with the command that rebuilds the SAE and its seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from sae_ts.models import EMBEDDED_MODELS, document_start_id, load_default_model
from sae_ts.sae import default_sae_dir, evaluate_sae, load_sae, make_windows
from sae_ts.training import build_corpus


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m", choices=sorted(EMBEDDED_MODELS))
    p.add_argument(
        "--sae", default=None, help="an SAE directory (default: the model's shipped SAE)"
    )
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--tokens", type=int, default=150_000, help="tokens per split for EV/L0/dead")
    p.add_argument("--ce-tokens", type=int, default=20_000, help="tokens per split for CE")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.sae = args.sae or str(default_sae_dir(args.model))
    sae = load_sae(args.sae)
    cfg = sae.cfg.metadata.get("train_config", {}) or {}
    seed = int(cfg.get("seed", 0))
    print(
        f"SAE: {args.sae}  hook={sae.cfg.metadata.hook_name}  d_sae={sae.cfg.d_sae}  "
        f"k={getattr(sae.cfg, 'k', '-')}  seed={seed}"
    )
    print(
        f"rebuild: sae-ts train-sae --model {args.model} --seed {seed}  (the model's preset "
        "otherwise; see sae_ts_training.json)"
    )
    model = load_default_model(model=args.model)
    splits = build_corpus(seed=seed, heldout_fraction=float(cfg.get("heldout_fraction", 0.05)))
    bos = document_start_id(model)
    ctx = int(cfg.get("context_size", 128))
    out = {}
    for name in ("heldout", "ood"):
        win = make_windows(model.tokenizer, splits[name], ctx, bos)
        g = torch.Generator().manual_seed(seed + 1)  # the same sample train-sae evaluates on
        win = win[torch.randperm(win.shape[0], generator=g)]
        t0 = time.time()
        res = evaluate_sae(
            model,
            sae,
            windows=win,
            max_tokens=args.tokens,
            ce_max_tokens=args.ce_tokens,
            progress=True,
        )
        out[name] = res.as_dict()
        ci = res.ce_recovered_ci or (float("nan"), float("nan"))
        print(
            f"{name:>8}: tokens={res.n_tokens} EV={res.explained_variance:.3f} "
            f"CE_recovered={res.ce_recovered:.3f} [95% CI {ci[0]:.3f}, {ci[1]:.3f}] "
            f"(clean {res.ce_clean:.3f}, SAE "
            f"{res.ce_sae:.3f}, mean-ablated {res.ce_mean_ablated:.3f}) L0={res.l0:.1f} "
            f"dead={res.dead_fraction:.3f} ({res.n_dead}/{res.d_sae})  [{time.time() - t0:.0f}s]"
        )
    print(json.dumps(out, indent=1))
    if args.json:
        cmd = "python benchmarks/sae_quality.py " + " ".join(sys.argv[1:])
        with open(args.json, "w") as f:
            json.dump({"command": cmd, "sae": args.sae, "model": args.model, **out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
