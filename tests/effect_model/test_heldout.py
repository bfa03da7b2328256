"""Noise ceiling, held-out evaluation and the underdetermined-fit warning, on synthetic effects."""

from __future__ import annotations

import pytest
import torch

from sae_ts.effect_model import (
    LinearEffectModel,
    UnderdeterminedFitWarning,
    evaluate_heldout,
    fit_ridge,
    linear_share,
    noise_ceiling,
)
from sae_ts.effects import EffectDataset
from sae_ts.errors import ConfigError


def _measured(n: int, d: int, k: int, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g)
    b = torch.randn(k, generator=g)
    x = torch.randn(n, d, generator=g)
    x = x / x.norm(dim=-1, keepdim=True)
    true = x @ W + b
    halves = [true + noise * torch.randn(n, k, generator=g) for _ in range(2)]
    return W, b, x, true, halves


def test_ceiling_matches_the_known_noise():
    _, _, _, true, (a, b) = _measured(400, 8, 300, noise=0.5, seed=0)
    nc = noise_ceiling(a, b)
    m = (a + b) / 2  # its noise variance is 0.25 / 2 per entry
    want = 1 - (0.125 * m.numel()) / float(((m - m.mean(0)) ** 2).sum())
    assert abs(nc["ceiling"] - want) < 0.02
    # the true effects score about the ceiling against the average
    sse = float(((true - m) ** 2).sum())
    assert abs((1 - sse / float(((m - m.mean(0)) ** 2).sum())) - nc["ceiling"]) < 0.02
    assert nc["split_half_r2"] < nc["ceiling"]  # one half is noisier than the average
    same = noise_ceiling(true, true)
    assert same["ceiling"] == pytest.approx(1.0) and same["centred_cosine"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="halves"):
        noise_ceiling(a, b[:3])


def test_evaluate_heldout_puts_the_true_model_at_its_ceiling():
    W, b, x, _, (a, bb) = _measured(200, 8, 50, noise=0.3, seed=1)
    z = torch.zeros(200)
    ta = EffectDataset(x, z, a, torch.zeros(50))
    tb = EffectDataset(x, z, bb, torch.zeros(50))
    groups = ["dec"] * 100 + ["gauss"] * 100
    rep = evaluate_heldout(LinearEffectModel(W, b), ta, tb, groups=groups, features=[0, 3])
    assert set(rep) == {"all", "dec", "gauss"}
    assert rep["all"]["r2_over_ceiling"] == pytest.approx(1.0, abs=0.05)
    assert rep["all"]["cosine_minus_b"] > 0.9
    assert "r2_features" in rep["dec"]
    wrong = evaluate_heldout(LinearEffectModel(-W, b), ta, tb)
    assert wrong["all"]["r2"] < 0 and wrong["all"]["cosine_minus_b"] < 0
    with pytest.raises(ValueError, match="same directions"):
        evaluate_heldout(LinearEffectModel(W, b), ta, EffectDataset(-x, z, bb, torch.zeros(50)))


def test_test_runs_are_scored_against_the_training_baseline():
    """Each run's baseline estimate has its own sampling error: a constant offset on all of its
    effects. Scored on its own baseline, a perfect model loses R² to an error it cannot see;
    re-referenced to the training baseline, it is back at its ceiling."""
    W, b, x, _, (a, bb) = _measured(200, 8, 50, noise=0.3, seed=3)
    g = torch.Generator().manual_seed(4)
    base_train = torch.rand(50, generator=g) + 1
    err_a, err_b = 0.6 * torch.randn(50, generator=g), 0.6 * torch.randn(50, generator=g)
    z = torch.zeros(200)
    # the same steered means, minus each run's own (mis-)estimate of the unsteered mean
    ta = EffectDataset(x, z, a - err_a, base_train + err_a)
    tb = EffectDataset(x, z, bb - err_b, base_train + err_b)
    em = LinearEffectModel(W, b)
    own = evaluate_heldout(em, ta, tb)["all"]
    shared = evaluate_heldout(em, ta, tb, baseline=base_train)["all"]
    assert shared["r2_over_ceiling"] == pytest.approx(1.0, abs=0.05)
    assert own["r2"] < shared["r2"] - 0.1
    # rebase is exact and refuses a baseline of another SAE's width or with NaNs
    back = ta.rebase(base_train)
    assert torch.allclose(back.effects, a, atol=1e-5) and torch.equal(back.baseline, base_train)
    with pytest.raises(ValueError, match="shape"):
        ta.rebase(torch.zeros(49))
    with pytest.raises(ValueError, match="NaN"):
        ta.rebase(torch.full((50,), float("nan")))
    # subset keeps the rows asked for, in that order, with the same baseline
    sub = ta.subset([5, 2])
    assert torch.equal(sub.effects, ta.effects[[5, 2]]) and torch.equal(
        sub.inputs, ta.inputs[[5, 2]]
    )
    assert torch.equal(sub.baseline, ta.baseline) and len(sub) == 2
    with pytest.raises(IndexError, match="subset"):
        ta.subset([len(ta)])


