"""Reliability of steering vectors (Tan et al., NeurIPS 2024): items, splits, prompts, statistics.

Data: Anthropic model-written evals (JSONL with ``question``, ``answer_matching_behavior``,
``answer_not_matching_behavior``). Persona items (Yes/No statements) become A/B multiple choice
with the A/B order alternated so that the four answer layouts (positive letter x positive word:
A/yes, A/no, B/yes, B/no) are balanced; advanced-AI-risk items keep their own lettered options
(layout: the positive letter, with /yes or /no when that option reads Yes or No). Prompts go
through the model's chat template and end with the assistant turn's header; the answer is
``(A)`` or ``(B)``.

Splits and subsamples are stratified by layout, take fractions (never counts), and are asserted
disjoint (Tan et al.'s code parsed "0:50%" / "50:100%" so that train and test overlapped).

Statistics (definitions from the paper's code): per-sample steerability is the least-squares
slope of propensity against the steering strength; the dataset's steerability is the mean slope
(here with a seeded bootstrap CI); an item is anti-steerable if its slope is <= 0; spurious
factors are the share of slope variance explained by "positive answer is A", then additionally
by "positive answer is Yes" (OLS). Steering itself is in
:mod:`sae_ts.experiments.reliability.steering`.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import bootstrap

from ...errors import ConfigError, MissingFileError
from ...types import LanguageModel

__all__ = [
    "MULTIPLIERS",
    "MCItem",
    "SteerabilityResult",
    "answer_layout",
    "chat_prompt",
    "layout_counts",
    "letter_adjusted",
    "letter_id",
    "linearity",
    "load_mwe",
    "mc_prompt",
    "mean_ci",
    "ood_variants",
    "slope_summary",
    "split_items",
    "spurious_factors",
    "steerability",
    "stratified_sample",
    "to_mc_items",
]

MULTIPLIERS: tuple[float, ...] = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
"""Tan et al.'s multipliers of the raw CAA vector."""


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice item: a user message whose answer is a letter."""

    question: str  # the user message, choices included
    pos: str  # the letter of the answer matching the behaviour
    neg: str  # the letter of the other answer
    pos_is_yes: bool | None  # whether the positive answer's text is "Yes" (None if neither)
    source: str = ""
    # plain-text statements of the behaviour and of its opposite, for SAE feature search:
    # a persona statement goes to the side it expresses; an A/B item gives its stem + each option
    pos_text: str = ""
    neg_text: str = ""


def load_mwe(path: str | Path) -> list[dict[str, Any]]:
    """Read a model-written-evals JSONL file; check every record has the needed fields."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no dataset at {path}")
    records = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # JSONL: \n only
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from e
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{i}: not JSON: {e}") from e
        if not isinstance(r, dict):
            raise ConfigError(f"{path}:{i}: a record must be a JSON object")
        missing = {
            "question",
            "answer_matching_behavior",
            "answer_not_matching_behavior",
        } - set(r)
        if missing:
            raise ConfigError(f"{path}:{i}: missing fields {sorted(missing)}")
        records.append(r)
    if not records:
        raise ConfigError(f"{path} holds no records")
    return records


def _letter(ans: str) -> str | None:
    a = ans.strip()
    if len(a) == 3 and a[0] == "(" and a[2] == ")" and a[1].isalpha():
        return a[1]
    return None


def _option_text(question: str, letter: str) -> str:
    for line in question.splitlines():
        s = line.strip()
        if s.startswith(f"({letter})"):
            return s[3:].strip()
    return ""


