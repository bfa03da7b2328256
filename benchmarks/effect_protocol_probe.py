"""How reproducible is one vector's measured effect? Split-half reliability by protocol and scale.

Each direction is measured twice, with independent random streams (two estimator seeds, each
with its own unsteered baseline), at several scales and under several sampling protocols. From
the two measurements ``A`` and ``B`` of the same effects (``[n, d_sae]`` each) this prints:

* split-half R²: ``1 - ||A - B||² / ((SST_A + SST_B) / 2)`` (variance-weighted over features,
  centred over vectors), i.e. how well one measurement predicts the other;
* the noise ceiling of the average ``(A + B) / 2``: ``1 - (||A - B||² / 4) / SST_mean``, the R²
  that a perfect model of the true effects would reach against that average;
* the centred split-half cosine (mean over vectors of ``cos(A_i - mean A, B_i - mean B)``);

separately for SAE decoder rows and Gaussian directions, with the tokens each protocol generated
and its wall time. Scales are given as fractions of the typical per-token residual norm at the
hook (median over the reference text, sinks excluded), and the loss-calibrated scales (relative
+0.5 nats, the sae-ts default until now; absolute loss 4 nats, as the official code) are printed in
the same units.

Example (the probe recorded in the README)::

    python benchmarks/effect_protocol_probe.py --protocols topk:indep,topk:coupled \\
        --fractions 0.5,0.7,0.9 --json runs/probe/a.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sae_ts.effect_model import linear_share, noise_ceiling
from sae_ts.effects import (
    EffectConfig,
    EffectEstimator,
    calibrate_scales,
    decoder_directions,
    random_directions,
    reference_texts,
    typical_residual_norm,
)
from sae_ts.loading import load_default
from sae_ts.models import to_tokens


def split_half(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """The library's noise ceiling of two halves, under this probe's recorded key names."""
    nc = noise_ceiling(a, b)
    return {
        "split_half_r2": nc["split_half_r2"],
        "ceiling_of_mean": nc["ceiling"],
        "centred_cosine": nc["centred_cosine"],
        "effect_rms": float(((a.double() + b.double()) / 2).norm(dim=-1).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocols", default="topk:indep,topp:indep,topk:coupled",
                    help="sampler:coupling pairs; sampler topk = top-k 50 only (the paper as run), "
                         "topp = top-k 50 then top-p 0.3; coupling indep or coupled")  # fmt: skip
    ap.add_argument("--fractions", default="0.5,0.7,0.9", help="scales, x the per-token norm")
    ap.add_argument("--n-dec", type=int, default=6)
    ap.add_argument("--n-gauss", type=int, default=6)
    ap.add_argument("--rollouts", type=int, default=2, help="rollouts per prompt per half")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration", action="store_true", help="also print calibrated scales")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="smollm2-135m", help="an embedded model (its shipped SAE)")
    ap.add_argument("--signs", action="store_true",
                    help="also measure every -v and print the linear share (odd part of the "
                         "effect, noise removed): the most R² a model linear in v can reach")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: python benchmarks/effect_protocol_probe.py {vars(args)}")
    model, sae, hook = load_default(model=args.model)
    norm = typical_residual_norm(model, hook)
    print(f"typical per-token residual norm at {hook}: {norm:.1f}")
    dirs = torch.cat(
        [
            decoder_directions(sae, n=args.n_dec, seed=args.seed + 1000),
            random_directions(args.n_gauss, model.cfg.d_model, seed=args.seed + 2000),
        ]
    )
    group = ["dec"] * args.n_dec + ["gauss"] * args.n_gauss
    fractions = [float(x) for x in args.fractions.split(",")]
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "norm": norm, "rows": []}
    if args.calibration:
        toks = to_tokens(model, reference_texts())[:, :257]
        base = float(model(toks, return_type="loss"))
        rel = calibrate_scales(model, dirs, hook, target_increase=0.5)
        ab = calibrate_scales(model, dirs, hook, target_increase=max(4.0 - base, 0.05))
        out["calibration"] = {
            "reference_loss": base,
            "relative_+0.5_median_fraction": float(rel.median() / norm),
            "absolute_4_median_fraction": float(ab.median() / norm),
            "relative_+0.5_fractions": (rel / norm).tolist(),
            "absolute_4_fractions": (ab / norm).tolist(),
        }
        print(
            json.dumps(
                {k: v for k, v in out["calibration"].items() if "median" in k or "loss" in k}
            )
        )
    n, S = dirs.shape[0], len(fractions)
    signs = [1.0, -1.0] if args.signs else [1.0]
    vecs = torch.cat([s * dirs for s in signs]).repeat(S, 1)
    scales = torch.tensor([f * norm for f in fractions]).repeat_interleave(n * len(signs))
    for proto in args.protocols.split(","):
        sampler, coupling = proto.split(":")
        cfg = EffectConfig(
            rollouts=args.rollouts,
            top_k=50,
            top_p=None if sampler == "topk" else 0.3,
            coupled=coupling == "coupled",
        )
        t0 = time.perf_counter()
        halves = []
        for h in range(2):
            est = EffectEstimator(model, sae, config=cfg, seed=args.seed * 1000 + 17 * h + 1)
            base = est.baseline(progress=False)
            halves.append(est.measure(vecs, scales, progress=False) - base)
        secs = time.perf_counter() - t0
        rows_gen = (
            2
            * (vecs.shape[0] + (1 if cfg.coupled else cfg.baseline_multiplier))
            * len(cfg.prompts)
            * args.rollouts
        )
        for si, f in enumerate(fractions):
            k = n * len(signs)
            sl = slice(si * k, si * k + n)
            for g in ("all", "dec", "gauss"):
                idx = [i for i in range(n) if g == "all" or group[i] == g]
                st = split_half(halves[0][sl][idx], halves[1][sl][idx])
                if args.signs:
                    neg = slice(si * k + n, (si + 1) * k)
                    ls = linear_share(
                        (halves[0][sl][idx], halves[1][sl][idx]),
                        (halves[0][neg][idx], halves[1][neg][idx]),
                    )
                    st["linear_share"] = ls["linear_share"]
                    # what v @ W + b can reach at best: the ceiling's share that is odd in v
                    st["linear_ceiling"] = ls["linear_share"] * st["ceiling_of_mean"]
                row = {"protocol": proto, "fraction": f, "scale": f * norm, "group": g, **st,
                       "tokens": rows_gen * cfg.seq_len, "seconds": secs}  # fmt: skip
                out["rows"].append(row)
                print(
                    f"{proto:13s} x{f:.2f} (scale {f * norm:6.1f}) {g:5s} "
                    f"split-half R² {st['split_half_r2']:+.3f}  ceiling(mean) "
                    f"{st['ceiling_of_mean']:+.3f}  centred cos {st['centred_cosine']:.3f}  "
                    f"|effect| {st['effect_rms']:.3f}"
                    + (f"  linear share {st['linear_share']:.3f}" if args.signs else ""),
                    flush=True,
                )
        print(f"{proto}: {rows_gen * cfg.seq_len} tokens in {secs:.0f} s", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
