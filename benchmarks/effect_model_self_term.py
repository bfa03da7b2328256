"""Does a decoder-aligned term help the effect model? (issue #26's "low rank plus a
decoder-aligned part" lever, measured on a committed campaign.)

Steering along decoder row ``d_j`` might raise latent ``j`` itself by more than ridge's shared
``W`` predicts. This adds a per-latent self gain to ridge, ``W' = W + D̂ᵀ diag(g)`` (``D̂``: unit
decoder rows), still linear in ``v``, with ``g_j`` the ridge residual on latent ``j`` where the
campaign steered along ``d_j``, shrunk towards the median over latents with strength ``κ``
(``g_j = (Σ r_j + κ ḡ) / (n_j + κ)``; the held-out decoder rows' latents were never steered in
training, so for them ``g_j = ḡ``). Prints the own-latent effect's size and share of the training
variance, and the held-out R² (one reference baseline, as the budget benchmark) for κ in 0.5-4
next to plain ridge.

Example::

    python benchmarks/effect_model_self_term.py --data data/effects --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sae_ts.effect_model import LinearEffectModel, evaluate_heldout, fit
from sae_ts.effects import EffectDataset
from sae_ts.sae import load_default_sae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/effects"))
    ap.add_argument("--model", default="smollm2-135m", help="the embedded model (its SAE)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    print(f"command: python benchmarks/effect_model_self_term.py {vars(args)}")
    tr = EffectDataset.load_dir(args.data / "train")
    ta = EffectDataset.load_dir(args.data / "test_a").rebase(tr.baseline)
    tb = EffectDataset.load_dir(args.data / "test_b").rebase(tr.baseline)
    kinds = json.loads((args.data / "train_kinds.json").read_text())[: len(tr)]
    groups = ["dec" if k.startswith("dec") else "gauss"
              for k in json.loads((args.data / "test_kinds.json").read_text())]  # fmt: skip
    D = load_default_sae(model=args.model).W_dec.detach().double()
    D = D / D.norm(dim=1, keepdim=True)
    em, _ = fit(tr, "ridge", holdout=max(1, len(tr) // 10), seed=args.seed)
    y = tr.effects.double()
    res = y - em.predict(tr.inputs.float()).double()
    own = [(i, int(k.split(":")[1])) for i, k in enumerate(kinds) if k.startswith("dec")]
    self_y = torch.tensor([float(y[i, j]) for i, j in own])
    self_r = torch.tensor([float(res[i, j]) for i, j in own])
    sst = float(((y - y.mean(0)) ** 2).sum())
    own_ss = sum(float((y[i, j] - y[:, j].mean()) ** 2) for i, j in own)
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "n_train": len(tr),
                 "own_latent_effect": {"median": float(self_y.median()), "mean": float(self_y.mean()),
                                       "share_of_train_variance": own_ss / sst},
                 "ridge": {g: v["r2"] for g, v in evaluate_heldout(em, ta, tb, groups).items()},
                 "self_term": {}}  # fmt: skip
    gsum = torch.zeros(D.shape[0], dtype=torch.float64)
    cnt = torch.zeros(D.shape[0], dtype=torch.float64)
    for (_, j), r in zip(own, self_r):
        gsum[j] += r
        cnt[j] += 1
    gbar = float(self_r.median())
    for kappa in (0.5, 1.0, 2.0, 4.0):
        g = (gsum + kappa * gbar) / (cnt + kappa)
        em2 = LinearEffectModel((em.W.double() + D.T * g).float(), em.b, dict(em.record))
        out["self_term"][str(kappa)] = {
            gr: v["r2"] for gr, v in evaluate_heldout(em2, ta, tb, groups).items()
        }
    o = out["own_latent_effect"]
    print(f"{len(tr)} training vectors, {len(own)} decoder rows; own-latent effect median "
          f"{o['median']:+.3f}, mean {o['mean']:+.3f}, {o['share_of_train_variance']:.2%} of the "
          f"training variance")  # fmt: skip
    print("held-out R² (all / dec / gauss):")
    print(
        "  ridge           " + "  ".join(f"{out['ridge'][g]:+.3f}" for g in ("all", "dec", "gauss"))
    )
    for kappa, r in out["self_term"].items():
        print(
            f"  + self, κ={kappa:<4} " + "  ".join(f"{r[g]:+.3f}" for g in ("all", "dec", "gauss"))
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