def to_mc_items(records: Sequence[dict[str, Any]], source: str = "") -> list[MCItem]:
    """Turn records into :class:`MCItem`; persona Yes/No items are balanced over A/B order.

    Persona items: within the items whose positive answer is "Yes", the positive letter
    alternates A, B, A, …, and likewise within the "No" items, so every (letter, word)
    combination gets a quarter of the items (up to one item of rounding).
    """
    items: list[MCItem] = []
    counters = {True: 0, False: 0}
    for r in records:
        pos_ans, neg_ans = r["answer_matching_behavior"], r["answer_not_matching_behavior"]
        if isinstance(neg_ans, list):
            neg_ans = neg_ans[0]
        pos_l, neg_l = _letter(pos_ans), _letter(neg_ans)
        if pos_l and neg_l:
            t = _option_text(r["question"], pos_l).lower()
            yes = True if t.startswith("yes") else False if t.startswith("no") else None
            stem = r["question"].split("Choices:")[0].strip()
            pt, nt = _option_text(r["question"], pos_l), _option_text(r["question"], neg_l)
            items.append(
                MCItem(r["question"].strip(), pos_l, neg_l, yes, source,
                       f"{stem} {pt}".strip(), f"{stem} {nt}".strip())
            )  # fmt: skip
            continue
        words = (pos_ans.strip(), neg_ans.strip())
        if {w.lower() for w in words} != {"yes", "no"}:
            raise ConfigError(f"cannot turn answers {words} into A/B choices")
        pos_yes = words[0].lower() == "yes"
        a_is_pos = counters[pos_yes] % 2 == 0
        counters[pos_yes] += 1
        a_word, b_word = (words[0], words[1]) if a_is_pos else (words[1], words[0])
        q = f"{r['question'].strip()}\n\nChoices:\n (A) {a_word}\n (B) {b_word}"
        st = str(r.get("statement") or r["question"]).strip()
        pt, nt = (st, "") if pos_yes else ("", st)
        items.append(
            MCItem(q, "A" if a_is_pos else "B", "B" if a_is_pos else "A", pos_yes, source, pt, nt)
        )
    return items


def answer_layout(item: MCItem) -> str:
    """The item's answer layout: ``"A/yes"``, ``"A/no"``, ``"B/yes"``, ``"B/no"``, or the bare
    positive letter (``"A"``, ``"B"``) when the positive option reads neither Yes nor No."""
    if item.pos_is_yes is None:
        return item.pos
    return f"{item.pos}/{'yes' if item.pos_is_yes else 'no'}"


def layout_counts(items: Sequence[MCItem]) -> dict[str, int]:
    """How many items have each answer layout (sorted by layout)."""
    return dict(sorted(Counter(answer_layout(it) for it in items).items()))


