"""The demo's pieces that run without the real model; the whole demo runs in notebook 01."""

from __future__ import annotations

import importlib
import sys

import pytest

from sae_ts.experiments.demo import DemoBudget, format_table


def test_format_table_shows_missing_predictions_as_a_dash():
    rows = {
        "caa": {"target_effect": 1.0, "off_target_norm": 2.0, "target_share": 0.5,
                "predicted_target_effect": None, "predicted_cosine": None},
    }  # fmt: skip
    table = format_table(rows)
    assert "caa" in table and "1.0000" in table and "—" in table


def test_budget_defaults_fit_a_small_cpu():
    b = DemoBudget()
    assert b.n_decoder + b.n_random <= 128 and b.holdout < b.n_decoder + b.n_random


@pytest.mark.parametrize(
    "old", ["sae_ts.demo", "sae_ts.comparison", "sae_ts.reliability", "sae_ts.sae_training"]
)
def test_old_module_paths_still_import_with_a_warning(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        mod = importlib.import_module(old)
    assert mod.__all__
