"""Method comparison on concept tasks: CAA vs SAE latent vs SAE-TS vs sae-ts's solver.

A task is a directory in the SAE-TS format: ``act_steer.json`` (``pos``/``neg`` texts) and
``criteria.json`` (``[{"name", "score", "coherence"}]``). Every method gets the same target
features (from :func:`~sae_ts.baselines.find_features` on the task's texts), a unit vector, and the
same sweep of norms, defined relative to the typical residual norm at the hook (the median over
the task's texts, sinks excluded), because absolute norms do not transfer between models.

Protocol, made sounder than the paper's in-sample maximum:

* samples per scale are split in two halves by a seeded permutation; the scale with the best
  score on half A is chosen, and the score reported is measured on half B, with a 95% bootstrap
  CI over B's samples (the chosen scale held fixed);
* the paper's figure (the maximum over scales of the score on all samples) is reported beside it.

The score is the SAE-TS metric, mean behaviour x mean coherence; the AxBench harmonic mean is
reported too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformer_lens import HookedTransformer

from .._util import to_tokens
from ..baselines import caa_vector, find_features, mean_activations, sae_latent_vector
from ..effect_model import DEFAULT_EFFECT_MODEL, LinearEffectModel, load_default_effect_model
from ..effects import EffectConfig, EffectEstimator, sae_fingerprint
from ..errors import ConfigError, MissingFileError
from ..evaluation import measure_vector
from ..executors import Executor, LocalExecutor
from ..generation import generate
from ..judges.llm import APICriterionJudge, ChatClient, HFCriterionJudge
from ..judges.offline import CoherenceJudge, EmbeddingBehaviorJudge, load_embedder
from ..loading import Loaded, load_default
from ..solver import Target, solve
from ..steering import SteeringHook
from ..types import SAELike
from .pipeline import DemoBudget, estimate_and_fit

__all__ = [
    "CompareConfig",
    "Task",
    "build_vectors",
    "compare_task",
    "harmonic_mean",
    "judges_from_args",
    "llm_judges",
    "load_task",
    "markdown_table",
    "offline_judges",
    "run_comparison",
    "select_scale",
    "sweep",
    "typical_norm",
]

METHODS = ("caa", "sae", "sae_ts", "targeted")


@dataclass(frozen=True)
class Task:
    """A concept task: contrastive texts and the judge's criteria."""

    name: str
    pos: list[str]
    neg: list[str]
    score_criterion: str
    coherence_criterion: str
    path: str = ""


def load_task(path: str | Path) -> Task:
    """Read an SAE-TS task directory; raise a clear error for anything missing or malformed."""
    p = Path(path)
    files = {n: p / n for n in ("act_steer.json", "criteria.json")}
    for n, f in files.items():
        if not f.exists():
            raise MissingFileError(f"task {p} has no {n}")
    try:
        act = json.loads(files["act_steer.json"].read_text())
        crit = json.loads(files["criteria.json"].read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"task {p}: malformed JSON: {e}") from e
    if not isinstance(act, dict) or not act.get("pos") or not act.get("neg"):
        raise ConfigError(f"task {p}: act_steer.json needs non-empty 'pos' and 'neg' lists")
    c = crit[0] if isinstance(crit, list) and crit else crit
    if not isinstance(c, dict) or not {"score", "coherence"} <= set(c):
        raise ConfigError(f"task {p}: criteria.json needs 'score' and 'coherence'")
    return Task(
        str(c.get("name", p.name)),
        list(act["pos"]),
        list(act["neg"]),
        c["score"],
        c["coherence"],
        str(p),
    )


