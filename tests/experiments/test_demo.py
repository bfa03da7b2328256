"""The demo's pieces that run without the real model; the whole demo runs in notebook 01."""

from __future__ import annotations

import importlib
import sys

import pytest

from sae_ts.experiments.demo import DemoBudget, demo_verdict, format_table


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
    "old",
    ["sae_ts.demo", "sae_ts.comparison", "sae_ts.reliability_report", "sae_ts.sae_training",
     "sae_ts.llm_judges", "sae_ts.experiments.comparison", "sae_ts.experiments.compare_stats"],
)  # fmt: skip
def test_old_module_paths_are_gone(old):
    """The shims and the prefixed experiment modules were removed (a 0.1 package, no users)."""
    sys.modules.pop(old, None)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def _rows(sae_ts_effect: float, noise: float) -> dict:
    base = {"off_target_norm": 1.0, "predicted_target_effect": 0.1, "predicted_cosine": 0.5}
    return {
        "unsteered": {**base, "target_effect": noise, "target_share": 0.0},
        "sae_latent": {**base, "target_effect": 0.5, "target_share": 0.10},
        "sae_ts": {**base, "target_effect": sae_ts_effect, "target_share": 0.20},
        "targeted": {**base, "target_effect": 0.01, "target_share": 0.05},
    }


def test_verdict_is_honest_about_noise_and_the_latent():
    lines, usable = demo_verdict(_rows(0.3, 0.05), {"heldout_r2": 0.3, "n_vectors": 4608}, 576)
    assert usable and "R² 0.300" in lines[0]
    assert any("sae_ts" in x and "above twice" in x and "at least" in x for x in lines)
    assert any("targeted" in x and "NOT above" in x and "below" in x for x in lines)
    assert "next-token-KL" not in lines[0]
    rec = {"heldout_r2": 0.3, "n_vectors": 2304, "fit": {"method": "ridge_disruption"}}
    assert "measured next-token-KL term" in demo_verdict(_rows(0.3, 0.05), rec, 640)[0][0]
    assert not any("text breaks" in x for x in lines)
    # a disruption model's rows carry each vector's next-token KL: a broken text is flagged
    rows = _rows(0.3, 0.05)
    rows["sae_ts"]["next_token_kl"], rows["targeted"]["next_token_kl"] = 11.5, 0.4
    lines, _ = demo_verdict(rows, rec, 640)
    assert any(
        x.startswith("sae_ts") and "KL is 11.5 nats" in x and "text breaks" in x for x in lines
    )
    assert not any(x.startswith("targeted") and "text breaks" in x for x in lines)
    assert "next_token_kl" in format_table(rows) and "next_token_kl" not in format_table(
        _rows(0.3, 0.05)
    )


def test_verdict_never_presents_a_negative_fit_and_flags_underdetermined_ones():
    lines, usable = demo_verdict(_rows(0.3, 0.05), {"heldout_r2": -0.05, "n_vectors": 4608}, 576)
    assert not usable and "does not predict" in lines[0]
    lines, usable = demo_verdict(_rows(0.3, 0.05), {"heldout_r2": 0.05, "n_vectors": 192}, 576)
    assert "underdetermined" in lines[0]