def test_underdetermined_fit_warns_and_a_full_rank_fit_does_not():
    _, _, x, _, (a, _) = _measured(60, 16, 20, noise=0.1, seed=2)
    ds = EffectDataset(x, torch.zeros(60), a, torch.zeros(20))
    with pytest.warns(UnderdeterminedFitWarning, match="rank"):
        fit_ridge(ds, holdout=50)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnderdeterminedFitWarning)
        fit_ridge(ds, holdout=10)


def test_rollout_reliability_recovers_the_known_signal_and_noise():
    from sae_ts.effect_model import RolloutReliability

    g = torch.Generator().manual_seed(3)
    n, k, r, sigma = 300, 200, 4, 2.0  # per-rollout noise sd 2: an r-rollout half has sd 2/sqrt(r)
    true = torch.randn(n, k, generator=g)
    a, b = (true + sigma / r**0.5 * torch.randn(n, k, generator=g) for _ in range(2))
    rel = RolloutReliability.from_halves(a, b, rollouts=r)
    signal = float(((true - true.mean(0)) ** 2).sum())
    assert rel.signal == pytest.approx(signal, rel=0.03)
    assert rel.noise_per_rollout == pytest.approx(sigma**2 * n * k, rel=0.03)
    # at the halves' own average (2r rollouts) it is noise_ceiling's ceiling
    assert rel.at(2 * r) == pytest.approx(noise_ceiling(a, b)["ceiling"], abs=1e-9)
    # Spearman-Brown: a 1-rollout measurement has reliability 1 / (1 + sigma^2), and the rollouts
    # that reach a target invert it
    assert rel.at(1) == pytest.approx(1 / (1 + sigma**2), abs=0.01)
    k9 = rel.rollouts_for(0.9)
    assert k9 == pytest.approx(sigma**2 * 9, rel=0.05) and rel.at(k9) == pytest.approx(0.9)
    assert rel.rollouts_for(0.5) < k9
    flat = RolloutReliability.from_halves(torch.zeros(5, 3), torch.randn(5, 3, generator=g), 1)
    assert flat.rollouts_for(0.5) == float("inf")
    with pytest.raises(ValueError, match="target"):
        rel.rollouts_for(1.0)
    with pytest.raises(ValueError, match="halves"):
        RolloutReliability.from_halves(a, b[:3], rollouts=r)


def test_linear_share_recovers_the_odd_part_through_noise():
    """Effects = linear part + a disruption term even in v; the share is known by construction."""
    g = torch.Generator().manual_seed(5)
    n, d, k = 300, 8, 120
    W = torch.randn(d, k, generator=g)
    u = torch.randn(d, generator=g)
    m = torch.randn(k, generator=g)
    x = torch.randn(n, d, generator=g)

    def true(v):
        return v @ W + 0.5 * ((v @ u) ** 2)[:, None] * m

    odd = x @ W
    even = 0.5 * ((x @ u) ** 2)[:, None] * m
    even = even - even.mean(0)
    want = float((odd**2).sum() / ((odd**2).sum() + (even**2).sum()))
    assert 0.2 < want < 0.8  # both parts matter in this construction

    def halves(v):
        return tuple(true(v) + 3.0 * torch.randn(n, k, generator=g) for _ in range(2))

    got = linear_share(halves(x), halves(-x))
    assert got["linear_share"] == pytest.approx(want, abs=0.03)  # noise is removed, not counted
    assert linear_share((odd, odd), (-odd, -odd))["linear_share"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="four"):
        linear_share((odd, odd), (odd, odd[:5]))
