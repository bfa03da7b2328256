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


def _explicit_loo_choice(ds, holdout, alphas):
    """Per feature, the strength whose explicit leave-one-out refits predict best."""
    X, Y = ds.inputs[:-holdout].double(), ds.effects[:-holdout].double()
    errs = torch.zeros(len(alphas), Y.shape[1], dtype=torch.float64)
    for j, a in enumerate(alphas.tolist()):
        for i in range(X.shape[0]):
            keep = torch.arange(X.shape[0]) != i
            xm, ym = X[keep].mean(0), Y[keep].mean(0)
            Xc = X[keep] - xm
            W = torch.linalg.solve(Xc.T @ Xc + a * torch.eye(X.shape[1], dtype=X.dtype),
                                   Xc.T @ (Y[keep] - ym))  # fmt: skip
            errs[j] += ((X[i] - xm) @ W + ym - Y[i]) ** 2
    return errs.argmin(0)


def test_per_feature_ridge_uses_exact_leave_one_out():
    """The closed-form LOO strengths equal those of explicit leave-one-out refits."""
    from sae_ts.effect_model import fit_ridge_per_feature

    ds, _, _ = synthetic(n=40, d=6, k=12, noise=0.5, seed=3)
    alphas = torch.logspace(-2, 2, 5, dtype=torch.float64)
    model, rep = fit_ridge_per_feature(ds, holdout=10, alphas=alphas)
    want = _explicit_loo_choice(ds, 10, alphas)
    counts = torch.bincount(want, minlength=len(alphas)).tolist()
    assert [int(c) for c in rep.cv.values()] == counts, (rep.cv, counts)
    # each column is the ridge solution at its own strength
    X, Y = ds.inputs[:-10].double(), ds.effects[:-10].double()
    Xc = X - X.mean(0)
    for j in range(Y.shape[1]):
        a = float(alphas[want[j]])
        w = torch.linalg.solve(Xc.T @ Xc + a * torch.eye(6, dtype=X.dtype),
                               Xc.T @ (Y[:, j] - Y[:, j].mean()))  # fmt: skip
        assert torch.allclose(model.W[:, j].double(), w, atol=1e-5)


def test_per_feature_ridge_shrinks_noise_features_harder():
    """Features with no signal get strong shrinkage; the fit beats one shared strength there."""
    from sae_ts.effect_model import fit, fit_ridge_per_feature

    ds, _, _ = synthetic(n=300, d=24, k=40, noise=0.05, seed=1)
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(300, 40, generator=g)  # 40 pure-noise features next to 40 signal ones
    mixed = EffectDataset(ds.inputs, ds.scales, torch.cat([ds.effects, noise], 1), torch.zeros(80))
    model, rep = fit_ridge_per_feature(mixed, holdout=60)
    shared, rep_shared = fit(mixed, "ridge", holdout=60)
    col = model.W[:, 40:].norm(dim=0).median()  # a few noise features fit by chance: medians
    assert col < 0.5 * shared.W[:, 40:].norm(dim=0).median()
    assert rep.r2 >= rep_shared.r2 - 1e-3


def test_fit_entry_point_refuses_unknown_methods():
    from sae_ts.effect_model import fit
    from sae_ts.errors import ConfigError

    ds, _, _ = synthetic(n=60)
    for method in ("ridge", "ridge_per_feature", "adam"):
        model, rep = fit(ds, method, holdout=10)  # type: ignore[arg-type]
        assert rep.method == method and model.W.shape == (24, 60)
    with pytest.raises(ConfigError, match="unknown fit method"):
        fit(ds, "lasso", holdout=10)  # type: ignore[arg-type]
