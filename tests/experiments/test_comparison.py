from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae_ts.effect_model import LinearEffectModel
from sae_ts.experiments.comparison import (
    CompareConfig,
    compare_task,
    harmonic_mean,
    load_task,
    markdown_table,
    select_scale,
    sweep,
)
from sae_ts.testing import tiny_sae
from tests.judges.test_offline import CRITERION, NEG, POS

HOOK = "blocks.1.hook_resid_post"


def write_task(tmp_path, pos=POS, neg=NEG):
    d = tmp_path / "beach"
    d.mkdir()
    (d / "act_steer.json").write_text(json.dumps({"pos": pos, "neg": neg}))
    (d / "criteria.json").write_text(
        json.dumps([{"name": "Beach", "score": CRITERION, "coherence": "The text is coherent."}])
    )
    return d


def test_load_task_and_errors(tmp_path):
    t = load_task(write_task(tmp_path))
    assert t.name == "Beach" and len(t.pos) == 6 and t.score_criterion == CRITERION
    with pytest.raises(FileNotFoundError, match=r"criteria\.json"):
        (tmp_path / "beach" / "criteria.json").unlink()
        load_task(tmp_path / "beach")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "act_steer.json").write_text(json.dumps({"pos": [], "neg": ["x"]}))
    (bad / "criteria.json").write_text("[]")
    with pytest.raises(ValueError, match="non-empty"):
        load_task(bad)


def test_select_scale_is_held_out_and_has_a_ci():
    rng = np.random.default_rng(0)
    n = 40
    beh = {
        0.0: np.full(n, 0.1),
        1.0: np.clip(0.6 + 0.1 * rng.standard_normal(n), 0, 1),
        2.0: np.full(n, 0.9),
    }
    coh = {0.0: np.full(n, 0.9), 1.0: np.full(n, 0.8), 2.0: np.full(n, 0.2)}
    sel = select_scale(beh, coh, seed=0, bootstrap=300)
    assert sel.best_scale == 1.0
    assert sel.ci[0] <= sel.score <= sel.ci[1] and sel.ci[1] - sel.ci[0] > 0
    assert sel.in_sample_scale == 1.0 and sel.in_sample_max >= 0.4
    assert sel.harmonic == pytest.approx(harmonic_mean(sel.behavior, sel.coherence))
    assert harmonic_mean(0.0, 1.0) == 0.0 and harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        select_scale({0.0: np.ones(1)}, {0.0: np.ones(1)})


def test_sweep_is_seeded_and_scale_zero_is_unsteered(tiny):
    cfg = CompareConfig(samples=3, max_new_tokens=5, norm_fractions=(0.0, 1.0))
    v = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0))
    a = sweep(tiny, HOOK, v, [0.0, 50.0], cfg)
    b = sweep(tiny, HOOK, v, [0.0, 50.0], cfg)
    assert a == b and len(a[0.0]) == 3
    other = sweep(tiny, HOOK, -v, [0.0, 50.0], cfg)
    assert other[0.0] == a[0.0] and other[50.0] != a[50.0]


def test_compare_task_end_to_end_on_a_tiny_model(tiny, tmp_path):
    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=32)
    g = torch.Generator().manual_seed(0)
    em = LinearEffectModel(torch.randn(tiny.cfg.d_model, 32, generator=g), torch.zeros(32))
    task = load_task(write_task(tmp_path))
    cfg = CompareConfig(samples=4, max_new_tokens=6, norm_fractions=(0.0, 1.0, 2.0), bootstrap=50)
    rec = compare_task(tiny, sae, HOOK, task, em, cfg=cfg, out_dir=tmp_path / "out")
    for m in ("caa", "sae", "sae_ts", "targeted"):
        r = rec[m]
        assert (
            0 <= r["score"] <= 1
            and r["ci"][0] <= r["ci"][1]
            and r["best_scale"] in rec["curves"][m]["scale"]
        )
        assert len(r["examples"]) == 3
    assert len(rec["features"]) >= 1 and rec["judge_auroc_loo"] > 0.8
    assert (tmp_path / "out" / "beach_sweep.png").exists()
    table = markdown_table({"beach": rec}, ["caa", "sae"])
    assert table.count("\n") == 3 and "**mean**" in table