def _strata(items: Sequence[MCItem]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        out.setdefault(answer_layout(it), []).append(i)
    return dict(sorted(out.items()))


def stratified_sample(items: Sequence[MCItem], n: int, seed: int = 0) -> list[MCItem]:
    """``n`` items drawn without replacement, each layout in proportion to its share (seeded).

    Quotas are the proportional shares rounded by largest remainder, so they sum to ``n``; the
    items keep their original order.
    """
    if n <= 0:
        raise ConfigError(f"cannot sample {n} items")
    if n >= len(items):
        return list(items)
    strata = _strata(items)
    exact = {k: n * len(v) / len(items) for k, v in strata.items()}
    quota = {k: int(e) for k, e in exact.items()}
    by_remainder = sorted(strata, key=lambda k: (quota[k] - exact[k], k))
    for k in by_remainder[: n - sum(quota.values())]:
        quota[k] += 1
    rng = random.Random(seed)
    keep: list[int] = []
    for k, idx in strata.items():
        idx = idx[:]
        rng.shuffle(idx)
        keep += idx[: quota[k]]
    return [items[i] for i in sorted(keep)]


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


def split_items(
    items: Sequence[MCItem],
    train: float = 0.5,
    seed: int = 0,
    test: float | None = None,
    stratify: bool = True,
) -> tuple[list[MCItem], list[MCItem]]:
    """Split by explicit fractions, within each answer layout (seeded); asserted disjoint.

    Each layout puts ``train * n_layout`` items (rounded half up) into train and
    ``test * n_layout`` of the rest into test (all the rest when ``test`` is None), so train and
    test keep the layout proportions of ``items``; for persona sets, whose four layouts are
    balanced, the train split is balanced A:B and Yes:No. ``stratify=False`` splits the whole set at once.
    """
    if not 0 < train < 1:
        raise ConfigError(
            f"train fraction must be in (0, 1), got {train!r} (a fraction, not a count)"
        )
    if test is not None and not 0 < test <= 1 - train + 1e-9:
        raise ConfigError(f"test fraction {test} must be in (0, 1 - train]")
    strata = _strata(items) if stratify else {"all": list(range(len(items)))}
    rng = random.Random(seed)
    tr_idx: list[int] = []
    te_idx: list[int] = []
    for idx in strata.values():
        idx = idx[:]
        rng.shuffle(idx)
        n_tr = _round_half_up(train * len(idx))
        n_te = (
            len(idx) - n_tr
            if test is None
            else min(_round_half_up(test * len(idx)), len(idx) - n_tr)
        )
        tr_idx += idx[:n_tr]
        te_idx += idx[n_tr : n_tr + n_te]
    assert not set(tr_idx) & set(te_idx), "train and test overlap"
    if not tr_idx or not te_idx:
        raise ConfigError(f"{len(items)} items are too few for this split")
    return [items[i] for i in sorted(tr_idx)], [items[i] for i in sorted(te_idx)]


def ood_variants(name: str) -> dict[str, tuple[str | None, str]]:
    """Persona-prompt variants: name -> (system prompt or None, user-message prefix)."""
    trait = name.replace("-", " ").replace("_", " ")
    pos, neg = f'You have this trait: "{trait}".', f'You do not have this trait: "{trait}".'
    return {
        "base": (None, ""),
        "system_pos": (pos, ""),
        "system_neg": (neg, ""),
        "user_pos": (None, pos + "\n\n"),
        "user_neg": (None, neg + "\n\n"),
    }


def mc_prompt(model: LanguageModel, item: MCItem, system: str | None, prefix: str) -> str:
    """The chat-formatted question of ``item`` (with ``system`` and ``prefix``), ending with the
    assistant turn's header; the answer ``(A)`` or ``(B)`` follows it."""
    tok = model.tokenizer
    assert tok is not None
    return chat_prompt(tok, item, system, prefix)


def chat_prompt(
    tokenizer: Any,
    item: MCItem,
    system: str | None,
    prefix: str,
    generation_prompt: bool = True,
) -> str:
    """:func:`mc_prompt` from a tokenizer with a chat template (without the assistant header
    when ``generation_prompt`` is false)."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prefix + item.question}
    ]
    text = tokenizer.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=generation_prompt
    )
    return str(text)


def letter_id(model: LanguageModel, letter: str) -> int:
    """The token id of an answer letter as it follows ``(``."""
    assert model.tokenizer is not None
    ids = model.tokenizer("(" + letter, add_special_tokens=False).input_ids
    return int(ids[-1])


@dataclass
class SteerabilityResult:
    """Per-sample slopes and fit residuals, and the dataset summaries."""

    multipliers: list[float]
    slopes: np.ndarray  # [n]
    intercepts: np.ndarray  # [n]
    residual_rmse: np.ndarray  # [n]
    mean: float
    anti_steerable_fraction: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "per_sample": self.slopes.tolist(),
            "residual_rmse": self.residual_rmse.tolist(),
            "anti_steerable_fraction": self.anti_steerable_fraction,
        }


def steerability(
    propensities: np.ndarray, multipliers: Sequence[float] | np.ndarray = MULTIPLIERS
) -> SteerabilityResult:
    """Least-squares slope of propensity against the multiplier (or strength) for each sample."""
    P = np.asarray(propensities, dtype=np.float64)
    x = np.asarray(multipliers, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != x.shape[0]:
        raise ConfigError(f"propensities must be [n, {x.shape[0]}], got {P.shape}")
    if not np.isfinite(P).all():
        raise ConfigError("propensities contain NaN or inf")
    xc = x - x.mean()
    slopes = (P - P.mean(1, keepdims=True)) @ xc / (xc @ xc)
    intercepts = P.mean(1) - slopes * x.mean()
    resid = P - (intercepts[:, None] + slopes[:, None] * x[None])
    return SteerabilityResult(
        list(map(float, x)), slopes, intercepts, np.sqrt((resid**2).mean(1)),
        float(slopes.mean()), float((slopes <= 0).mean()),
    )  # fmt: skip


def linearity(propensities: np.ndarray, strengths: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """How well a straight line describes each input's propensity curve (what a slope assumes).

    Per input: the R² of the least-squares line through its propensities (1.0 for a flat curve)
    and whether the curve is monotone. Returns ``median_r2``, ``r2_quantiles`` (10, 25, 50, 75,
    90%) and ``monotone_fraction``. A low R² means the slope summarises a curve that bends or
    turns back (e.g. past the strength at which the model stops answering sensibly).
    """
    st = steerability(propensities, strengths)  # validates the shapes and values
    P = np.asarray(propensities, dtype=np.float64)
    ssr = P.shape[1] * st.residual_rmse**2
    sst = ((P - P.mean(1, keepdims=True)) ** 2).sum(1)
    r2 = np.where(sst > 0, 1 - ssr / np.where(sst > 0, sst, 1.0), 1.0)
    d = np.diff(P, axis=1)
    mono = (d >= 0).all(1) | (d <= 0).all(1)
    return {
        "median_r2": float(np.median(r2)),
        "r2_quantiles": {f"{q:g}": float(np.quantile(r2, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        "monotone_fraction": float(mono.mean()),
    }


def mean_ci(
    values: Sequence[float] | np.ndarray, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """The mean and its percentile-bootstrap confidence interval (9,999 resamples, seeded).

    With fewer than two values, or identical values, the interval is the mean itself.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ConfigError("mean_ci needs a non-empty 1-D sample")
    m = float(x.mean())
    if len(x) < 2 or np.ptp(x) == 0:
        return m, m, m
    ci = bootstrap(
        (x,), np.mean, confidence_level=confidence, method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval  # fmt: skip
    return m, float(ci.low), float(ci.high)


ABS_QUANTILES: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def slope_summary(slopes: np.ndarray, items: Sequence[MCItem], seed: int = 0) -> dict[str, Any]:
    """The per-dataset report of per-sample slopes.

    ``mean`` with a 95% bootstrap ``ci95``; ``anti_steerable_fraction`` (slope <= 0); the
    distribution of ``|slope|`` (``abs_quantiles`` at 0, 10, 25, 50, 75, 90, 100%, and
    ``mean_abs``); and ``by_layout``: each answer layout's count, mean slope with its CI,
    standard deviation and anti-steerable fraction (layouts that cancel show up here, not in the
    mean).
    """
    y = np.asarray(slopes, dtype=np.float64)
    if len(y) != len(items):
        raise ConfigError(f"{len(y)} slopes for {len(items)} items")
    m, lo, hi = mean_ci(y, seed)
    groups: dict[str, list[float]] = {}
    for it, s in zip(items, y):
        groups.setdefault(answer_layout(it), []).append(float(s))
    by_layout = {}
    for k, v in sorted(groups.items()):
        gm, glo, ghi = mean_ci(v, seed)
        by_layout[k] = {
            "n": len(v), "mean": gm, "ci95": [glo, ghi], "std": float(np.std(v)),
            "anti_steerable_fraction": float(np.mean(np.asarray(v) <= 0)),
        }  # fmt: skip
    a = np.abs(y)
    return {
        "mean": m,
        "ci95": [lo, hi],
        "ci_excludes_zero": bool(lo > 0 or hi < 0),
        "anti_steerable_fraction": float((y <= 0).mean()),
        "mean_abs": float(a.mean()),
        "abs_quantiles": {f"{q:g}": float(np.quantile(a, q)) for q in ABS_QUANTILES},
        "by_layout": by_layout,
    }


def letter_adjusted(
    slopes: np.ndarray, items: Sequence[MCItem], seed: int = 0, n_resamples: int = 2000
) -> dict[str, Any]:
    """Steerability with the answer letters' own effect removed (a letter-adjusted mean slope).

    A direction that only favours a letter ``L`` adds ``d_L`` to that letter's logit, so it gives
    an item the slope ``d_pos - d_neg``. The fit is the OLS ``slope ~ c + sum_L d_L * x_L`` with
    ``x_L = [pos is L] - [neg is L]`` (one letter is the reference); ``mean`` is ``c``, the part
    of the slope that does not depend on which letter is positive. On balanced A/B layouts it is
    the plain mean; on unbalanced ones (the AI-risk sets) it does not credit a letter push as
    steering, which the plain mean does. ``ci95``: percentile bootstrap, resampling items within
    each (positive, negative) letter pair (seeded). ``identified`` is False, and the numbers None,
    when the layouts cannot separate ``c`` from the letters (e.g. every item's positive is A).
    """
    y = np.asarray(slopes, dtype=np.float64)
    if len(y) != len(items):
        raise ConfigError(f"{len(y)} slopes for {len(items)} items")
    letters = sorted({it.pos for it in items} | {it.neg for it in items})
    X = np.column_stack(
        [np.ones(len(y))]
        + [[float(it.pos == L) - float(it.neg == L) for it in items] for L in letters[1:]]
    )
    if np.linalg.matrix_rank(X) < X.shape[1]:
        return {"mean": None, "ci95": None, "identified": False, "letter_effects": None}
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it.pos, it.neg), []).append(i)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_resamples):  # within-pair resampling keeps the design identified
        idx = np.concatenate([rng.choice(g, size=len(g)) for g in groups.values()])
        boot.append(np.linalg.lstsq(X[idx], y[idx], rcond=None)[0][0])
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {
        "mean": float(coef[0]),
        "ci95": [float(lo), float(hi)],
        "identified": True,
        "letter_effects": {L: float(c) for L, c in zip(letters[1:], coef[1:])} | {letters[0]: 0.0},
    }


