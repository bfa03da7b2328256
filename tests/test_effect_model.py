"""The linear effect model: ridge and Adam fits, round trips."""

from __future__ import annotations

import pytest
import torch

from sae_ts.effect_model import LinearEffectModel, effect_metrics, fit_adam, fit_ridge
from sae_ts.effects import EffectDataset


def synthetic(n=400, d=24, k=60, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g) / d**0.5
    b = torch.randn(k, generator=g) * 0.1
    X = torch.randn(n, d, generator=g)
    X = X / X.norm(dim=-1, keepdim=True)
    Y = X @ W + b + noise * torch.randn(n, k, generator=g)
    return EffectDataset(X, torch.ones(n), Y, torch.zeros(k), {"seed": seed}), W, b


def test_ridge_recovers_a_linear_map():
    ds, _, b = synthetic()
    model, rep = fit_ridge(ds, holdout=100)
    assert rep.r2 > 0.85 and rep.cosine > 0.9, rep
    assert torch.allclose(model.b, b, atol=0.05)
    # the held-out metrics are what they claim to be
    r2, cos = effect_metrics(model.predict(ds.inputs[-100:]), ds.effects[-100:])
    assert abs(r2 - rep.r2) < 1e-5 and abs(cos - rep.cosine) < 1e-5


def test_ridge_regularises_when_data_are_scarce():
    ds, _, _ = synthetic(n=60, d=24, noise=0.5)
    _, rep = fit_ridge(ds, holdout=20)
    assert rep.alpha is not None and rep.alpha > 1e-4  # CV moved off the smallest alpha


def test_adam_parity_fit_learns_too():
    ds, _, _ = synthetic(n=1500)
    _, rep = fit_adam(ds, holdout=100, lr=1e-2, epochs=15)
    assert rep.r2 > 0.5, rep


def test_effect_model_round_trip_and_checks(tmp_path):
    m = LinearEffectModel(torch.randn(4, 6), torch.randn(6), {"seed": 1})
    m.save(tmp_path / "m")
    back = LinearEffectModel.load(tmp_path / "m")
    assert torch.equal(back.W, m.W) and back.record["seed"] == 1
    with pytest.raises(ValueError):
        LinearEffectModel(torch.randn(4, 6), torch.randn(5))
    with pytest.raises(ValueError, match="NaN"):
        LinearEffectModel(torch.full((4, 6), float("nan")), torch.zeros(6))
    with pytest.raises(ValueError, match="d_model"):
        m.predict(torch.ones(5))