@dataclass(frozen=True)
class CompareConfig:
    """Sweep and sampling settings. ``quick`` and ``full`` are the CLI budgets."""

    prompts: tuple[str, ...] = ("I think",)
    norm_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    samples: int = 32  # per scale and prompt
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = 0.3
    n_features: int = 3
    bootstrap: int = 1000
    seed: int = 0

    @classmethod
    def budget(cls, name: str, **kw: Any) -> CompareConfig:
        if name == "quick":
            return cls(
                norm_fractions=(0.0, 0.5, 1.0, 2.0),
                samples=8,
                max_new_tokens=16,
                bootstrap=200,
                **kw,
            )
        if name == "full":
            return cls(
                norm_fractions=(0.0, 0.25, 0.5, 1.0, 1.5, 2.0), samples=32, max_new_tokens=20, **kw
            )
        raise ConfigError(f"unknown budget {name!r}; use 'quick' or 'full'")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def typical_norm(model: HookedTransformer, texts: Sequence[str], hook_name: str) -> float:
    """Median residual norm at ``hook_name`` over ``texts`` (document start and sinks left out)."""
    acts = mean_activations(model, texts, hook_name, "all")  # per-text means: robust, sink-free
    return float(acts.norm(dim=-1).median())


def build_vectors(
    model: HookedTransformer,
    sae: SAELike,
    task: Task,
    hook_name: str,
    effect_model: LinearEffectModel | None,
    methods: Sequence[str] = METHODS,
    n_features: int = 3,
) -> tuple[dict[str, torch.Tensor], list[tuple[int, float]]]:
    """Unit vectors for each method, all aimed at the same target features."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ConfigError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    feats = find_features(model, sae, task.pos, task.neg, hook_name, top=n_features)
    if not feats:
        raise ConfigError(f"task {task.name}: no SAE latent fires more on the positive texts")
    total = sum(s for _, s in feats)
    target = Target({f: s / total for f, s in feats})
    out: dict[str, torch.Tensor] = {}
    for m in methods:
        if m == "caa":
            out[m] = caa_vector(model, task.pos, task.neg, hook_name, positions="all")
        elif m == "sae":
            out[m] = sae_latent_vector(sae, target.raise_)
        else:
            if effect_model is None:
                raise ConfigError(f"method {m!r} needs an effect model")
            out[m] = solve(effect_model, target, "sae_ts" if m == "sae_ts" else "targeted")
    return out, feats


@torch.no_grad()
def sweep(
    model: HookedTransformer,
    hook_name: str,
    vector: torch.Tensor,
    scales: Sequence[float],
    cfg: CompareConfig,
    seed_offset: int = 0,
) -> dict[float, list[str]]:
    """Generations at every scale (one batched generation per prompt; one scale per row group)."""
    out: dict[float, list[str]] = {float(s): [] for s in scales}
    for pi, prompt in enumerate(cfg.prompts):
        toks = to_tokens(model, [prompt])
        rows = len(scales) * cfg.samples
        row_scales = torch.tensor([float(s) for s in scales for _ in range(cfg.samples)])
        vecs = vector.float()[None].expand(rows, -1)
        g = torch.Generator(device=model.cfg.device).manual_seed(
            cfg.seed * 1000 + seed_offset * 17 + pi
        )
        hook = SteeringHook(vecs, row_scales)
        ids = generate(
            model, toks.expand(rows, -1), cfg.max_new_tokens, temperature=cfg.temperature,
            top_k=cfg.top_k, top_p=cfg.top_p, generator=g, fwd_hooks=[(hook_name, hook)],
        )  # fmt: skip
        texts = [str(model.to_string(r[1:])) for r in ids]
        for i, s in enumerate(scales):
            out[float(s)].extend(texts[i * cfg.samples : (i + 1) * cfg.samples])
    return out


def harmonic_mean(a: float, b: float) -> float:
    """AxBench's aggregate of two scores (0 if either is 0)."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


@dataclass
class Selection:
    """Held-out scale choice and the figures reported for it."""

    best_scale: float
    score: float
    ci: tuple[float, float]
    behavior: float
    coherence: float
    harmonic: float
    in_sample_max: float
    in_sample_scale: float
    curve: dict[str, list[float]] = field(default_factory=dict)


