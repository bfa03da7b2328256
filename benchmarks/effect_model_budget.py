"""How good is the effect model, against how good it could be? R² and noise ceiling vs budget.

Reads the campaign written by ``benchmarks/effect_campaign.py`` (``data/effects/``: ``train`` with
one rollout per prompt, and the held-out directions measured twice, ``test_a`` / ``test_b``), and:

* fits closed-form CV ridge on the first ``n`` training vectors for a range of ``n`` (any finished
  prefix is a seeded random sample of decoder rows and Gaussian directions), and scores each fit on
  the held-out directions against the average of the two test halves, next to the noise ceiling
  of that average (``sae_ts.effect_model.evaluate_heldout``), per group (held-out decoder rows,
  Gaussian directions) with 95% bootstrap CIs over test vectors. All effects are taken relative
  to the training run's baseline (each run's own baseline estimate carries a constant sampling
  error that no model of ``v`` can predict); the R² with each test run's own baseline, the
  protocol before issue #26's fix, is reported beside it (``own_baselines``);
* gives the ceiling as a function of the rollouts per prompt (noise variance ∝ 1/rollouts,
  estimated from the two halves);
* adds the ceiling against scale from protocol-probe JSON files, when given (``--probe``);
* compares fit methods on the same held-out set (``--methods``): the measured terms of
  ``ridge_disruption`` (next-token KL) and ``ridge_first_token`` (the first-token prior,
  :mod:`sae_ts.first_token`; ``--prior-cache`` keeps it between runs) are measured on the
  campaign's embedded model; for those two the R² of the linear part the solvers plan with is
  reported beside (``linear_part``);
* optionally saves the fit on all available training vectors (``--save-model``).

Example::

    python benchmarks/effect_model_budget.py --plot benchmarks/results/effect_model_budget.png \\
        --json benchmarks/results/effect_model_budget.json --probe runs/probe/*.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from sae_ts.effect_model import (
    FIT_METHODS,
    DisruptionEffectModel,
    FirstTokenEffectModel,
    dataset_disruption,
    dataset_prior,
    evaluate_heldout,
    fit,
    fit_ridge,
    noise_ceiling,
    prior_spec,
)
from sae_ts.effects import EffectDataset
from sae_ts.loading import load_default
from sae_ts.sae import load_default_sae
from sae_ts.types import LanguageModel

REPO = Path(__file__).resolve().parents[1]


def _rel(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (records travel)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def bootstrap(fn, n: int, reps: int, seed: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    vals = sorted(fn(torch.randint(0, n, (n,), generator=g).tolist()) for _ in range(reps))
    return vals[int(0.025 * reps)], vals[int(0.975 * reps) - 1]


def ceiling_vs_rollouts(
    a: torch.Tensor, b: torch.Tensor, r: int, ks: list[int]
) -> dict[int, float]:
    """Ceiling of a k-rollout measurement, from two r-rollout halves (noise variance ∝ 1/k)."""
    a, b = a.double(), b.double()
    m = (a + b) / 2
    noise_m = float(((a - b) ** 2).sum()) / 4  # noise of the 2r-rollout average
    sst_m = float(((m - m.mean(0)) ** 2).sum())
    true = sst_m - noise_m
    return {k: true / (true + noise_m * (2 * r) / k) for k in ks}


def train_kinds(data: Path, train: EffectDataset, n: int) -> list[str]:
    """The kind ("dec:<row>" or "gauss") of each loaded training vector, in load order.

    ``EffectDataset.load_dir`` skips chunks not finished yet (two shards of a running campaign
    leave gaps) and records the chunks it loaded, so the kinds are taken for those chunks.
    """
    kinds = json.loads((data / "train_kinds.json").read_text())
    cs = int(train.record["chunk_size"])
    out = [k for c in train.record["chunks"] for k in kinds[c * cs : (c + 1) * cs]][:n]
    if len(out) != n:
        raise SystemExit(f"{data}: {n} training vectors loaded but kinds for {len(out)}")
    return out


def design_mix(
    train: EffectDataset,
    ta: EffectDataset,
    tb: EffectDataset,
    groups: list[str],
    data: Path,
    n: int,
    seed: int,
) -> list[dict]:
    """Held-out R² of ridge on ``n`` training vectors with more or fewer Gaussian directions."""
    kinds = train_kinds(data, train, len(train))
    gauss = [i for i, k in enumerate(kinds) if k == "gauss"]
    dec = [i for i, k in enumerate(kinds) if k != "gauss"]
    rows = []
    for n_gauss in sorted({0, n // 8, n // 4, n // 2, min(len(gauss), n)}):
        if n_gauss > len(gauss) or n - n_gauss > len(dec):
            continue
        idx = torch.tensor(gauss[:n_gauss] + dec[: n - n_gauss])
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
        em, _ = fit_ridge(train.subset(idx), holdout=max(1, n // 10), seed=seed)
        ev = evaluate_heldout(em, ta, tb, groups)
        rows.append(
            {"n": n, "n_gauss": n_gauss, **{g: ev[g]["r2"] for g in ("all", "dec", "gauss")}}
        )
        print(
            f"mix: {n} vectors, {n_gauss:4d} Gaussian  R² all {ev['all']['r2']:+.3f}  "
            f"dec {ev['dec']['r2']:+.3f}  gauss {ev['gauss']['r2']:+.3f}",
            flush=True,
        )
    return rows


def ridge_with(
    train: EffectDataset,
    ta: EffectDataset,
    tb: EffectDataset,
    groups: list[str],
    sizes: list[int],
    z_train: torch.Tensor,
    z_test: torch.Tensor,
    label: str,
    seed: int,
) -> list[dict]:
    """Held-out R² of ridge on ``[v, z]`` for each size: ``z`` (``[n, k]``) are extra regressors
    of each training vector and of each held-out direction (the same for both test halves)."""

    def aug(ds: EffectDataset, z: torch.Tensor) -> EffectDataset:
        return dataclasses.replace(ds, inputs=torch.cat([ds.inputs, z], 1))

    ta_z, tb_z = aug(ta, z_test), aug(tb, z_test)
    rows = []
    for n in sizes:
        em, _ = fit_ridge(aug(train.head(n), z_train[:n]), holdout=max(1, n // 10), seed=seed)
        ev = evaluate_heldout(em, ta_z, tb_z, groups)
        row: dict = {"n": n, **{g: ev[g]["r2"] for g in ("all", "dec", "gauss")}}
        rows.append(row)
        print(
            f"ridge + {label} n={n:5d}  R² all {row['all']:+.3f}  dec {row['dec']:+.3f}  "
            f"gauss {row['gauss']:+.3f}",
            flush=True,
        )
    return rows


def decoder_likeness(
    train: EffectDataset,
    ta: EffectDataset,
    tb: EffectDataset,
    groups: list[str],
    sizes: list[int],
    model: str,
    seed: int,
) -> list[dict]:
    """Held-out R² of ridge on ``[v, z(v)]``, ``z(v) = max_j |cos(v, d_j)|`` over the SAE's
    decoder rows: 1 for a decoder row, small for a random direction. Not a shipped fit (the
    solvers need a linear model); it measures how much of the effects a disruption term holds."""
    dec = load_default_sae(model=model).W_dec.detach().float()
    dec = dec / dec.norm(dim=-1, keepdim=True)

    def z(ds: EffectDataset) -> torch.Tensor:
        return (ds.inputs.float() @ dec.T).abs().amax(1, keepdim=True)

    return ridge_with(train, ta, tb, groups, sizes, z(train), z(ta), "decoder-likeness", seed)


def campaign_z(
    train: EffectDataset, ta: EffectDataset, model: LanguageModel
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """:func:`sae_ts.effect_model.dataset_disruption` of the training vectors and of the held-out
    directions (measured at the training campaign's hook, scale and prompts: the held-out halves
    share them); and the seconds it took."""
    t0 = time.perf_counter()
    z_tr = dataset_disruption(model, train)
    z_te = dataset_disruption(model, ta)
    return z_tr, z_te, time.perf_counter() - t0


def paired_differences(
    preds: dict[tuple[str, int], torch.Tensor], methods: list[str], sizes: list[int],
    y: torch.Tensor, groups: list[str], args: argparse.Namespace,
) -> list[dict]:  # fmt: skip
    """Held-out R² of each method minus the first method's, at each size, with a paired
    bootstrap CI (both scored on the same resampled held-out directions)."""
    rows = []
    for m, n in ((m, n) for m in methods[1:] for n in sizes):
        row: dict = {"method": m, "vs": methods[0], "n": n}
        for g in ("all", "dec", "gauss"):
            idx = [i for i in range(len(groups)) if g == "all" or groups[i] == g]

            def diff(sample: list[int], idx: list[int] = idx, m: str = m, n: int = n) -> float:
                j = [idx[i] for i in sample]
                t = y[j].double()
                sst = float(((t - t.mean(0)) ** 2).sum())
                a = float(((preds[(m, n)][j] - t) ** 2).sum())
                b = float(((preds[(methods[0], n)][j] - t) ** 2).sum())
                return (b - a) / sst

            row[g] = {"diff": diff(list(range(len(idx)))),
                      "ci": bootstrap(diff, len(idx), args.bootstrap, args.seed)}  # fmt: skip
        rows.append(row)
        a = row["all"]
        print(f"{m} − {methods[0]} n={n:5d}: R² {a['diff']:+.3f} [{a['ci'][0]:+.3f}, "
              f"{a['ci'][1]:+.3f}]  gauss {row['gauss']['diff']:+.3f}", flush=True)  # fmt: skip
    return rows


def campaign_prior(
    train: EffectDataset, ta: EffectDataset, cache: Path | None
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """:func:`sae_ts.effect_model.dataset_prior` of the training vectors and of the held-out
    directions, on the campaign's embedded model and its shipped SAE; kept in ``cache`` (a
    safetensors file, with the campaign's fingerprint) when given, so a rerun skips it."""
    from safetensors.torch import load_file, save_file

    spec = json.dumps(prior_spec(train), sort_keys=True)  # a cache of other settings is stale
    key = f"{train.record.get('inputs_fingerprint')}:{len(train)}:{ta.record.get('inputs_fingerprint')}:{spec}"
    if cache is not None and cache.exists():
        t = load_file(str(cache))
        if t["key"].numpy().tobytes().decode() == key:
            print(f"first-token prior from {cache}")
            return t["train"], t["test"], {"seconds": float(t["seconds"]), "cache": _rel(cache)}
        print(f"{cache} is for another campaign or size; measuring again")
    loaded = load_default(model=train.record["model"])
    t0 = time.perf_counter()
    p_tr = dataset_prior(loaded.model, loaded.sae, train)
    p_te = dataset_prior(loaded.model, loaded.sae, ta)
    secs = time.perf_counter() - t0
    print(f"first-token prior of {len(train) + len(ta)} vectors in {secs:.0f} s", flush=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"train": p_tr, "test": p_te, "seconds": torch.tensor(secs),
                   "key": torch.frombuffer(bytearray(key.encode()), dtype=torch.uint8)},
                  str(cache))  # fmt: skip
    return p_tr, p_te, {"seconds": secs}


