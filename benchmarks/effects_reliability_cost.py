"""Reliability per CPU-second: sae-ts's effect protocol and loop against the official ones.

An effect is worth its reliability. For each protocol this measures ``--n-dec`` SAE decoder rows
and ``--n-gauss`` Gaussian directions twice, with independent random streams and a few rollouts
per prompt per half, and from the two halves the signal and per-rollout noise variance
(:class:`~sae_ts.effect_model.RolloutReliability`, centred over vectors, so the unsteered baseline,
common to every vector, cancels and is not measured). The reliability of a ``k``-rollout
measurement of one vector is then ``signal / (signal + noise_per_rollout / k)`` (Spearman-Brown).

* **sae-ts** (its chosen protocol): scale 0.5 x the typical per-token residual norm, top-k 50 then
  top-p 0.3, 1 rollout per prompt x the 14 prompts; its cost is that of the estimator.
* **official**: scale 0.30 x the norm (where the official loss-4 calibration lands on this model),
  top-k 50 alone (TransformerLens ignores ``top_p`` when ``top_k`` is given), 64 rollouts per
  prompt x 14 prompts; its cost is that of the official loop (``official_loop`` in
  ``effects_throughput.py``: ``generate`` at batch 64, re-run, encode), timed here on
  ``--official-prompts`` prompts and 1 vector and scaled to 14 prompts.

Both protocols' halves are measured with the estimator (the same sampling distribution as
TransformerLens's for the official one, and faster). CPU seconds are this process's
``time.process_time``; run it with ``OMP_NUM_THREADS=1`` so that they are one core's seconds.
It prints the reliability and CPU-seconds per vector of each protocol as run, and the vectors per
CPU-hour of each at equal reliability: the official protocol's own, and ``--targets``.

    OMP_NUM_THREADS=1 python benchmarks/effects_reliability_cost.py --json out.json  # ~10 min quiet
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from effects_throughput import official_loop

from sae_ts.effect_model import RolloutReliability, noise_ceiling
from sae_ts.effects import (
    PAPER_PROMPTS,
    EffectConfig,
    EffectEstimator,
    decoder_directions,
    random_directions,
    typical_residual_norm,
)
from sae_ts.loading import load_default

PROTOCOLS = {  # name: (scale x norm, top_p, rollouts per prompt as run)
    "sae-ts": (0.5, 0.3, 1),
    "official": (0.30, None, 64),
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-dec", type=int, default=4)
    ap.add_argument("--n-gauss", type=int, default=4)
    ap.add_argument("--half-rollouts", default="2,4",
                    help="rollouts per prompt per half: sae-ts protocol, official protocol")  # fmt: skip
    ap.add_argument("--official-prompts", type=int, default=2,
                    help="prompts the official loop is timed on (evenly spread over the 14)")  # fmt: skip
    ap.add_argument("--targets", default="0.5,0.8,0.9", help="reliabilities to compare at")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--batch-rows", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    model, sae, hook = load_default()
    norm = typical_residual_norm(model, hook)
    dirs = torch.cat(
        [
            decoder_directions(sae, n=args.n_dec, seed=args.seed + 1000),
            random_directions(args.n_gauss, model.cfg.d_model, seed=args.seed + 2000),
        ]
    )
    n = dirs.shape[0]
    halves = dict(zip(PROTOCOLS, (int(x) for x in args.half_rollouts.split(","))))
    out: dict = {
        "command": " ".join(["python", *sys.argv]),
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "norm": norm,
        "directions": {"dec": args.n_dec, "gauss": args.n_gauss},
        "protocols": {},
    }
    for name, (frac, top_p, run_k) in PROTOCOLS.items():
        h = halves[name]
        cfg = EffectConfig(
            rollouts=h, top_k=50, top_p=top_p, seq_len=args.seq_len, batch_rows=args.batch_rows
        )
        ab, cpu = [], 0.0
        for half in range(2):
            est = EffectEstimator(model, sae, config=cfg, seed=args.seed * 1000 + 17 * half + 1)
            c = time.process_time()
            ab.append(est.measure(dirs, frac * norm, progress=False))
            cpu += time.process_time() - c
        rel = RolloutReliability.from_halves(ab[0], ab[1], h)
        out["protocols"][name] = {
            "scale_fraction": frac,
            "scale": frac * norm,
            "top_k": 50,
            "top_p": top_p,
            "rollouts_as_run": run_k,
            "half_rollouts": h,
            "split_half_r2": noise_ceiling(ab[0], ab[1])["split_half_r2"],
            "signal": rel.signal,
            "noise_per_rollout": rel.noise_per_rollout,
            "reliability_1_rollout": rel.at(1),
            "reliability_as_run": rel.at(run_k),
            # one rollout of one vector over the 14 prompts, in the estimator
            "estimator_cpu_s_per_rollout_vector": cpu / (2 * n * h),
        }
        print(f"{name}: {json.dumps(out['protocols'][name])}", flush=True)

    # the official loop's cost: 1 vector, 64 rollouts, on a spread of the prompts
    idx = sorted(
        {round(i * 13 / max(args.official_prompts - 1, 1)) for i in range(args.official_prompts)}
    )
    prompts = [PAPER_PROMPTS[i] for i in idx]
    off = out["protocols"]["official"]
    official_loop(model, sae, hook, dirs[:1], off["scale"], prompts[:1], 2, 4)  # warm-up
    c = time.process_time()
    official_loop(model, sae, hook, dirs[:1], off["scale"], prompts, 64, args.seq_len)
    off_cpu = time.process_time() - c
    out["official_loop"] = {"prompts": prompts, "cpu_s": off_cpu,
                            "cpu_s_per_rollout_vector": off_cpu / 64 * 14 / len(prompts)}  # fmt: skip
    cost = {  # CPU-s per rollout-vector (14 prompts) of each protocol in its own loop
        "sae-ts": out["protocols"]["sae-ts"]["estimator_cpu_s_per_rollout_vector"],
        "official": out["official_loop"]["cpu_s_per_rollout_vector"],
    }
    rels = {k: RolloutReliability(p["signal"], p["noise_per_rollout"])
            for k, p in out["protocols"].items()}  # fmt: skip

    def at(target: float) -> dict:
        row: dict = {"target": target}
        for k in PROTOCOLS:
            need = rels[k].rollouts_for(target)  # inf where the halves show no signal
            used = max(1, math.ceil(need - 1e-6)) if math.isfinite(need) else math.inf
            row[k] = {"rollouts_needed": need, "rollouts_whole": used,
                      "cpu_s_per_vector": cost[k] * used,
                      "vectors_per_cpu_hour": 3600 / (cost[k] * used)}  # fmt: skip
        s, o = row["sae-ts"]["vectors_per_cpu_hour"], row["official"]["vectors_per_cpu_hour"]
        row["ratio_sae_ts_over_official"] = s / o if o > 0 else math.inf
        return row

    as_run = {
        k: {
            "reliability": out["protocols"][k]["reliability_as_run"],
            "cpu_s_per_vector": cost[k] * PROTOCOLS[k][2],
            "vectors_per_cpu_hour": 3600 / (cost[k] * PROTOCOLS[k][2]),
        }
        for k in PROTOCOLS
    }
    out["as_run"] = as_run
    # the loops alone, on the same (official) protocol: CPU-s per rollout-vector, official / sae-ts
    out["loop_cost_ratio"] = (
        cost["official"] / (out["protocols"]["official"]["estimator_cpu_s_per_rollout_vector"])
    )
    targets = [float(x) for x in args.targets.split(",") if x]
    official_own = as_run["official"]["reliability"]
    out["equal_reliability"] = [
        at(t) for t in ([official_own] if 0 < official_own < 1 else []) + targets
    ]
    report(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return out


def report(out: dict) -> None:
    print(f"\n{out['command']}  ({out['torch_threads']} torch thread(s), seed {out['seed']})")
    for k, r in out["as_run"].items():
        p = out["protocols"][k]
        print(
            f"{k:9s} as run: scale {p['scale_fraction']:.2f} x norm, top-p {p['top_p']}, "
            f"{p['rollouts_as_run']} rollout(s) x 14 prompts: reliability {r['reliability']:.3f} "
            f"(split-half R² {p['split_half_r2']:+.3f} at {p['half_rollouts']} per half), "
            f"{r['cpu_s_per_vector']:.1f} CPU-s per vector, {r['vectors_per_cpu_hour']:.1f} "
            "vectors per CPU-hour"
        )
    print(
        f"loops alone (official protocol, CPU-s per rollout-vector): {out['loop_cost_ratio']:.2f}x"
    )
    for row in out["equal_reliability"]:
        s, o = row["sae-ts"], row["official"]
        print(
            f"at reliability {row['target']:.3f}: sae-ts {s['rollouts_needed']:.2f} rollouts "
            f"({s['vectors_per_cpu_hour']:.1f} vectors/CPU-h), official {o['rollouts_needed']:.2f} "
            f"rollouts ({o['vectors_per_cpu_hour']:.2f} vectors/CPU-h): ratio "
            f"{row['ratio_sae_ts_over_official']:.1f}x"
        )


if __name__ == "__main__":
    main()