def select_scale(
    behavior: dict[float, np.ndarray],
    coherence: dict[float, np.ndarray],
    seed: int = 0,
    bootstrap: int = 1000,
) -> Selection:
    """Choose the scale on half A of the samples; report half B with a bootstrap CI.

    ``behavior[s]`` and ``coherence[s]`` hold per-sample scores at scale ``s``; sample ``i`` at
    every scale shares the index split.
    """
    scales = sorted(behavior)
    n = len(behavior[scales[0]])
    if n < 2 or any(len(behavior[s]) != n or len(coherence[s]) != n for s in scales):
        raise ConfigError("need >= 2 samples per scale, the same number at every scale")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    a, b = perm[: n // 2], perm[n // 2 :]

    def score(idx: np.ndarray, s: float) -> float:
        return float(behavior[s][idx].mean() * coherence[s][idx].mean())

    best = max(scales, key=lambda s: score(a, s))
    boots = []
    for _ in range(bootstrap):
        r = rng.choice(b, size=len(b), replace=True)
        boots.append(score(r, best))
    everyone = np.arange(n)
    full = {s: score(everyone, s) for s in scales}
    ins = max(scales, key=lambda s: full[s])
    beh, coh = float(behavior[best][b].mean()), float(coherence[best][b].mean())
    return Selection(
        best_scale=float(best), score=score(b, best),
        ci=(float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))),
        behavior=beh, coherence=coh, harmonic=harmonic_mean(beh, coh),
        in_sample_max=full[ins], in_sample_scale=float(ins),
        curve={
            "scale": [float(s) for s in scales],
            "behavior": [float(behavior[s].mean()) for s in scales],
            "coherence": [float(coherence[s].mean()) for s in scales],
            "score": [full[s] for s in scales],
        },
    )  # fmt: skip