def disruption_kl(
    ta: EffectDataset, tb: EffectDataset, groups: list[str], z_tr: torch.Tensor,
    z_te: torch.Tensor, secs: float,
) -> dict:  # fmt: skip
    """How the measured disruption ``z`` relates to the held-out effects (the fits themselves are
    the ``ridge_disruption`` rows of ``--methods``)."""
    y = (ta.effects + tb.effects) / 2
    norm = (y - y.mean(0)).norm(dim=-1)
    dec = torch.tensor([g == "dec" for g in groups])
    res: dict = {
        "seconds": secs,
        "kl_median": {"dec": float(z_te[dec].median()), "gauss": float(z_te[~dec].median())},
        "corr_kl_effect_norm": float(torch.corrcoef(torch.stack([z_te, norm]))[0, 1]),
    }
    print(
        f"next-token KL for {len(z_tr) + len(z_te)} vectors in {secs:.0f} s; held-out median "
        f"{res['kl_median']['dec']:.2f} (decoder rows) / {res['kl_median']['gauss']:.2f} (Gaussian) nats; "
        f"corr(KL, |effect|) {res['corr_kl_effect_norm']:.2f}",
        flush=True,
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "data" / "effects")
    ap.add_argument("--sizes", default="144,288,576,1152,2304,4608")
    ap.add_argument("--max-vectors", type=int, default=0, help="use the first N training vectors")
    ap.add_argument(
        "--train-kinds", choices=["all", "dec"], default="all",
        help="dec: fit on the campaign's decoder rows only (its Gaussian directions left out of "
        "training; the held-out set is unchanged)",
    )  # fmt: skip
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe", type=Path, nargs="*", default=[])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--save-model", type=Path, default=None)
    ap.add_argument("--save-method", choices=list(FIT_METHODS), default="ridge",
                    help="the fit method of the --save-model model (on all training vectors)")  # fmt: skip
    ap.add_argument(
        "--mix", type=int, default=0,
        help="also fit on N vectors with 0, N/8, N/4, N/2 and all the Gaussian directions the "
        "campaign has (the rest decoder rows): the campaign-design lever",
    )  # fmt: skip
    ap.add_argument(
        "--decoder-likeness", default=None, metavar="MODEL",
        help="also fit ridge with one more regressor, max_j |cos(v, decoder row j)| of MODEL's "
        "shipped SAE: how far off the SAE's directions v points (a nonlinear disruption term)",
    )  # fmt: skip
    ap.add_argument(
        "--disruption-kl", default=None, metavar="MODEL",
        help="the model that measures z for the ridge_disruption method (default: the campaign's "
        "embedded model); also adds ridge_disruption to --methods",
    )  # fmt: skip
    ap.add_argument(
        "--prior-cache", type=Path, default=None,
        help="a safetensors file that keeps the measured first-token prior (ridge_first_token) "
        "between runs; measured again when it belongs to another campaign or size",
    )  # fmt: skip
    ap.add_argument("--methods", default="ridge",
                    help=f"comma-separated fit methods to compare, from {','.join(FIT_METHODS)}")  # fmt: skip
    ap.add_argument(
        "--target-features",
        type=Path,
        default=None,
        help="a JSON from effect_model_targets.py: also score R² on the latents its targets use",
    )
    args = ap.parse_args()
    print(f"command: python benchmarks/effect_model_budget.py {vars(args)}")
    train = EffectDataset.load_dir(args.data / "train")
    if args.max_vectors:  # a campaign still running: fit on its first N vectors only
        train = train.head(args.max_vectors)
    if args.train_kinds == "dec":
        kinds_t = train_kinds(args.data, train, len(train))
        train = train.subset([i for i, k in enumerate(kinds_t) if k.startswith("dec")])
    ta, tb = (
        EffectDataset.load_dir(args.data / "test_a"),
        EffectDataset.load_dir(args.data / "test_b"),
    )
    # one reference for every effect: the training run's baseline (see evaluate_heldout)
    ta_own, tb_own = ta, tb
    ta, tb = ta.rebase(train.baseline), tb.rebase(train.baseline)
    kinds = json.loads((args.data / "test_kinds.json").read_text())
    groups = ["dec" if k.startswith("dec") else "gauss" for k in kinds]
    r = int(ta.record["config"]["rollouts"])
    scale = float(train.scales[0])
    print(
        f"train: {len(train)} vectors (1 rollout), test: {len(ta)} directions x 2 halves x {r} "
        f"rollouts, scale {scale:.1f}"
    )
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "n_train": len(train),
                 "scale": scale, "test_rollouts_per_half": r, "fits": [],
                 "d_model": int(train.inputs.shape[1])}  # fmt: skip
    sizes = [s for s in (int(x) for x in args.sizes.split(",")) if s <= len(train)]
    if len(train) not in sizes:
        sizes.append(len(train))
    y = (ta.effects + tb.effects) / 2
    features = None
    if args.target_features:
        tasks = json.loads(args.target_features.read_text())["tasks"]
        features = sorted({int(f) for t in tasks.values() for f in t["target"]["raise"]})
        out["target_features"] = features
        print(f"target latents ({len(features)}, from {args.target_features}): {features}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.disruption_kl and "ridge_disruption" not in methods:
        methods.append("ridge_disruption")
    z_tr = z_te = lm = None
    if "ridge_disruption" in methods or args.save_method == "ridge_disruption":
        lm = load_default(model=args.disruption_kl or train.record["model"]).model
        z_tr, z_te, secs = campaign_z(train, ta, lm)
        out["disruption_kl"] = disruption_kl(ta, tb, groups, z_tr, z_te, secs)
    p_tr = p_te = None
    if "ridge_first_token" in methods or args.save_method == "ridge_first_token":
        p_tr, p_te, out["first_token"] = campaign_prior(train, ta, args.prior_cache)

    def measured(method: str, n: int | None) -> tuple[dict, dict]:
        """The fit's and the held-out evaluation's measured inputs for ``method``."""
        if method == "ridge_disruption":
            assert z_tr is not None and z_te is not None
            return {"disruption": z_tr[:n]}, {"disruption": z_te}
        if method == "ridge_first_token":
            assert p_tr is not None and p_te is not None
            return {"prior": p_tr[:n]}, {"prior": p_te}
        return {}, {}

    preds: dict[tuple[str, int], torch.Tensor] = {}  # held-out predictions, for paired CIs
    for method, n in ((m, n) for m in methods for n in sizes):
        sub = train.head(n)
        zkw, ekw = measured(method, n)
        # the fit's own split picks its strength; the real test is the separate held-out set
        em, rep = fit(sub, method, holdout=max(1, n // 10), seed=args.seed, **zkw)
        ev = evaluate_heldout(em, ta, tb, groups, features, **ekw)
        own = evaluate_heldout(em, ta_own, tb_own, groups, **ekw)  # each test run's own baseline
        lin = evaluate_heldout(em, ta, tb, groups) if ekw else ev  # what the solvers plan with
        row = {"method": method, "n": n, "alpha": rep.alpha, **{g: v for g, v in ev.items()},
               "own_baselines": {g: {"r2": v["r2"], "ceiling": v["ceiling"]}
                                 for g, v in own.items()},
               "linear_part": {g: v["r2"] for g, v in lin.items()}}  # fmt: skip
        # held-out predictions, with the measured input where the method has one
        pred_all = em.predict(ta.inputs.float(), *ekw.values()).double()
        preds[(method, n)] = pred_all  # for the paired CIs
        for g in ("all", "dec", "gauss"):
            idx = [i for i in range(len(ta)) if g == "all" or groups[i] == g]

            def r2_of(sample: list[int], idx: list[int] = idx, pred_all=pred_all) -> float:
                j = [idx[i] for i in sample]
                pred = pred_all[j]
                t = y[j].double()
                return 1 - float(((pred - t) ** 2).sum()) / float(((t - t.mean(0)) ** 2).sum())

            def ceil_of(sample: list[int], idx: list[int] = idx) -> float:
                j = [idx[i] for i in sample]
                return noise_ceiling(ta.effects[j], tb.effects[j])["ceiling"]

            row[g]["r2_ci"] = bootstrap(r2_of, len(idx), args.bootstrap, args.seed)
            row[g]["ceiling_ci"] = bootstrap(ceil_of, len(idx), args.bootstrap, args.seed)
        out["fits"].append(row)
        a = row["all"]
        print(
            f"{method:18s} n={n:5d}  R² {a['r2']:+.3f} [{a['r2_ci'][0]:+.3f}, {a['r2_ci'][1]:+.3f}]  ceiling "
            f"{a['ceiling']:.3f}  R²/ceiling {a['r2_over_ceiling']:.2f}  cos(vW, y-b) "
            f"{a['cosine_minus_b']:.3f}  | dec R² {row['dec']['r2']:+.3f} gauss R² "
            f"{row['gauss']['r2']:+.3f}  (own test baselines: R² {own['all']['r2']:+.3f}, "
            f"gauss {own['gauss']['r2']:+.3f})"
            + (f"  linear part R² {lin['all']['r2']:+.3f}" if ekw else ""),
            flush=True,
        )
        if features:
            print(
                f"         target latents: R² {a['r2_features']:+.3f}  ceiling "
                f"{a['ceiling_features']:.3f}  | dec {row['dec']['r2_features']:+.3f} gauss "
                f"{row['gauss']['r2_features']:+.3f}",
                flush=True,
            )
    if len(methods) > 1:
        out["paired"] = paired_differences(preds, methods, sizes, y, groups, args)
    if args.decoder_likeness:
        out["decoder_likeness"] = decoder_likeness(
            train, ta, tb, groups, sizes, args.decoder_likeness, args.seed
        )
    if args.mix:
        out["mix"] = design_mix(train, ta, tb, groups, args.data, args.mix, args.seed)
    out["ceiling_vs_rollouts"] = {
        g: ceiling_vs_rollouts(
            ta.effects[[i for i in range(len(ta)) if g == "all" or groups[i] == g]],
            tb.effects[[i for i in range(len(ta)) if g == "all" or groups[i] == g]],
            r,
            [1, 2, 4, 8, 16, 64],
        )
        for g in ("all", "dec", "gauss")
    }
    print("ceiling vs rollouts per prompt:", json.dumps(out["ceiling_vs_rollouts"]["all"]))
    probe_rows = []
    for p in args.probe:
        probe_rows += [x for x in json.loads(p.read_text())["rows"] if x["group"] == "all"]
    out["probe"] = probe_rows
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    if args.save_model:
        zkw, ekw = measured(args.save_method, None)
        em, rep = fit(train, args.save_method, max(1, len(train) // 10), args.seed, **zkw)
        ev = evaluate_heldout(em, ta, tb, groups, features, **ekw)
        em.record["heldout"] = ev
        em.record["campaign"] = {"n_train": len(train), "scale": scale, "data": _rel(args.data)}
        # the figures the demo and the docs quote (held-out directions, vs the 4-rollout average)
        em.record.update(
            n_vectors=len(train),
            scale=scale,
            heldout_r2=ev["all"]["r2"],
            heldout_ceiling=ev["all"]["ceiling"],
            heldout_cosine_minus_b=ev["all"]["cosine_minus_b"],
            heldout_vectors=len(ta),
            heldout_rollouts=2 * r,
            hook=train.record.get("sae_hook"),
            sae_fingerprint=train.record.get("sae_fingerprint"),
            command="python benchmarks/effect_model_budget.py " + " ".join(sys.argv[1:]),
        )
        em.W, em.b = em.W.half(), em.b.half()
        if isinstance(em, FirstTokenEffectModel):  # the prior's part, half size as W
            em.W_direct, em.M, em.basis = em.W_direct.half(), em.M.half(), em.basis.half()
        if isinstance(em, DisruptionEffectModel):  # F stays float32: its entries are ~1e-8
            em.M = em.M.half()
            em.attach_fisher(lm)
        em.save(args.save_model)
        print(f"saved {args.save_model} ({rep})")
    if args.plot:
        plot(out, args.plot)


def plot(out: dict, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    panels = 3 if out.get("probe") else 2  # the scale probe's panel only with --probe
    fig = Figure(figsize=(13 if panels == 3 else 9, 4))
    ax = fig.add_subplot(1, panels, 1)
    methods = list(dict.fromkeys(f.get("method", "ridge") for f in out["fits"]))
    for k, method in enumerate(methods):
        fits = [f for f in out["fits"] if f.get("method", "ridge") == method]
        style = ("o-", "s:", "^-.")[k % 3]
        for g, c in (("all", "k"), ("dec", "tab:blue"), ("gauss", "tab:orange")):
            ns = [f["n"] for f in fits]
            label = f"R² ({g})" + (f", {method}" if len(methods) > 1 else "")
            ax.plot(ns, [f[g]["r2"] for f in fits], style, color=c, label=label)
            if k == 0:
                ax.fill_between(ns, [f[g]["r2_ci"][0] for f in fits],
                                [f[g]["r2_ci"][1] for f in fits], color=c, alpha=0.15)  # fmt: skip
                ax.plot(ns, [f[g]["ceiling"] for f in fits], "--", color=c, label=f"ceiling ({g})")
        if "own_baselines" in fits[0]:
            ax.plot([f["n"] for f in fits], [f["own_baselines"]["all"]["r2"] for f in fits],
                    style, color="grey", alpha=0.6, mfc="none",
                    label="R² (all), own test baselines" + (f", {method}" if len(methods) > 1 else ""))  # fmt: skip
    if out.get("decoder_likeness"):
        rows = out["decoder_likeness"]
        for g, c in (("all", "tab:green"), ("gauss", "tab:olive")):
            ax.plot([r["n"] for r in rows], [r[g] for r in rows], "d-", color=c, ms=4,
                    label=f"R² ({g}), ridge + decoder-likeness")  # fmt: skip
    ax.axvline(out.get("d_model", 576), color="grey", lw=0.8, ls=":")  # d_model
    half = 0.5 * out["fits"][-1]["all"]["ceiling"]
    ax.axhline(half, color="k", lw=0.8, ls=":", label="½ ceiling (all)")
    ax.set_xscale("log")
    ax.set_xticks(ns, [f"{n:,}" for n in ns], fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training vectors (1 rollout each)")
    ax.set_ylabel("held-out R²")
    ax.set_title(f"fit vs budget (scale {out['scale']:.0f})")
    ax.set_ylim(top=1.35)  # room for the legend above the curves
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    ax = fig.add_subplot(1, panels, 2)
    for g, c in (("all", "k"), ("dec", "tab:blue"), ("gauss", "tab:orange")):
        d = out["ceiling_vs_rollouts"][g]
        ax.plot([int(k) for k in d], list(d.values()), "o-", color=c, label=g)
    ax.set_xscale("log")
    ax.set_xlabel("rollouts per prompt")
    ax.set_ylabel("noise ceiling (R² of true effects)")
    ax.set_title("ceiling vs rollouts")
    ax.legend(fontsize=7)
    if panels == 3:
        ax = fig.add_subplot(1, panels, 3)
        protos = sorted({r["protocol"] for r in out["probe"]})
        for p in protos:
            rows = sorted((r for r in out["probe"] if r["protocol"] == p),
                          key=lambda r: r["fraction"])  # fmt: skip
            ax.plot(
                [r["fraction"] for r in rows], [r["split_half_r2"] for r in rows], "o-", label=p
            )
        ax.set_xlabel("scale / per-token residual norm")
        ax.set_ylabel("split-half R² (2 rollouts per half)")
        ax.set_title("reliability vs scale (probe)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
