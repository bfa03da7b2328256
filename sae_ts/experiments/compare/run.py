"""Method comparison on concept tasks: CAA vs SAE latent vs SAE-TS vs sae-ts's solver.

A task is a directory in the SAE-TS format (:mod:`~sae_ts.experiments.compare.tasks`). The
protocol, per task:

1. **Roles.** The task's positive and negative texts are split by a seeded permutation into a
   build half and a judge half. The build half gives the CAA vector and the target latents; the
   judge half (with the criterion sentence) gives the behaviour judge. No text does both.
2. **Targets.** The ``n_features`` most selective latents on the build half, dense latents left
   out, with equal L2-normalised weights (:func:`~sae_ts.targets.select_targets`), or a manual
   choice. Every method except CAA aims at them; every vector is unit-norm.
3. **Sweep.** Norms are fractions of the per-token residual norm at the hook
   (:func:`~sae_ts.effects.typical_residual_norm`, 143.75 at layer 12 of the embedded model).
   Sample ``i`` of every method at every norm uses the same prompt and the same noise stream, so
   differences between methods are paired; norm 0 is the ``unsteered`` row, generated once.
4. **Scores.** Behaviour and coherence per sample; the held-out, paired choice of norm and the
   paired bootstrap CIs of :mod:`~sae_ts.experiments.compare.stats`.
5. **Target share and effect** of each method's vector at its chosen norm (at its best steered
   norm where unsteered was chosen), on the evaluation half's samples (32 rollouts at the full
   budget): the SAE features of the generated text, read during generation, minus those of the
   unsteered row on the same noise streams, with a paired bootstrap CI.
6. **Judge validation.** A seeded subset of the generations (half unsteered, half steered) is
   scored by independent judges as well (:mod:`~sae_ts.experiments.compare.judges`), and the
   agreement is reported.

Budget of ``--budget full`` (the README's 9-task run: ``CompareConfig()``), from token counts.
Per task: (1 unsteered + 4 methods x 10 norms) x 64 samples + 64 coherence-reference samples =
2,688 sequences x 16 new tokens = 43,008 generated tokens; the coherence judge re-reads them
(2,688 x ~19 tokens = ~51,000 tokens of forward pass); the LM judge of the validation reads 32
generations twice with its ~150-token prompt (~9,600 tokens); the embedding judge embeds 2,624
short texts. Measured single-thread CPU costs (contended machine, see the README): 12.3 ms per
generated token at batch 128, 9.7 ms per token of forward pass, 2.4 s per LM-judged text, 23 ms
per embedded text: ~1,160 CPU-s per task. Scaled to the ~100 tok/s per core of a quiet machine
(x 0.81) and 2 threads: ~8,500 CPU-s for 9 tasks, ~71 min of wall time plus ~2 min of loading.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ...artifacts import read_checkpoint, write_checkpoint
from ...backends import Backend
from ...baselines import caa_vector, sae_latent_vector
from ...effect_model import (
    EMBEDDED_EFFECT_MODELS,
    FirstTokenEffectModel,
    LinearEffectModel,
    load_default_effect_model,
)
from ...effect_model import load_effect_model as _load_saved
from ...effects import sae_fingerprint, typical_residual_norm
from ...errors import ConfigError, MissingFileError
from ...executors import Executor, LocalExecutor
from ...judges.offline import EmbeddingBehaviorJudge, auroc, load_embedder
from ...judges.validation import judge_agreement
from ...loading import Loaded, load_default
from ...models import load_hf_model
from ...selection import Selection, choose_targets
from ...solver import (
    Target,
    parse_feature_spec,
    predicted_stats,
    solve,
    solve_in_decoder_span,
    target_stats,
)
from ...targets import LatentDensity, latent_density
from ...types import LanguageModel, SAELike
from .config import DEFAULT_METHODS, METHODS, SOLVED, STEERED, CompareConfig
from .generation import Generations, instructed_prompt, paired_generations
from .judges import (
    JudgeFactory,
    ValidatorFactory,
    judges_from_args,
    llm_judges,
    offline_judges,
    offline_validators,
)
from .stats import (
    UNSTEERED,
    aggregate,
    difference_table,
    harmonic_mean,
    paired_comparison,
    plot_differences,
    plot_task,
    score_table,
)
from .tasks import Task, TaskRoles, load_task, split_roles

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "CompareConfig",
    "Generations",
    "Task",
    "TaskRoles",
    "build_vectors",
    "compare_task",
    "harmonic_mean",
    "judges_from_args",
    "llm_judges",
    "load_effect_model",
    "load_task",
    "offline_judges",
    "offline_validators",
    "paired_generations",
    "parse_feature_overrides",
    "pooled_validation",
    "run_comparison",
    "split_roles",
]


def build_vectors(
    model: LanguageModel,
    sae: SAELike,
    build: Task,
    hook_name: str,
    effect_model: LinearEffectModel | None,
    target: Target,
    methods: Sequence[str] | None = None,
    fgaa_target: Target | None = None,
) -> dict[str, torch.Tensor]:
    """Unit vectors for each steered method from the build-role texts.

    CAA is the mean difference of activations; ``sae`` the weighted decoder rows of ``target``'s
    raised latents; ``sae_ts`` (the paper's rule) and ``targeted`` solve for ``target`` with the
    effect model, ``targeted_span`` within ``target``'s own decoder rows, ``targeted_ft`` ascending
    the whole first-token model from ``targeted``'s solution, ``targeted_caa`` anchored to the
    CAA vector (the effect model correcting CAA); ``fgaa`` is the paper's rule on FGAA's own
    target (``fgaa_target``).
    """
    if methods is None:
        methods = [m for m in DEFAULT_METHODS if m != "prompt"]
    unknown = set(methods) - set(STEERED)
    if not methods:
        raise ConfigError(f"no methods to compare; choose from {METHODS}")
    if unknown:
        raise ConfigError(f"unknown steered methods {sorted(unknown)}; choose from {STEERED}")
    out: dict[str, torch.Tensor] = {}
    # built once, for the "caa" row and "targeted_caa"'s anchor
    caa = (
        caa_vector(model, build.pos, build.neg, hook_name, positions="all")
        if {"caa", "targeted_caa"} & set(methods)
        else None
    )
    for m in methods:
        if m == "caa":
            assert caa is not None
            out[m] = caa
        elif m == "sae":
            out[m] = sae_latent_vector(sae, target.raise_)
        else:
            if effect_model is None:
                raise ConfigError(f"method {m!r} needs an effect model")
            if m == "fgaa":
                if fgaa_target is None:
                    raise ConfigError("method 'fgaa' needs FGAA's target")
                out[m] = solve(effect_model, fgaa_target, "sae_ts")
            elif m == "targeted_span":
                out[m] = solve_in_decoder_span(effect_model, sae.W_dec, target)[0]
            elif m == "targeted_caa":
                assert caa is not None
                out[m] = solve(effect_model, target, "targeted", anchor=caa)
            elif m == "targeted_ft":
                if not isinstance(effect_model, FirstTokenEffectModel):
                    raise ConfigError(
                        "method 'targeted_ft' needs a first-token effect model (fit method "
                        f"ridge_first_token), not a {type(effect_model).__name__}"
                    )
                out[m] = solve(effect_model, target, "targeted", lm=model, sae=sae)
            else:
                out[m] = solve(effect_model, target, "sae_ts" if m == "sae_ts" else "targeted")
    return out


def _score(
    judges: Mapping[int, tuple[Any, Any]], texts: list[str], cfg: CompareConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Behaviour and coherence of ``texts`` (text ``k`` is sample ``k % samples``), per prompt."""
    n_p = len(cfg.prompts)
    beh, coh = np.zeros(len(texts)), np.zeros(len(texts))
    for pi, prompt in enumerate(cfg.prompts):
        idx = [k for k in range(len(texts)) if (k % cfg.samples) % n_p == pi]
        chunk = [texts[k] for k in idx]
        bj, cj = judges[pi]
        beh[idx] = bj.score(chunk, prompt)
        coh[idx] = cj.score(chunk, prompt)
    return beh, coh


def _validate(
    validators: Mapping[str, Any],
    texts: list[str],
    primary: np.ndarray,
    n_unsteered: int,
    cfg: CompareConfig,
) -> dict[str, Any]:
    """Agreement of the primary behaviour judge with each validator on a seeded subset of texts.

    ``texts[:n_unsteered]`` are unsteered; half the subset is drawn from them, half from the rest.
    """
    rng = np.random.default_rng(cfg.seed + 3)
    half = cfg.validation_samples // 2
    pick = np.concatenate([
        rng.choice(n_unsteered, min(half, n_unsteered), replace=False),
        n_unsteered + rng.choice(len(texts) - n_unsteered,
                                 min(cfg.validation_samples - half, len(texts) - n_unsteered),
                                 replace=False),
    ])  # fmt: skip
    n_p = len(cfg.prompts)
    out: dict[str, Any] = {"n": len(pick), "n_unsteered": int(min(half, n_unsteered))}
    raw: dict[str, list[float]] = {"behavior": primary[pick].tolist()}
    for name, judge in validators.items():
        scores = np.zeros(len(pick))
        for pi, prompt in enumerate(cfg.prompts):
            sel = [j for j, k in enumerate(pick) if (k % cfg.samples) % n_p == pi]
            if sel:
                scores[sel] = judge.score([texts[pick[j]] for j in sel], prompt)
        out[name] = judge_agreement(primary[pick], scores, seed=cfg.seed)
        raw[name] = scores.tolist()
    out["scores"] = raw
    return out


def pooled_validation(records: Mapping[str, Mapping[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Agreement of the behaviour judge with each validator over all tasks' validation texts
    (pooled Spearman with a bootstrap CI), and the mean of the per-task Spearman correlations."""
    vals = [r["validation"] for r in records.values() if "validation" in r]
    if not vals:
        return {}
    out: dict[str, Any] = {}
    for name in [k for k in vals[0]["scores"] if k != "behavior"]:
        a = np.concatenate([v["scores"]["behavior"] for v in vals])
        b = np.concatenate([v["scores"][name] for v in vals])
        per_task = [v[name]["spearman"] for v in vals if np.isfinite(v[name]["spearman"])]
        out[name] = {
            "pooled": judge_agreement(a, b, seed=seed),
            "mean_task_spearman": float(np.mean(per_task)) if per_task else float("nan"),
            "tasks": len(vals),
        }
    return out


def _effects(
    feats: torch.Tensor,
    index: Mapping[tuple[str, float], int],
    rec: Mapping[str, Any],
    target: Target,
    effect_model: LinearEffectModel | None,
    vectors: Mapping[str, torch.Tensor],
    cfg: CompareConfig,
) -> dict[str, dict[str, Any]]:
    """Target effect and share of each method on the evaluation half at its chosen norm (its best
    steered norm where unsteered was chosen), from per-sample differences to the unsteered row on
    the same noise streams, with a paired bootstrap CI over samples; and the share at every norm."""
    b_idx = torch.tensor(rec["split"]["evaluation"])
    base = feats[index[(UNSTEERED, 0.0)]]
    rng = np.random.default_rng(cfg.seed + 4)
    reps = torch.as_tensor(rng.integers(0, len(b_idx), (min(cfg.bootstrap, 500), len(b_idx))))
    out = {}
    for m in vectors:
        f = rec[m]["norm_fraction"] or rec[m]["best_steered_fraction"]
        diff = (feats[index[(m, f)]] - base)[b_idx]  # [n_b, d_sae], paired per sample
        st = target_stats(diff.mean(0), target)
        boot = [target_stats(diff[r].mean(0), target) for r in reps]
        unit = vectors[m].float() / vectors[m].float().norm()
        pred = None if effect_model is None else predicted_stats(effect_model, unit, target)
        curve = [
            target_stats((feats[index[(m, g)]] - base).mean(0), target)["target_share"]
            for g in cfg.steered_fractions
        ]
        out[m] = {
            "norm_fraction": f,
            "at_chosen_norm": bool(rec[m]["norm_fraction"]),
            "rollouts": len(b_idx),
            **st,
            "target_share_ci": _ci([b["target_share"] for b in boot]),
            "target_effect_ci": _ci([b["target_effect"] for b in boot]),
            "target_share_curve": {"norm_fraction": cfg.steered_fractions, "target_share": curve},
            "predicted_target_share": None if pred is None else pred["target_share"],
        }
    return out


def _ci(x: Sequence[float]) -> list[float]:
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]


def compare_task(
    model: LanguageModel,
    sae: SAELike,
    hook_name: str,
    task: Task,
    effect_model: LinearEffectModel | None,
    methods: Sequence[str] = DEFAULT_METHODS,
    cfg: CompareConfig | None = None,
    embedder: Any = None,
    out_dir: Path | None = None,
    judges: JudgeFactory | None = None,
    *,
    validators: ValidatorFactory | None = None,
    norm_unit: float | None = None,
    density: LatentDensity | None = None,
    features: Mapping[int, float] | Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run every method on one task; return the JSON-ready record (a plot into ``out_dir``).

    ``judges`` builds the behaviour and coherence judges from the judge-role texts (default
    :func:`~sae_ts.experiments.compare.judges.offline_judges`); ``validators`` the independent
    judges it is checked against (none: no validation). ``norm_unit`` defaults to the per-token
    residual norm at the hook, ``density`` (for excluding dense latents) to none; ``features``
    overrides the target latents. The SAE must read ``hook_name``.
    """
    cfg = cfg or CompareConfig()
    roles = split_roles(task, cfg.seed)
    unknown = set(methods) - set(METHODS)
    if not methods or unknown:
        raise ConfigError(f"unknown or no methods {sorted(unknown)}; choose from {METHODS}")
    if norm_unit is None:
        norm_unit = typical_residual_norm(model, hook_name)

    def select(rule: str, override: Mapping[int, float] | Sequence[int] | None) -> Selection:
        return choose_targets(
            rule, model, sae, roles.build.pos, roles.build.neg, hook_name, top=cfg.n_features,
            density=density, max_density=cfg.max_density, effect_model=effect_model,
            override=override,
        )  # fmt: skip

    selection = select(cfg.targets, features)
    target = selection.target()
    fgaa = None
    if "fgaa" in methods:
        fgaa = selection if selection.method == "fgaa" else select("fgaa", None)
    steered = [m for m in methods if m in STEERED]
    # with FGAA's own target chosen for every SAE method, the "fgaa" row (the paper's rule on it)
    # is the "sae_ts" row's vector: it is generated once and reported under both names
    alias = {"fgaa": "sae_ts"} if fgaa is selection and {"fgaa", "sae_ts"} <= set(steered) else {}
    vectors = build_vectors(
        model, sae, roles.build, hook_name, effect_model, target,
        [m for m in steered if m not in alias], None if fgaa is None else fgaa.target(),
    )  # fmt: skip
    fracs = cfg.steered_fractions
    conds = [(UNSTEERED, 0.0)] + [(m, f) for m in vectors for f in fracs]
    d = model.cfg.d_model
    vecs = torch.stack([torch.zeros(d) if m == UNSTEERED else vectors[m] for m, _ in conds])
    scales = torch.tensor([f * norm_unit for _, f in conds])
    run = paired_generations(model, hook_name, vecs, scales, cfg, stream=0, sae=sae)
    gens, feats = run.texts, run.features
    reference = paired_generations(model, hook_name, vecs[:1], scales[:1], cfg, stream=1).texts[0]
    prompted: list[str] = []
    if "prompt" in methods:  # the concept as an instruction; same noise streams as every row
        instructed = replace(
            cfg, prompts=tuple(instructed_prompt(model, task.name, p) for p in cfg.prompts)
        )
        prompted = paired_generations(
            model, hook_name, vecs[:1], scales[:1], instructed, stream=0, shown=cfg.prompts
        ).texts[0]
    make = judges or offline_judges(embedder, model)
    n_p = len(cfg.prompts)
    per_prompt = {
        pi: make(roles.judge, [t for i, t in enumerate(reference) if i % n_p == pi], p)
        for pi, p in enumerate(cfg.prompts)
    }
    flat = [t for g in gens for t in g]
    beh_all, coh_all = _score(per_prompt, [*flat, *prompted], cfg)
    n = cfg.samples
    by = {
        c: (beh_all[k * n : (k + 1) * n], coh_all[k * n : (k + 1) * n]) for k, c in enumerate(conds)
    }
    fixed = {}
    if prompted:
        fixed["prompt"] = (beh_all[len(flat) :], coh_all[len(flat) :])
    stats = paired_comparison(
        {m: {f: by[(m, f)][0] for f in fracs} for m in vectors},
        {m: {f: by[(m, f)][1] for f in fracs} for m in vectors},
        by[(UNSTEERED, 0.0)],
        reference="caa",
        seed=cfg.seed,
        bootstrap=cfg.bootstrap,
        fixed=fixed,
    )
    split_b = stats["split"]["evaluation"]
    rec: dict[str, Any] = {
        "task": task.name,
        "roles": roles.to_dict(),
        "features": [t.to_dict() for t in selection.targets],
        "features_source": {"input": "selectivity"}.get(selection.method, selection.method),
        "selection": {k: v for k, v in selection.to_dict().items() if k != "latents"},
        "fgaa_target": None if fgaa is None else fgaa.target().to_dict(),
        "norm_unit": norm_unit,
        "tokens_generated": (len(conds) + 1 + bool(prompted)) * n * cfg.max_new_tokens,
        "split": stats["split"],
    }
    bj0 = per_prompt[0][0]
    if isinstance(bj0, EmbeddingBehaviorJudge):  # held out: the build half was never seen by it
        rec["judge"] = {
            "behavior": "embedding judge on the judge-role texts and criterion",
            "loo_auroc_judge_texts": bj0.validate()["auroc_loo"],
            "auroc_build_texts": auroc(bj0.raw(roles.build.pos), bj0.raw(roles.build.neg)),
        }
    else:
        rec["judge"] = {"behavior": type(bj0).__name__}
    for row in [UNSTEERED, *vectors]:
        e = {k: v for k, v in stats[row].items()}
        f = e["norm_fraction"]
        texts = gens[conds.index((UNSTEERED, 0.0) if f == 0 else (row, f))]
        e["examples"] = [texts[i] for i in split_b[:3]]
        rec[row] = e
    if prompted:
        rec["prompt"] = {**stats["prompt"], "examples": [prompted[i] for i in split_b[:3]],
                         "instruction": instructed_prompt(model, task.name, cfg.prompts[0])}  # fmt: skip
    assert feats is not None
    index = {c: k for k, c in enumerate(conds)}
    for m, e in _effects(feats, index, rec, target, effect_model, vectors, cfg).items():
        rec[m]["effect"] = e
    for name, same in alias.items():
        rec[name] = {**json.loads(json.dumps(rec[same])), "same_vector_as": same}
    if validators is not None and cfg.validation_samples >= 4:
        rec["validation"] = {
            "method": "Spearman rank correlation (95% bootstrap CI over texts) and pairwise "
            "concordance between the behaviour judge and each independent judge, on a seeded "
            "subset of this task's generations: half unsteered, half steered (any method, norm)",
            **_validate(validators(roles.judge), flat, beh_all, n, cfg),
        }
    if out_dir is not None:
        _plot(task, rec, list(vectors), out_dir)
    return rec


def _plot(task: Task, rec: Mapping[str, Any], methods: list[str], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(task.path).name or task.name
    plot_task(task.name, rec, methods, out_dir / f"{name}_sweep.png")


def load_effect_model(
    path: str | Path | None = None, model: str = "smollm2-135m"
) -> tuple[LinearEffectModel, str]:
    """The effect model shipped for embedded ``model`` (``path`` None or ``"default"``) or a saved
    one; and where it came from."""
    if path is None or str(path) == "default":
        try:
            return load_default_effect_model(model), str(EMBEDDED_EFFECT_MODELS[model])
        except FileNotFoundError as e:
            raise MissingFileError(str(e)) from e
    return _load_saved(path), str(path)


def parse_feature_overrides(specs: Sequence[str]) -> dict[str, dict[int, float]]:
    """``["wedding=4230,17:0.5", ...]`` -> ``{"wedding": {4230: 1.0, 17: 0.5}}``.

    A spec without ``TASK=`` applies to every task (key ``"*"``). Weights default to 1 and are
    L2-normalised later; the id list follows :func:`~sae_ts.solver.parse_feature_spec`. A task
    named twice is refused.
    """
    out: dict[str, dict[int, float]] = {}
    for spec in specs:
        name, _, ids = spec.rpartition("=")
        if not ids.strip():
            raise ConfigError(f"--features {spec!r} names no latent (use TASK=ID[:WEIGHT],ID...)")
        key = name.strip() or "*"
        if key in out:
            raise ConfigError(f"--features: task {key!r} is given twice")
        out[key] = parse_feature_spec(ids, f"--features {spec!r}")
    return out


def run_comparison(
    task_dirs: Sequence[str | Path],
    methods: Sequence[str] = DEFAULT_METHODS,
    budget: str = "quick",
    seed: int = 0,
    effect_model_path: str | Path | None = None,
    out_dir: str | Path = "runs/compare",
    json_path: str | Path | None = None,
    device: str = "cpu",
    judges: JudgeFactory | None = None,
    log: Callable[[str], None] | None = None,
    features: Mapping[str, Mapping[int, float]] | None = None,
    validate: bool = True,
    executor: Executor | None = None,
    targets: str = "fgaa",
    model_name: str = "smollm2-135m",
    backend: Backend = "hooked",
) -> dict[str, Any]:
    """``sae-ts compare``: every task x method on the embedded model; JSON, tables, plots.

    ``targets``: the target-selection rule (:data:`sae_ts.selection.SELECTORS`) whose latents the
    SAE methods aim at. ``model_name``: the embedded model (``"smollm2-135m"`` or
    ``"gemma-3-270m"``); its shipped SAE and effect model are used. ``backend``: ``"hooked"`` or
    ``"bridge"`` (:mod:`sae_ts.backends`); the model's name, and so the checkpoints' keys, differ
    between the two.

    ``effect_model_path``: a saved :class:`~sae_ts.effect_model.LinearEffectModel`, or ``None`` /
    ``"default"`` for the one shipped for the embedded SAE. ``features``: per task (directory
    name, or ``"*"`` for all) a manual target ``{latent: weight}``. ``validate``: check the
    behaviour judge against independent judges (with the offline judges: the embedded instruct
    model as an LLM judge, and the criterion-sentence embedding). Returns the record written to
    ``json_path``, with the markdown tables under ``"table"`` and ``"differences"``.

    ``executor``: where the tasks run (default: here, one after the other). With a
    :class:`~sae_ts.executors.RayExecutor` whose workers load ``load_default(device=device)``, the
    tasks run in parallel, one per worker; the driver ships its effect model, norm unit and latent
    density, and writes the plots, tables and JSON. Every task is seeded on its own, so the records
    do not depend on the number of workers.
    """
    t0 = time.time()
    say = log or _quiet
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = CompareConfig.budget(budget, seed=seed, targets=targets)
    model, sae, hook = load_default(device=device, model=model_name, backend=backend)
    em, em_src = None, None
    if any(m in SOLVED for m in methods) or targets == "effect":
        em, em_src = load_effect_model(effect_model_path, model_name)
        if em.d_model != model.cfg.d_model or em.d_sae != int(sae.cfg.d_sae):
            raise ConfigError(f"effect model {em_src} does not fit the model and SAE")
    norm_unit = typical_residual_norm(model, hook)
    runner = _TaskRunner(em, tuple(methods), cfg, device, judges, validate, norm_unit,
                         latent_density(model, sae, hook), model.cfg.model_name,
                         sae_fingerprint(sae))  # fmt: skip
    jobs = []
    for d in task_dirs:
        override = (features or {}).get(Path(d).name, (features or {}).get("*"))
        jobs.append((load_task(d), override))
    ex = executor or LocalExecutor()
    # finished tasks are checkpointed under out_dir/tasks/ and reused when everything that decides
    # their record (protocol, methods, model, SAE, effect model, judges, task texts) is the same
    run_key = _run_key(cfg, methods, model.cfg.model_name, sae, em, validate, judges)
    done: dict[int, dict[str, Any]] = {}
    for i, job in enumerate(jobs):
        key = _task_key(run_key, *job)
        path = _checkpoint_path(out, key)
        rec = read_checkpoint(path, key, "task checkpoint")
        if rec is not None:
            done[i] = rec
            say(f"{Path(task_dirs[i]).name}: resumed from {out / 'tasks'}")
    todo = [i for i in range(len(jobs)) if i not in done]
    # the driver loads the judges' models only when the tasks run here
    local = runner(Loaded(model, sae, hook)) if ex.in_process and todo else cast(_TaskContext, None)
    for j, rec in ex.imap(_run_task, [jobs[i] for i in todo], local=local, remote=runner):
        i = todo[j]
        rec = json.loads(json.dumps(rec))  # the same record whether run now or resumed
        done[i] = rec
        write_checkpoint(
            _checkpoint_path(out, _task_key(run_key, *jobs[i])), _task_key(run_key, *jobs[i]), rec
        )
        _plot(jobs[i][0], rec, [m for m in methods if m in STEERED], out)
        say(
            f"{Path(task_dirs[i]).name}: "
            + ", ".join(f"{m} {rec[m]['score']:.3f}" for m in [UNSTEERED, *methods])
        )
    results = {Path(d).name: done[i] for i, d in enumerate(task_dirs)}
    rows = [UNSTEERED, *methods]
    mean = aggregate(results, rows, seed=seed, bootstrap=cfg.bootstrap)
    table = score_table({**results, "mean": mean}, rows)
    diffs = difference_table({**results, "mean": mean}, list(methods))
    (out / "table.md").write_text(table + "\n\n" + diffs + "\n")
    if "caa" in methods:
        plot_differences(mean, list(methods), out / "differences.png")
    recurring: dict[int, list[str]] = {}
    for key, r in results.items():
        for f in r["features"]:
            recurring.setdefault(f["latent"], []).append(key)
    doc: dict[str, Any] = {
        "config": {**cfg.to_dict(), "budget": budget, "methods": list(methods),
                   "tasks": [str(d) for d in task_dirs], "model": model.cfg.model_name,
                   "hook": hook, "norm_unit": norm_unit, "effect_model": em_src,
                   "effect_model_fit": None if em is None else em.record.get("fit"),
                   "judge": "offline" if judges is None else "llm",
                   "tokens_generated": sum(r["tokens_generated"] for r in results.values()),
                   "seconds": time.time() - t0},
        "mean": mean,
        "validation": pooled_validation(results, seed),
        "recurring_latents": {str(k): v for k, v in recurring.items() if len(v) > 1},
        "tasks": results,
    }  # fmt: skip
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(doc, indent=2))
    return {**doc, "table": table, "differences": diffs}


@dataclass(frozen=True)
class _TaskRunner:
    """What a worker needs, besides its own model and SAE, to run a task as the driver would.

    Called with a model and SAE (a worker's own load, or the driver's), it refuses another model or
    SAE than the driver's and builds the task context: the embedder and, with ``validate``, the
    independent judges. The norm unit and latent density are the driver's, not recomputed.
    """

    effect_model: LinearEffectModel | None
    methods: tuple[str, ...]
    cfg: CompareConfig
    device: str
    judges: JudgeFactory | None
    validate: bool
    norm_unit: float
    density: LatentDensity | None
    model_name: str
    sae_fingerprint: str

    def __call__(self, loaded: Loaded) -> _TaskContext:
        model, sae = loaded.model, loaded.sae
        if (model.cfg.model_name, sae_fingerprint(sae)) != (self.model_name, self.sae_fingerprint):
            raise ConfigError("a worker loaded another model or SAE than the driver")
        embedder = load_embedder(self.device)
        validators = None
        if self.validate and self.cfg.validation_samples >= 4:
            hf, tok = load_hf_model(device=self.device)
            validators = offline_validators(
                embedder, hf, tok, self.device, embedding_judge=self.judges is not None
            )
        return _TaskContext(self, loaded, embedder, validators)


@dataclass(frozen=True)
class _TaskContext:
    runner: _TaskRunner
    loaded: Loaded
    embedder: Any
    validators: ValidatorFactory | None


def _run_task(ctx: _TaskContext, job: tuple[Task, Mapping[int, float] | None]) -> dict[str, Any]:
    """One task's record, with its target override (:func:`compare_task`; no plot)."""
    (task, features), r = job, ctx.runner
    model, sae, hook = ctx.loaded
    return compare_task(
        model, sae, hook, task, r.effect_model, r.methods, r.cfg, ctx.embedder, None, r.judges,
        validators=ctx.validators, norm_unit=r.norm_unit, density=r.density, features=features,
    )  # fmt: skip


def _task_key(run_key: Mapping[str, Any], task: Task, features: Mapping[int, float] | None) -> str:
    """A digest of everything that decides one task's record."""
    doc = {**run_key, "task": [task.name, task.pos, task.neg, task.score_criterion,
                               task.coherence_criterion],
           "features": None if features is None else sorted(map(list, features.items()))}  # fmt: skip
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _run_key(
    cfg: CompareConfig,
    methods: Sequence[str],
    model_name: str,
    sae: SAELike,
    em: LinearEffectModel | None,
    validate: bool,
    judges: JudgeFactory | None,
) -> dict[str, Any]:
    """What decides every task's record besides the task itself, the same on every machine and
    checkout: no path (the effect model by its weights), no float computed at run time (the norm
    unit follows from the model and hook; its last bits differ between CPUs) and no object's
    address (judges by their ``key``; a factory without one is never resumed)."""
    judge_key = (
        "offline" if judges is None else getattr(judges, "key", f"unkeyed:{secrets.token_hex(8)}")
    )
    return {"config": cfg.to_dict(), "methods": list(methods), "model": model_name,
            "sae": sae_fingerprint(sae), "validate": validate,
            "effect_model": None if em is None else _weights_digest(em),
            "judges": judge_key}  # fmt: skip


def _weights_digest(em: LinearEffectModel) -> str:
    """A digest of an effect model's weights (as loaded, so the same wherever the file lies)."""
    h = hashlib.sha256()
    for t in (em.W, em.b):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _checkpoint_path(out: Path, key: str) -> Path:
    """Where a finished task's record is kept: ``out/tasks/<first 16 hex of its key>.json``.

    Named by the key, not the task: a file is found only by the settings and texts that made it,
    and its name says nothing about the task files it came from."""
    return out / "tasks" / f"{key[:16]}.json"


def _quiet(msg: str) -> None:
    """The default ``log``: say nothing."""
