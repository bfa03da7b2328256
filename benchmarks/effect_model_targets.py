"""Do solved vectors hit their targets? The 9 SAE-TS tasks at 0.5 x the per-token norm (issue #12).

For each task directory under ``--tasks`` (the SAE-TS paper's concept tasks, read by path):

1. target latents chosen as the method comparison chooses them (issue #13): the most selective
   ``--n-features`` latents on the build half of the task's texts, dense latents left out, equal
   L2-normalised weights (:func:`sae_ts.targets.select_targets`); CAA is built on the same half;
2. unit vectors: ``sae_ts`` (the paper's rule on the shipped effect model), ``targeted``
   (sae-ts's solver), ``targeted_span`` (the solver within the target latents' own decoder rows,
   :func:`sae_ts.solver.solve_in_decoder_span`), ``sae_latent`` (weighted decoder rows) and
   ``caa`` (for reference); with an effect model that has a disruption term (Gemma's), also
   ``targeted_kl`` (the solver with a budget on its measured next-token KL, ``--max-disruption``),
   and ``targeted_span`` gets the same budget; with a first-token effect model (SmolLM2's),
   ``targeted_ft`` (``targeted`` ascending the whole model, its prior measured on the language
   model); and an ``unsteered`` row (scale 0: a second
   unsteered measurement, the noise floor);
3. each measured with ``--rollouts`` rollouts per prompt on the 14 effect prompts at
   ``--fraction`` x the per-token residual norm, every method on the same random streams (paired),
   against one baseline of ``--baseline-multiplier`` x as many rollouts.

Printed and saved: target effect, target share, off-target norm, predicted target effect and
cosine(predicted, measured) per task and method, and the bar of issue #12: ``sae_ts`` and
``targeted`` target share >= the latent's on >= 7/9 tasks, target effect > 0 on all 9.

Example::

    python benchmarks/effect_model_targets.py --json benchmarks/results/effect_model_targets.json

``--only targeted_span --merge EARLIER.json`` measures one new row and adds it to an earlier run:
every row of a task uses that task's random streams and the same baseline, so the rows pair.
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
    FirstTokenEffectModel,
    load_default_effect_model,
    load_effect_model,
)
from sae_ts.effects import EffectConfig, EffectEstimator, typical_residual_norm
from sae_ts.experiments.compare.tasks import Task, load_task, split_roles
from sae_ts.loading import load_default
from sae_ts.solver import Target, solve, solve_in_decoder_span, target_stats
from sae_ts.targets import LatentDensity, latent_density, select_targets

REPO = Path(__file__).resolve().parents[1]


def task_target(  # type: ignore[no-untyped-def]
    model, sae, hook: str, build: Task, n_features: int, density: LatentDensity
) -> Target:
    """The comparison's target: top selective latents on the build half, equal L2-normalised weights."""
    chosen = select_targets(model, sae, build.pos, build.neg, hook, n_features, density)
    return Target.of({t.latent: t.weight for t in chosen})


def task_vector(  # type: ignore[no-untyped-def]
    name: str,
    em,
    model,
    sae,
    hook: str,
    task: Task,
    target: Target,
    kl: dict,
    span_k: int,
    span_info: dict,
) -> torch.Tensor:
    """One row's unit vector. ``targeted_kl``: ``targeted`` with a budget on its measured
    disruption z(v) (``kl``); ``targeted_span``: ``targeted`` within the target latents' own
    decoder rows (with the budget, if any), its span recorded in ``span_info``."""
    if name in ("sae_ts", "targeted"):
        return solve(em, target, name)  # type: ignore[arg-type]
    if name == "sae_latent":
        return sae_latent_vector(sae, target.raise_)
    if name == "caa":
        return caa_vector(model, task.pos, task.neg, hook)
    if name == "targeted_kl":
        return solve(em, target, "targeted", **kl)
    if name == "targeted_ft":
        return solve(em, target, "targeted", lm=model, sae=sae)
    v, info = solve_in_decoder_span(em, sae.W_dec, target, span_k, **kl)
    span_info.update({k: info[k] for k in ("span_ids", "span_weights", "dropped")})
    return v


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
    ap.add_argument(
        "--span-k", type=int, default=0,
        help="the targeted_span row's helper decoder rows besides the target's own (default 0)",
    )  # fmt: skip
    ap.add_argument(
        "--only", type=lambda s: s.split(","), default=None, metavar="ROWS",
        help="measure only these rows (and unsteered), e.g. targeted_span; with --merge, add them "
        "to an earlier run's JSON: every row of a task shares its random streams, so they pair",
    )  # fmt: skip
    ap.add_argument("--merge", type=Path, default=None, help="an earlier run's --json to extend")
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
    first_token = isinstance(em, FirstTokenEffectModel)
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
        kl = {"lm": model, "max_disruption": args.max_disruption} if disruptive else {}
        names = ["sae_ts", "targeted", "sae_latent", "caa",
                 *(["targeted_kl"] if disruptive else []), "targeted_span",
                 *(["targeted_ft"] if first_token else [])]  # fmt: skip
        span_info: dict = {}
        vecs = {
            n: task_vector(n, em, model, sae, hook, task, target, kl, args.span_k, span_info)
            for n in names
            if not args.only or n in args.only
        }
        V = torch.stack([v.float() / v.float().norm() for v in vecs.values()])
        V = torch.cat([V, V[:1]])  # the unsteered row: scale 0
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
                if disruptive:
                    pred = em.predict(v[None], z[i : i + 1])[0]
                elif first_token:  # the whole model, its prior measured at v
                    pred = em.predict_measured(model, sae, v)
                else:
                    pred = em.predict(v)
                if disruptive:
                    st["next_token_kl"] = float(z[i])
                st["predicted_target_effect"] = target_stats(pred, target)["target_effect"]
                st["cosine_pred_measured"] = float(
                    torch.nn.functional.cosine_similarity(pred, eff, dim=0)
                )
            rows[name] = st
        if args.merge:  # the earlier run's rows first, then this run's (unsteered remeasured)
            earlier = json.loads(args.merge.read_text())["tasks"][path.name]
            if earlier["target"] != json.loads(json.dumps(target.to_dict())):
                raise SystemExit(f"{path.name}: --merge's target differs from this run's")
            rows = {**earlier["rows"], **rows}
        out["tasks"][path.name] = {"target": target.to_dict(), "rows": rows, "span": span_info}
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
    t = out["tasks"].values()
    have = next(iter(t))["rows"] if "sae_latent" in next(iter(t))["rows"] else {}
    for m in (r for r in have if r not in ("sae_latent", "caa", "unsteered")):
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
