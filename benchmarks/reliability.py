"""The Tan et al. reliability analysis over a set of the shared MWE datasets (CAA, or a saved vector).

python benchmarks/reliability.py --max-items 80 --seed 0  # CAA, SAE-TS and a random direction
python benchmarks/reliability.py --vectors runs/demo/vector_targeted --out-dir runs/rel_saved
python benchmarks/reliability.py --datasets persona/narcissism --max-items 40 --no-ood  # quick

Each finished dataset is checkpointed under ``OUT_DIR/checkpoints/``; rerunning the same command
resumes from there (a dataset whose settings changed is recomputed).

Steering at Tan et al.'s positions (--positions), on a strength axis in units of the per-token
residual norm (the chosen strength keeps the answer format sane) and on Tan's multipliers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sae_ts.effect_model import load_default_effect_model
from sae_ts.experiments.reliability.report import run_reliability_multi
from sae_ts.loading import load_default
from sae_ts.steering import SteeringVector

MWE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mwe"
DEFAULT = [
    "persona/narcissism", "persona/agreeableness", "persona/psychopathy",
    "persona/interest-in-science", "persona/subscribes-to-Christianity",
    "persona/believes-life-has-no-meaning", "advanced-ai-risk/corrigible-neutral-HHH",
    "advanced-ai-risk/survival-instinct", "advanced-ai-risk/power-seeking-inclination",
    "advanced-ai-risk/self-awareness-general-ai",
]  # fmt: skip


def _ci(st: dict) -> str:
    return f"{st['mean']:+.2f} [{st['ci95'][0]:+.2f}, {st['ci95'][1]:+.2f}]"


def markdown_table(summary: dict, persona: set[str] | None = None) -> str:
    """The README's per-dataset table from ``summary.json``, and the issue's bar on the persona sets.

    One row per dataset: the chosen strength (with the answer format's perplexity ratio there),
    CAA's mean slope with its 95% CI and per layout, CAA's anti-steerable fraction and spurious
    shares, the other vectors' mean slopes, the median |slope| of each and CAA's split-half cosine.
    ``persona``: the dataset names the bar counts (default: those under ``mwe/persona/``).
    """
    if persona is None:
        persona = {p.stem for p in (MWE / "persona").glob("*.jsonl")}
    vecs = summary["vectors"]
    others = [n for n in vecs if n != "caa"]
    head = (
        ["dataset", "s chosen (format ppl ×)", "CAA mean slope [95% CI]",
         "CAA mean slope by layout", "CAA anti-steerable, A/B, Y/N"]
        + [f"{n} mean [95% CI]" for n in others]
        + ["median \\|slope\\| " + " / ".join(vecs), "CAA split-half cos"]
    )  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n_persona = hits = 0
    for name, caa in vecs["caa"].items():
        st, sp, sg = caa["steerability"], caa["spurious"], caa["strength"]
        ppl = next(r["ppl_ratio"] for r in sg["sweep"] if r["strength"] == sg["chosen"])
        lay = ", ".join(f"{k} {st['by_layout'][k]['mean']:+.2f}" for k in sorted(st["by_layout"]))
        med = " / ".join(
            f"{vecs[n][name]['steerability']['abs_quantiles']['0.5']:.2f}" for n in vecs
        )
        row = [
            name, f"{sg['chosen']:g} ({ppl:.2f})", _ci(st), lay,
            f"{st['anti_steerable_fraction']:.2f}, {sp['ab']:.2f}, {sp['yes_no']:.2f}",
            *[_ci(vecs[n][name]["steerability"]) for n in others],
            med, f"{caa['caa_split_half_cosine']:.2f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
        if name in persona:
            n_persona += 1
            hits += bool(st["ci95"][0] > 0 or st["ci95"][1] < 0)
    # the same slopes with the letters' own effect removed (reliability.letter_adjusted)
    lines += ["", "Letter-adjusted steerability [95% CI] (the letters' own push removed), and the "
              "median R² of the per-input straight-line fits that the slopes come from:", "",
              "| dataset | " + " | ".join(vecs) + " |", "|" + "---|" * (len(vecs) + 1)]  # fmt: skip
    for name in vecs["caa"]:
        cells = []
        for n in vecs:
            la = vecs[n][name]["steerability"].get("letter_adjusted") or {}
            cell = _ci(la) if la.get("identified") else "not identified"
            lin = vecs[n][name]["steerability"].get("linearity")
            cells.append(cell + (f" · R² {lin['median_r2']:.2f}" if lin else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"CAA's 95% CI excludes 0 on {hits} of {n_persona} persona sets "
              f"(the issue's bar: at least half). Command: `{summary['command']}`, seed {summary['seed']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--datasets", nargs="*", default=DEFAULT, help="names under ../shared/datasets/mwe"
    )
    ap.add_argument(
        "--vectors",
        default="caa,sae_ts,random",
        help="comma-separated: caa, sae_ts (per-dataset SAE target + shipped effect model), "
        "random (a seeded Gaussian direction: the control), or saved SteeringVector paths",
    )
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--max-items", type=int, default=80)
    ap.add_argument("--train", type=float, default=0.5, help="train fraction (test: the rest)")
    ap.add_argument("--positions", default="tan", choices=("tan", "assistant", "answer"))
    ap.add_argument("--max-ppl-ratio", type=float, default=2.0)
    ap.add_argument("--no-ood", action="store_true", help="skip the persona-prompt variants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="runs/reliability")
    args = ap.parse_args(argv)
    print("command:", " ".join(["python", *sys.argv]))
    t0 = time.time()
    model, sae, hook = load_default()
    if args.hook != hook:
        sae = None
    paths = [MWE / f"{d}.jsonl" for d in args.datasets]
    vectors: dict[str, str | torch.Tensor] = {}
    for kind in [k.strip() for k in args.vectors.split(",") if k.strip()]:
        if kind in ("caa", "sae_ts", "random"):
            vectors[kind] = kind
        else:
            vectors[Path(kind).name] = SteeringVector.load(
                kind, model=model, hook_name=args.hook
            ).vector
    extra = {"sae": sae, "effect_model": load_default_effect_model()} if "sae_ts" in vectors else {}
    out = Path(args.out_dir)
    docs = run_reliability_multi(
        model, paths, args.hook, vectors,
        {n: out / n / "results.json" for n in vectors}, {n: out / n for n in vectors},
        max_items=args.max_items, train=args.train, seed=args.seed, positions=args.positions,
        max_ppl_ratio=args.max_ppl_ratio, variants=not args.no_ood,
        checkpoint_dir=out / "checkpoints", **extra,
    )  # fmt: skip
    print(f"{time.time() - t0:.0f}s", flush=True)
    names = list(docs)
    print(f"{'dataset':<42}{'vector':>8}{'s':>5}{'steer [95% CI]':>26}{'anti':>6}{'A/B':>6}"
          f"{'Y/N':>6}  by layout / Tan's λ steer")  # fmt: skip
    for p in paths:
        for n in names:
            r = docs[n][p.stem]
            st, sp, tan = r["steerability"], r["spurious"], r["tan_multipliers"]["steerability"]
            lay = " ".join(f"{k} {v['mean']:+.2f}" for k, v in st["by_layout"].items())
            print(
                f"{p.stem:<42}{n:>8}{r['strength']['chosen']:>5.2f}"
                f"{st['mean']:>+9.3f} [{st['ci95'][0]:+.3f}, {st['ci95'][1]:+.3f}]"
                f"{st['anti_steerable_fraction']:>6.2f}{sp['ab']:>6.2f}{sp['yes_no']:>6.2f}"
                f"  {lay} / {tan['mean']:+.3f}"
            )
    for n in names:
        print(n, "across datasets:", json.dumps(docs[n]["across_datasets"]))

    def slim(rec: dict) -> dict:  # per-sample slopes stay in each vector's results.json
        drop = ("per_sample", "residual_rmse", "by_combination")
        return {
            k: {x: y for x, y in rec[k].items() if x not in drop}
            for k in ("steerability", "spurious")
        }

    keep = ("n_train", "n_test", "split_counts", "positions", "propensity", "residual_norm",
            "caa_norm", "caa_split_half_cosine", "cosine_with_caa", "ood",
            "anti_steerable_fraction", "strength")  # fmt: skip

    def brief(r: dict) -> dict:
        top = r["tan_multipliers"]["max_strength_in_norm_units"]
        tan = slim(r["tan_multipliers"]) | {"max_strength_in_norm_units": top}
        return slim(r) | {"tan_multipliers": tan} | {k: r[k] for k in keep}

    summary = {
        "command": " ".join(["python", *sys.argv]),
        "seed": args.seed,
        "seconds": time.time() - t0,
        "vectors": {n: {p.stem: brief(docs[n][p.stem]) for p in paths} for n in names},
        "across_datasets": {n: docs[n]["across_datasets"] for n in names},
    }
    (Path(args.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    table = markdown_table(summary)
    (Path(args.out_dir) / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
