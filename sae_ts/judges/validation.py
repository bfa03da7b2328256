"""Checking a behaviour judge on generated text, without human labels.

With no human labels, a judge is checked against independent judges on the texts it will actually
score: steered and unsteered generations. :func:`judge_agreement` reports the Spearman rank
correlation between two judges' scores (with a bootstrap CI over texts) and their pairwise
concordance, the probability that the two judges order a random pair of texts the same way
(``(1 + Kendall's τ_b) / 2``; 0.5 is chance). Agreement between independent judges is evidence
that both track the criterion; it bounds neither judge's error on its own.

:class:`CriterionSimilarityJudge` is a judge built from the criterion sentence alone: the cosine
similarity of a text's sentence embedding to the criterion's, mapped to [0, 1]. It shares no text
with any other role in a comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .offline import load_embedder

__all__ = ["CriterionSimilarityJudge", "judge_agreement"]


@dataclass
class CriterionSimilarityJudge:
    """``(1 + cos(embed(text), embed(criterion))) / 2``: a judge from the criterion alone."""

    criterion: str
    embedder: Any = None
    _c: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.criterion.strip():
            raise ConfigError("the criterion is empty")
        if self.embedder is None:
            self.embedder = load_embedder()
        self._c = self._embed([self.criterion])[0]

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self.embedder.encode(texts, normalize_embeddings=True, show_progress_bar=False)
        )

    def score(self, texts: Sequence[str], prompt: str = "") -> np.ndarray:
        """Scores in [0, 1] (the prompt is stripped from each text if present)."""
        texts = [t[len(prompt) :] if prompt and t.startswith(prompt) else t for t in texts]
        assert self._c is not None
        return np.asarray((1.0 + self._embed(list(texts)) @ self._c) / 2.0, dtype=float)


def judge_agreement(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    seed: int = 0,
    bootstrap: int = 1000,
) -> dict[str, Any]:
    """Spearman ρ (with a 95% bootstrap CI over texts) and pairwise concordance of two judges."""
    from scipy.stats import kendalltau, rankdata, spearmanr

    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ConfigError("need two equally long score lists of >= 3 texts")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"spearman": float("nan"), "ci": [float("nan")] * 2, "concordance": float("nan"),
                "n": len(x)}  # fmt: skip
    rho = float(spearmanr(x, y).statistic)
    idx = np.random.default_rng(seed).integers(0, len(x), (bootstrap, len(x)))
    rx, ry = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)  # Spearman = Pearson of ranks
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    den = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    boots = (rx * ry).sum(1) / np.where(den > 0, den, np.nan)
    boots = boots[np.isfinite(boots)]
    tau = float(kendalltau(x, y).statistic)
    return {
        "spearman": rho,
        "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
        "concordance": (1.0 + tau) / 2.0,
        "n": len(x),
    }
