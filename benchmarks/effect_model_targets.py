"""Do solved vectors hit their targets? The 9 SAE-TS tasks at 0.5 x the per-token norm (issue #12).

For each task directory under ``--tasks`` (the SAE-TS paper's concept tasks, read by path):

1. target latents chosen as the method comparison chooses them (issue #13): the most selective
   ``--n-features`` latents on the build half of the task's texts, dense latents left out, equal
   L2-normalised weights (:func:`sae_ts.targets.select_targets`); CAA is built on the same half;
2. four unit vectors: ``sae_ts`` (the paper's rule on the shipped effect model), ``targeted``
   (sae-ts's solver), ``sae_latent`` (weighted decoder rows) and ``caa`` (for reference), plus an
   ``unsteered`` row; with an effect model that has a disruption term (Gemma's), also
   ``targeted_kl`` (the solver with a budget on its measured next-token KL, ``--max-disruption``), (scale 0: a second unsteered measurement, the noise floor);
3. each measured with ``--rollouts`` rollouts per prompt on the 14 effect prompts at
   ``--fraction`` x the per-token residual norm, every method on the same random streams (paired),
   against one baseline of ``--baseline-multiplier`` x as many rollouts.

Printed and saved: target effect, target share, off-target norm, predicted target effect and
cosine(predicted, measured) per task and method, and the bar of issue #12: ``sae_ts`` and
``targeted`` target share >= the latent's on >= 7/9 tasks, target effect > 0 on all 9.

Example::

    python benchmarks/effect_model_targets.py --json benchmarks/results/effect_model_targets.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sae_ts.baselines import caa_vector, sae_latent_vector
from sae_ts.effect_model import (
    DisruptionEffectModel,
    load_default_effect_model,
    load_effect_model,
)
from sae_ts.effects import EffectConfig, EffectEstimator, typical_residual_norm
from sae_ts.experiments.compare.tasks import Task, load_task, split_roles
from sae_ts.loading import load_default
from sae_ts.solver import Target, solve, target_stats
from sae_ts.targets import LatentDensity, latent_density, select_targets

REPO = Path(__file__).resolve().parents[1]


def task_target(  # type: ignore[no-untyped-def]
    model, sae, hook: str, build: Task, n_features: int, density: LatentDensity
) -> Target:
    """The comparison's target: top selective latents on the build half, equal L2-normalised weights."""
    chosen = select_targets(model, sae, build.pos, build.neg, hook, n_features, density)
    return Target.of({t.latent: t.weight for t in chosen})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=Path, default=REPO.parent / "shared/datasets/concepts/saets")
    ap.add_argument("--effect-model", type=Path, default=None, help="default: the shipped one")
    ap.add_argument("--model", default="smollm2-135m", help="an embedded model (its shipped SAE)")
    ap.add_argument(
        "--fraction", type=float, default=None,
        help="scale, x the per-token norm (default: the scale the effect model was measured at)",
    )  # fmt: skip
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument(
        "--max-disruption", type=float, default=0.5,
        help="nats: the targeted_kl row's budget on its measured next-token KL (default 0.5, "
        "a typical decoder row's at Gemma's 0.2 x the norm)",
    )  # fmt: skip
    ap.add_argument("--baseline-multiplier", type=int, default=4)
    ap.add_argument("--n-features", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: python benchmarks/effect_model_targets.py {vars(args)}", flush=True)
    t0 = time.perf_counter()
    model, sae, hook = load_default(model=args.model)
    em = (
        load_default_effect_model(args.model)
        if args.effect_model is None
        else load_effect_model(args.effect_model)
    )
    disruptive = isinstance(em, DisruptionEffectModel)
    if isinstance(em, DisruptionEffectModel) and em.fisher is None:
        em.attach_fisher(model)
    if args.fraction is None and "scale" in em.record:
        scale = float(em.record["scale"])
    else:
        scale = (0.5 if args.fraction is None else args.fraction) * typical_residual_norm(
            model, hook
        )
    cfg = EffectConfig(rollouts=args.rollouts, baseline_multiplier=args.baseline_multiplier)
    est = EffectEstimator(model, sae, config=cfg, seed=args.seed)
    baseline = est.baseline()
    density = latent_density(model, sae, hook)
    tasks = sorted(p for p in args.tasks.iterdir() if (p / "act_steer.json").exists())
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "scale": scale,
                 "effect_model": em.record.get("campaign", {}), "tasks": {}}  # fmt: skip
    for ti, path in enumerate(tasks):
        task = split_roles(load_task(path), args.seed).build
        target = task_target(model, sae, hook, task, args.n_features, density)
        vecs = {
            "sae_ts": solve(em, target, "sae_ts"),
            "targeted": solve(em, target, "targeted"),
            "sae_latent": sae_latent_vector(sae, target.raise_),
            "caa": caa_vector(model, task.pos, task.neg, hook),
        }
        if disruptive:  # targeted with a budget on its measured disruption z(v)
            vecs["targeted_kl"] = solve(
                em, target, "targeted", lm=model, max_disruption=args.max_disruption
            )
        V = torch.stack([v.float() / v.float().norm() for v in vecs.values()] + [vecs["caa"]])
        scales = torch.tensor([scale] * len(vecs) + [0.0])
        # one stream per task, shared by every method: paired differences
        means = est.measure(V, scales, vector_ids=[ti] * len(V))
        rows = {}
        if disruptive:  # each vector's disruption, measured as the model's z (one forward pass)
            z = em.measure_z(model, V[:-1])
        for i, (name, v, m) in enumerate(zip([*vecs, "unsteered"], V, means)):
            eff = m - baseline
            st = target_stats(eff, target)
            if name != "unsteered":
                pred = em.predict(v[None], z[i : i + 1])[0] if disruptive else em.predict(v)
                if disruptive:
                    st["next_token_kl"] = float(z[i])
                st["predicted_target_effect"] = target_stats(pred, target)["target_effect"]
                st["cosine_pred_measured"] = float(
                    torch.nn.functional.cosine_similarity(pred, eff, dim=0)
                )
            rows[name] = st
        out["tasks"][path.name] = {"target": target.to_dict(), "rows": rows}
        print(f"\n{path.name}: target {target.raise_}", flush=True)
        for name, st in rows.items():
            print(
                f"  {name:<11} target effect {st['target_effect']:+.4f}  share "
                f"{st['target_share']:.3f}  off-target {st['off_target_norm']:.3f}"
                + (
                    f"  predicted {st['predicted_target_effect']:+.4f}  cos "
                    f"{st['cosine_pred_measured']:+.3f}"
                    + (f"  KL {st['next_token_kl']:.2f}" if "next_token_kl" in st else "")
                    if "predicted_target_effect" in st
                    else ""
                ),
                flush=True,
            )
    bar = {}
    for m in ("sae_ts", "targeted", *(["targeted_kl"] if disruptive else [])):
        t = out["tasks"].values()
        bar[m] = {
            "share_ge_latent": sum(
                r["rows"][m]["target_share"] >= r["rows"]["sae_latent"]["target_share"] for r in t
            ),
            "positive_target_effect": sum(r["rows"][m]["target_effect"] > 0 for r in t),
            "tasks": len(out["tasks"]),
        }
    out["bar"] = bar
    if disruptive:  # how hard each method's vectors shake the next token, over the tasks
        names = [n for n in next(iter(out["tasks"].values()))["rows"] if n != "unsteered"]
        out["median_next_token_kl"] = {
            n: float(
                torch.tensor(
                    [t["rows"][n]["next_token_kl"] for t in out["tasks"].values()]
                ).median()
            )
            for n in names
        }
        print("median next-token KL (nats):", json.dumps(out["median_next_token_kl"]))
    out["seconds"] = time.perf_counter() - t0
    print("\nbar (issue #12: share >= latent on >= 7/9, positive effect on 9/9):")
    for m, b in bar.items():
        print(
            f"  {m:<9} share >= latent on {b['share_ge_latent']}/{b['tasks']}, "
            f"positive effect on {b['positive_target_effect']}/{b['tasks']}"
        )
    print(f"wall time {out['seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
