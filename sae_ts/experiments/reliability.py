"""Reliability and generalisation of steering vectors (Tan et al., NeurIPS 2024).

Data: Anthropic model-written evals (JSONL with ``question``, ``answer_matching_behavior``,
``answer_not_matching_behavior``). Persona items (Yes/No statements) become A/B multiple choice
with the A/B order alternated so that the four (letter x word) combinations are balanced;
advanced-AI-risk items keep their own lettered options. Prompts go through the model's chat
template and end with ``(`` so that the next token is the answer letter.

Measures (definitions from the paper's code):

* propensity — logit(positive letter) - logit(negative letter) at the answer position;
* steering from the last prompt token on, at multipliers λ (default -1.5 … 1.5) times the vector;
* per-sample steerability — the least-squares slope of propensity against λ (residual kept);
  dataset steerability — the mean slope;
* anti-steerable fraction — the share of samples with slope <= 0;
* spurious factors — the share of slope variance explained by "positive answer is A", then
  additionally by "positive answer is Yes" (OLS), and what remains;
* out of distribution — the same vector on persona-prompt variants of the dataset.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from ..baselines import find_features, mean_activations
from ..effect_model import LinearEffectModel
from ..errors import ConfigError, MissingFileError
from ..solver import Target, solve
from ..steering import SteeringHook, add_hooks, check_vector
from ..types import Method, SAELike

__all__ = [
    "MULTIPLIERS",
    "MCItem",
    "SteerabilityResult",
    "caa_mc_vector",
    "letter_id",
    "load_mwe",
    "mc_prompt",
    "ood_variants",
    "propensity_curves",
    "sae_ts_mc_vector",
    "split_items",
    "spurious_factors",
    "steerability",
    "to_mc_items",
]

MULTIPLIERS: tuple[float, ...] = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


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
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{i}: not JSON: {e}") from e
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


def split_items(
    items: Sequence[MCItem], train: float = 0.5, seed: int = 0, test: float | None = None
) -> tuple[list[MCItem], list[MCItem]]:
    """Shuffle and split by explicit fractions; train and test are asserted disjoint."""
    if not 0 < train < 1:
        raise ConfigError(
            f"train fraction must be in (0, 1), got {train!r} (a fraction, not a count)"
        )
    test = 1 - train if test is None else test
    if not 0 < test <= 1 - train + 1e-9:
        raise ConfigError(f"test fraction {test} must be in (0, 1 - train]")
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    n_tr = round(train * len(items))
    n_te = round(test * len(items))
    tr_idx, te_idx = idx[:n_tr], idx[n_tr : n_tr + n_te]
    assert not set(tr_idx) & set(te_idx), "train and test overlap"
    if not tr_idx or not te_idx:
        raise ConfigError(f"{len(items)} items are too few for this split")
    return [items[i] for i in tr_idx], [items[i] for i in te_idx]


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


def mc_prompt(model: HookedTransformer, item: MCItem, system: str | None, prefix: str) -> str:
    """The chat-formatted question of ``item`` (with ``system`` and ``prefix``), ending in ``(``."""
    tok = model.tokenizer
    assert tok is not None
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prefix + item.question}
    ]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return str(text) + "("


def letter_id(model: HookedTransformer, letter: str) -> int:
    """The token id of an answer letter as it follows ``(``."""
    assert model.tokenizer is not None
    ids = model.tokenizer("(" + letter, add_special_tokens=False).input_ids
    return int(ids[-1])


def _expand_cache(cache: TransformerLensKeyValueCache, k: int) -> TransformerLensKeyValueCache:
    for e in cache.entries:
        e.past_keys = e.past_keys.repeat_interleave(k, 0)
        e.past_values = e.past_values.repeat_interleave(k, 0)
    cache.previous_attention_mask = cache.previous_attention_mask.repeat_interleave(k, 0)
    return cache


@torch.no_grad()
def propensity_curves(
    model: HookedTransformer,
    items: Sequence[MCItem],
    vector: torch.Tensor,
    hook_name: str,
    multipliers: Sequence[float] = MULTIPLIERS,
    system: str | None = None,
    prefix: str = "",
    batch_size: int = 8,
) -> np.ndarray:
    """``[n_items, n_multipliers]`` propensities with ``λ * vector`` added from the last prompt token.

    ``vector`` may also be ``[n_vectors, d_model]``: the result is then
    ``[n_items, n_vectors, n_multipliers]``, and the unsteered prompt prefix is shared by all
    vectors. The prompt minus its last token runs once per item (unsteered, with a KV cache);
    only the last token is run for each (vector, multiplier).
    """
    single = vector.ndim == 1
    V = vector[None] if single else vector
    if V.ndim != 2:
        raise ConfigError("vector must be [d_model] or [n_vectors, d_model]")
    for v in V:
        check_vector(v, model.cfg.d_model)
    mult = torch.tensor(list(multipliers), dtype=torch.float32)
    nv, k = V.shape[0], len(mult)
    out = np.zeros((len(items), nv, k))
    assert model.tokenizer is not None
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        texts = [mc_prompt(model, it, system, prefix) for it in chunk]
        toks = model.to_tokens(texts, prepend_bos=True, padding_side="left")
        b = toks.shape[0]
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, b)
        model(toks[:, :-1], past_kv_cache=cache)
        _expand_cache(cache, nv * k)
        last = toks[:, -1:].repeat_interleave(nv * k, 0)
        vecs = V.float().to(toks.device).repeat_interleave(k, 0).repeat(b, 1)  # row: (item, v, λ)
        hook = SteeringHook(vecs, mult.repeat(b * nv))
        with add_hooks(model, [(hook_name, hook)]):
            logits = model(last, past_kv_cache=cache)[:, -1].view(b, nv, k, -1)
        for j, it in enumerate(chunk):
            diff = (
                logits[j, :, :, letter_id(model, it.pos)]
                - logits[j, :, :, letter_id(model, it.neg)]
            )
            out[start + j] = diff.float().cpu().numpy()
    return out[:, 0] if single else out


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
    propensities: np.ndarray, multipliers: Sequence[float] = MULTIPLIERS
) -> SteerabilityResult:
    """Least-squares slope of propensity against λ for each sample."""
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


def _r2(y: np.ndarray, X: np.ndarray) -> float:
    X1 = np.column_stack([np.ones(len(y)), X])
    coef, *_ = np.linalg.lstsq(X1, y, rcond=None)
    sst = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - X1 @ coef) ** 2).sum() / sst) if sst > 0 else 0.0


def spurious_factors(slopes: np.ndarray, items: Sequence[MCItem]) -> dict[str, Any]:
    """Fractions of slope variance explained by A/B position, then additionally by Yes/No.

    ``ab`` is the R² of slopes ~ 1 + [positive is A]; ``yes_no`` the increase in R² when
    [positive is Yes] is added (0 when no item has a Yes/No answer); ``unexplained`` = 1 - both.
    Also returns the slope mean/std/count of each (letter, word) combination.
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
        word = "yes" if it.pos_is_yes else "no" if it.pos_is_yes is False else "other"
        groups.setdefault(f"{it.pos}/{word}", []).append(float(s))
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


def caa_mc_vector(
    model: HookedTransformer,
    items: Sequence[MCItem],
    hook_name: str,
    system: str | None = None,
    prefix: str = "",
    batch_size: int = 8,
) -> torch.Tensor:
    """CAA at the answer-letter token (Tan et al.): mean over items of act(pos letter) - act(neg letter).

    Returns the raw (unnormalised) vector, whose norm Tan et al.'s multipliers are defined on.
    """
    if not items:
        raise ConfigError("no items to train on")
    pos = [mc_prompt(model, it, system, prefix) + it.pos for it in items]
    neg = [mc_prompt(model, it, system, prefix) + it.neg for it in items]
    diffs = mean_activations(
        model, pos, hook_name, "last", batch_size=batch_size
    ) - mean_activations(model, neg, hook_name, "last", batch_size=batch_size)
    v = diffs.mean(0)
    if not math.isfinite(float(v.norm())):
        raise ConfigError("CAA vector is not finite")
    return v


def sae_ts_mc_vector(
    model: HookedTransformer,
    sae: SAELike,
    effect_model: LinearEffectModel,
    items: Sequence[MCItem],
    hook_name: str,
    n_features: int = 3,
    method: Method = "sae_ts",
) -> tuple[torch.Tensor, list[tuple[int, float]]]:
    """An SAE-TS vector for a dataset's behaviour, from its training items only.

    The target is the top ``n_features`` SAE latents by :func:`~sae_ts.baselines.find_features`
    on the items' behaviour statements (``pos_text``) against the opposite ones (``neg_text``),
    weighted by their activation gap; the vector is :func:`~sae_ts.solver.solve` with ``method``
    (unit norm). Raises ``ValueError`` when no latent fires more on the positive side.
    """
    pos = [it.pos_text for it in items if it.pos_text]
    neg = [it.neg_text for it in items if it.neg_text]
    if not pos or not neg:
        raise ConfigError("the items carry no behaviour statements on one side")
    feats = find_features(model, sae, pos, neg, hook_name, top=n_features)
    if not feats:
        raise ConfigError("no SAE latent fires more on the behaviour's statements")
    total = sum(w for _, w in feats)
    target = Target({f: w / total for f, w in feats})
    return solve(effect_model, target, method), feats
