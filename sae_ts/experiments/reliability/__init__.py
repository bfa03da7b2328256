"""The reliability analysis of steering vectors on multiple-choice datasets (``sae-ts reliability``).

Modules: :mod:`.items` (MWE items, prompts, splits and statistics), :mod:`.steering` (steering
positions, answer curves, CAA and SAE-TS vectors), :mod:`.report` (whole datasets, checkpoints,
JSON) and :mod:`.plots`. The names below are the public API; everything else is importable from
its module.
"""

from __future__ import annotations

from .items import (
    MULTIPLIERS,
    MCItem,
    SteerabilityResult,
    letter_adjusted,
    linearity,
    load_mwe,
    split_items,
    spurious_factors,
    steerability,
    to_mc_items,
)
from .report import analyse_dataset, run_reliability, run_reliability_multi, strength_sweep
from .steering import STRENGTHS, AnswerCurves, answer_curves, caa_mc_vector, sae_ts_mc_vector

__all__ = [
    "MULTIPLIERS",
    "STRENGTHS",
    "AnswerCurves",
    "MCItem",
    "SteerabilityResult",
    "analyse_dataset",
    "answer_curves",
    "caa_mc_vector",
    "letter_adjusted",
    "linearity",
    "load_mwe",
    "run_reliability",
    "run_reliability_multi",
    "sae_ts_mc_vector",
    "split_items",
    "spurious_factors",
    "steerability",
    "strength_sweep",
    "to_mc_items",
]