def plot_task(name: str, curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Behaviour and coherence against scale for each method."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3, sharex=True)
    for method, c in curves.items():
        for ax, key in zip(axes, ("behavior", "coherence", "score")):
            ax.plot(c["norm_fraction"], c[key], marker="o", label=method)
    for ax, title in zip(axes, ("behaviour", "coherence", "behaviour x coherence")):
        ax.set(title=title, xlabel="scale / typical residual norm", ylim=(0, 1))
    axes[0].legend()
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


ScoreFn = Callable[[list[str], str], np.ndarray]
JudgeFactory = Callable[["Task", list[str], str], tuple[Any, Any]]
"""``(task, unsteered_generations, prompt) -> (behaviour_judge, coherence_judge)``."""


def offline_judges(embedder: Any = None, model: HookedTransformer | None = None) -> JudgeFactory:
    """The default judges: embedding behaviour judge and unsteered-likelihood coherence judge."""

    def make(task: Task, unsteered: list[str], prompt: str) -> tuple[Any, Any]:
        if model is None:
            raise ConfigError("offline_judges needs the model for the coherence judge")
        return (
            EmbeddingBehaviorJudge(task.pos, task.neg, task.score_criterion, embedder),
            CoherenceJudge(model, unsteered, prompt=prompt),
        )

    return make


def llm_judges(
    client: Any = None, hf_model: Any = None, hf_tokenizer: Any = None, device: str = "cpu"
) -> JudgeFactory:
    """The SAE-TS paper's judging: one LLM scores the task's behaviour and coherence criteria.

    Pass an OpenAI-compatible :class:`~sae_ts.llm_judges.ChatClient` (``client``) or a local
    Hugging Face model (``hf_model``, path or loaded model with ``hf_tokenizer``, on ``device``).
    The HF model is loaded once and shared by both judges and all tasks.
    """
    shared: dict[str, Any] = {}

    def make(task: Task, unsteered: list[str], prompt: str) -> tuple[Any, Any]:
        if client is not None:
            return (
                APICriterionJudge(task.score_criterion, client),
                APICriterionJudge(task.coherence_criterion, client),
            )
        if hf_model is None:
            raise ConfigError("llm_judges needs a chat client or a Hugging Face model")
        m, tok = shared.get("model", hf_model), shared.get("tok", hf_tokenizer)
        b = HFCriterionJudge(task.score_criterion, m, tokenizer=tok, device=device)
        shared.update(model=b.model, tok=b.tok)
        c = HFCriterionJudge(task.coherence_criterion, b.model, tokenizer=b.tok, device=device)
        return b, c

    return make


def compare_task(
    model: HookedTransformer,
    sae: SAELike,
    hook_name: str,
    task: Task,
    effect_model: LinearEffectModel | None,
    methods: Sequence[str] = METHODS,
    cfg: CompareConfig | None = None,
    estimator: Any = None,
    baseline: torch.Tensor | None = None,
    embedder: Any = None,
    out_dir: Path | None = None,
    judges: JudgeFactory | None = None,
) -> dict[str, Any]:
    """Run every method on one task; return the JSON-ready record (plots into ``out_dir``).

    ``judges`` builds the behaviour and coherence judges for the task (default:
    :func:`offline_judges`). Scale 0 (no steering) is generated once and shared by all methods.
    """

    cfg = cfg or CompareConfig()
    vectors, feats = build_vectors(
        model, sae, task, hook_name, effect_model, methods, cfg.n_features
    )
    total = sum(s for _, s in feats)
    target = Target({f: s / total for f, s in feats})
    norm = typical_norm(model, task.pos + task.neg, hook_name)
    scales = [f * norm for f in cfg.norm_fractions]
    zero = torch.zeros(model.cfg.d_model)
    unsteered = sweep(model, hook_name, zero, [0.0], cfg, seed_offset=999)[0.0]
    bj, cj = (judges or offline_judges(embedder, model))(
        task, unsteered[: cfg.samples], cfg.prompts[0]
    )

    def judge(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        b, c = [], []
        for pi, prompt in enumerate(cfg.prompts):
            chunk = texts[pi * cfg.samples : (pi + 1) * cfg.samples]
            b.append(bj.score(chunk, prompt))
            c.append(cj.score(chunk, prompt))
        return np.concatenate(b), np.concatenate(c)

    validator = (
        bj
        if isinstance(bj, EmbeddingBehaviorJudge)
        else EmbeddingBehaviorJudge(task.pos, task.neg, task.score_criterion, embedder)
    )
    record: dict[str, Any] = {
        "features": [[f, s] for f, s in feats],
        "typical_norm": norm,
        "judge_auroc_loo": validator.validate()["auroc_loo"],
    }
    shared: dict[float, tuple[list[str], np.ndarray, np.ndarray]] = {}
    if 0.0 in scales:  # the unsteered point is the same for every method: generate it once
        g0 = sweep(model, hook_name, zero, [0.0], cfg, seed_offset=998)[0.0]
        shared[0.0] = (g0, *judge(g0))
    curves: dict[str, dict[str, list[float]]] = {}
    for i, (method, v) in enumerate(vectors.items()):
        rest = [s for s in scales if s not in shared]
        gens = sweep(model, hook_name, v, rest, cfg, i) if rest else {}
        beh, coh = {}, {}
        for s, texts in gens.items():
            beh[s], coh[s] = judge(texts)
        for s, (texts, b, c) in shared.items():
            gens[s], beh[s], coh[s] = texts, b, c
        sel = select_scale(beh, coh, seed=cfg.seed, bootstrap=cfg.bootstrap)
        entry: dict[str, Any] = {
            "score": sel.score, "ci": list(sel.ci), "best_scale": sel.best_scale,
            "best_norm_fraction": sel.best_scale / norm if norm else 0.0,
            "behavior": sel.behavior, "coherence": sel.coherence, "harmonic": sel.harmonic,
            "in_sample_max": sel.in_sample_max, "in_sample_scale": sel.in_sample_scale,
            "examples": gens[sel.best_scale][:3],
        }  # fmt: skip
        if estimator is not None:
            m = measure_vector(
                estimator,
                v,
                sel.best_scale,
                target,
                baseline=baseline,
                effect_model=effect_model,
                vector_id=2_000_000 + i,
            )
            entry.update(
                {
                    "target_effect": m.target_effect,
                    "off_target_norm": m.off_target_norm,
                    "target_share": m.target_share,
                }
            )
        record[method] = entry
        curves[method] = {**sel.curve, "norm_fraction": list(cfg.norm_fractions)}
    record["curves"] = curves
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_task(task.name, curves, out_dir / f"{Path(task.path).name or task.name}_sweep.png")
    return record


def markdown_table(results: dict[str, dict[str, Any]], methods: Sequence[str]) -> str:
    """Tasks x methods: held-out score [95% CI] (in-sample max)."""
    head = "| task | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods)
    rows = [head]
    for task, r in results.items():
        cells = [
            f"{r[m]['score']:.3f} [{r[m]['ci'][0]:.3f}, {r[m]['ci'][1]:.3f}] ({r[m]['in_sample_max']:.3f})"
            for m in methods
        ]
        rows.append(f"| {task} | " + " | ".join(cells) + " |")
    means = [float(np.mean([r[m]["score"] for r in results.values()])) for m in methods]
    rows.append("| **mean** | " + " | ".join(f"**{x:.3f}**" for x in means) + " |")
    return "\n".join(rows)


def run_comparison(
    task_dirs: Sequence[str | Path],
    methods: Sequence[str] = METHODS,
    budget: str = "quick",
    seed: int = 0,
    effect_model_path: str | Path | None = None,
    out_dir: str | Path = "runs/compare",
    json_path: str | Path | None = None,
    device: str = "cpu",
    judges: JudgeFactory | None = None,
    log: Callable[[str], None] | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """``sae-ts compare``: every task x method on the embedded model; JSON, table, plots.

    Returns the record written to ``json_path``, with the markdown table under ``"table"``;
    ``log`` receives one line per task.

    ``effect_model_path``: a saved :class:`LinearEffectModel`, ``"default"`` (the one shipped
    for the embedded SAE, falling back to estimating one if it is missing) or ``"estimate"``
    (a small one estimated now with the demo's budget, cached in ``out_dir``).

    ``executor``: where the tasks run (default: here, one after the other); with a
    :class:`~sae_ts.executors.RayExecutor` (workers loading ``load_default(device=device)``) the
    tasks run in parallel, each on one worker, and this process writes the plots and the JSON.
    Every task is seeded on its own, so the records do not depend on the number of workers.
    """
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = CompareConfig.budget(budget, seed=seed)
    model, sae, hook = load_default(device=device)
    needs_model = any(m in ("sae_ts", "targeted") for m in methods)
    em = None
    if needs_model:
        choice = str(effect_model_path or "default")
        if choice not in ("default", "estimate"):
            em = LinearEffectModel.load(choice)
        else:
            if choice == "default":
                try:
                    em = load_default_effect_model()
                    effect_model_path = DEFAULT_EFFECT_MODEL
                except FileNotFoundError:
                    choice = "estimate"
            if choice == "estimate":
                em = _fit_default_effect_model(
                    model, sae, hook, out / "effect_model_work", seed, log
                )
                effect_model_path = None
    est = EffectEstimator(model, sae, config=EffectConfig(rollouts=1), seed=seed)
    baseline = est.baseline(progress=False)
    embedder = load_embedder(device)
    tasks = [load_task(d) for d in task_dirs]
    runner = _TaskRunner(em, tuple(methods), cfg, seed, baseline, device, judges,
                         model.cfg.model_name, sae_fingerprint(sae))  # fmt: skip
    local = _TaskContext(runner, model, sae, hook, est, embedder)
    done: dict[int, dict[str, Any]] = {}
    for i, rec in (executor or LocalExecutor()).imap(_run_task, tasks, local=local, remote=runner):
        done[i], task = rec, tasks[i]
        plot_task(task.name, rec["curves"], out / f"{Path(task.path).name or task.name}_sweep.png")
        (log or _quiet)(
            f"{Path(task.path).name}: " + ", ".join(f"{m} {rec[m]['score']:.3f}" for m in methods)
        )
    results = {Path(d).name: done[i] for i, d in enumerate(task_dirs)}
    table = markdown_table(results, methods)
    (out / "table.md").write_text(table + "\n")
    doc = {
        "config": {**cfg.to_dict(), "budget": budget, "methods": list(methods), "tasks": [str(d) for d in task_dirs],
                   "model": model.cfg.model_name, "hook": hook, "effect_model": str(effect_model_path) if effect_model_path else "estimated",
                   "seconds": time.time() - t0},
        **results,
    }  # fmt: skip
    if json_path:
        Path(json_path).write_text(json.dumps(doc, indent=2))
    return {**doc, "table": table}


def _fit_default_effect_model(
    model: HookedTransformer,
    sae: SAELike,
    hook: str,
    work: Path,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> LinearEffectModel:
    """A small effect model with the demo's budget, cached in ``work`` (resumable)."""
    path = work / "effect_model"
    if path.with_suffix(".safetensors").exists():
        return LinearEffectModel.load(path)
    em, rep, _, _ = estimate_and_fit(model, sae, hook, work, DemoBudget(), seed)
    (log or _quiet)(f"effect model: {rep}")
    em.save(path)
    return em


def judges_from_args(
    judge: str,
    judge_model: str | None,
    base_url: str | None,
    cache: str | Path,
    device: str = "cpu",
) -> JudgeFactory | None:
    """The judge factory for ``--judge offline|api|hf`` (``None`` means the offline default)."""
    if judge == "offline":
        return None
    if judge == "api":
        client = ChatClient(
            model=judge_model or "gpt-4o-mini",
            base_url=base_url or "https://api.openai.com/v1",
            cache_dir=cache,
        )
        return llm_judges(client=client)
    if judge == "hf":
        if not judge_model:
            raise ConfigError("--judge hf needs --judge-model PATH_OR_HUB_ID (an instruct model)")
        return llm_judges(hf_model=judge_model, device=device)
    raise ConfigError(f"unknown judge {judge!r}; use offline, api or hf")  # fmt: skip


@dataclass(frozen=True)
class _TaskRunner:
    """What a worker needs, besides its own model and SAE, to run a task as the driver would."""

    effect_model: LinearEffectModel | None
    methods: tuple[str, ...]
    cfg: CompareConfig
    seed: int
    baseline: torch.Tensor
    device: str
    judges: JudgeFactory | None
    model_name: str
    sae_fingerprint: str

    def __call__(self, loaded: Loaded) -> _TaskContext:
        model, sae, hook = loaded.model, loaded.sae, loaded.hook_name
        if (model.cfg.model_name, sae_fingerprint(sae)) != (self.model_name, self.sae_fingerprint):
            raise ConfigError("a worker loaded another model or SAE than the driver")
        est = EffectEstimator(model, sae, config=EffectConfig(rollouts=1), seed=self.seed)
        return _TaskContext(self, model, sae, hook, est, load_embedder(self.device))


@dataclass
class _TaskContext:
    runner: _TaskRunner
    model: HookedTransformer
    sae: SAELike
    hook: str
    estimator: EffectEstimator
    embedder: Any


def _run_task(ctx: _TaskContext, task: Task) -> dict[str, Any]:
    """One task's record (:func:`compare_task`; plots are left to the driver)."""
    r = ctx.runner
    return compare_task(
        ctx.model, ctx.sae, ctx.hook, task, r.effect_model, r.methods, r.cfg, ctx.estimator,
        r.baseline, ctx.embedder, None, r.judges,
    )  # fmt: skip


def _quiet(msg: str) -> None:
    """The default ``log``: say nothing."""