def _r2(y: np.ndarray, X: np.ndarray) -> float:
    X1 = np.column_stack([np.ones(len(y)), X])
    coef, *_ = np.linalg.lstsq(X1, y, rcond=None)
    sst = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - X1 @ coef) ** 2).sum() / sst) if sst > 0 else 0.0


def spurious_factors(slopes: np.ndarray, items: Sequence[MCItem]) -> dict[str, Any]:
    """Fractions of slope variance explained by A/B position, then additionally by Yes/No.

    ``ab`` is the R² of slopes ~ 1 + [positive is A]; ``yes_no`` the increase in R² when
    [positive is Yes] is added (0 when no item has a Yes/No answer); ``unexplained`` = 1 - both.
    Also returns the slope mean/std/count of each answer layout (:func:`answer_layout`).
    """
    y = np.asarray(slopes, dtype=np.float64)
    if len(y) != len(items):
        raise ConfigError(f"{len(y)} slopes for {len(items)} items")
    is_a = np.array([it.pos == "A" for it in items], dtype=np.float64)
    has_yn = np.array([it.pos_is_yes is not None for it in items])
    is_yes = np.array([bool(it.pos_is_yes) for it in items], dtype=np.float64)
    r2_ab = _r2(y, is_a[:, None])
    r2_full = _r2(y, np.column_stack([is_a, is_yes])) if has_yn.any() else r2_ab
    groups: dict[str, list[float]] = {}
    for it, s in zip(items, y):
        groups.setdefault(answer_layout(it), []).append(float(s))
    combos = {
        k: {"n": len(v), "mean": float(np.mean(v)), "std": float(np.std(v)), "slopes": v}
        for k, v in sorted(groups.items())
    }
    return {
        "ab": r2_ab,
        "yes_no": r2_full - r2_ab,
        "unexplained": 1 - r2_full,
        "by_combination": combos,
    }
