"""The solvers: the paper rule, pinv, the targeted trust-region solver, refine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_ts.effect_model import LinearEffectModel
from sae_ts.solver import Target, predicted_stats, refine, solve, solve_with_info, target_stats


def test_sae_ts_rule_matches_the_paper_formula():
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        W, b = torch.randn(16, 40, generator=g), torch.randn(40, generator=g)
        t = torch.zeros(40)
        t[3], t[7] = 1.0, 0.5
        model = LinearEffectModel(W, b)
        v = solve(model, {3: 1.0, 7: 0.5}, method="sae_ts")

        def normalize(x):
            return x / x.norm()

        ref = normalize(normalize(W @ t) - normalize(W @ b))
        assert torch.allclose(v, ref, atol=1e-6)
        assert torch.allclose(
            solve(model, {3: 1.0, 7: 0.5}, method="sae_ts", lam=0.0), normalize(W @ t), atol=1e-6
        )


def test_pinv_hits_an_achievable_target_direction():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(30, 20, generator=g)  # full row rank: every effect is achievable
    b = torch.zeros(20)
    model = LinearEffectModel(W, b)
    v = solve(model, {5: 1.0}, method="pinv")
    e = model.predict(v)
    assert abs(float(v.norm()) - 1) < 1e-5
    assert e[5] > 0 and e.abs().argmax() == 5 and (e.abs().sum() - e[5]) < 1e-3


def test_targeted_beats_the_paper_rule_on_target_share():
    """On random effect models the targeted solver has a higher predicted target share."""
    wins = 0
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(32, 200, generator=g)
        b = torch.randn(200, generator=g).abs() * 0.5
        model = LinearEffectModel(W, b)
        tgt = Target.of({1: 1.0, 2: 1.0})
        a = predicted_stats(model, solve(model, tgt, "sae_ts"), tgt)
        v = solve(model, tgt, "targeted")
        c = predicted_stats(model, v, tgt)
        assert abs(float(v.norm()) - 1) < 1e-4
        assert c["target_effect"] > 0
        wins += c["target_share"] > a["target_share"]
    assert wins >= 7


def test_trust_region_is_the_exact_maximiser():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(6, 12, generator=g)
    model = LinearEffectModel(W, torch.zeros(12))
    tgt = Target.of({0: 1.0})
    v, info = solve_with_info(model, tgt, "targeted", mu=1.0)
    mm = info["mu_scale"]
    t = tgt.dense(12)
    wt = torch.ones(12, dtype=torch.float64)
    wt[0] = 0

    def objective(x):
        e = x.double() @ W.double()
        return float(t.double() @ e - mm * (wt * e**2).sum())

    best = objective(v)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        x = torch.as_tensor(rng.normal(size=6))
        assert objective(x / x.norm()) <= best + 1e-6


def test_hold_and_suppress_are_respected():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(40, 80, generator=g)
    model = LinearEffectModel(W, torch.zeros(80))
    hold = [1, 2, 3]
    plain = model.predict(solve(model, {0: 1.0}, "targeted", mu=1.0))
    held = [
        model.predict(
            solve(model, Target.of({0: 1.0}, hold=hold), "targeted", mu=1.0, hold_weight=w)
        )
        for w in (10.0, 100.0)
    ]
    sizes = [float(e[hold].abs().sum()) for e in (plain, *held)]
    assert sizes[0] > sizes[1] > sizes[2] and sizes[2] < 0.1 * sizes[0], sizes
    assert all(e[0] > 0 for e in held)
    sup = model.predict(solve(model, Target.of({0: 1.0}, suppress={4: 1.0}), "targeted", mu=0.0))
    assert sup[4] < 0 and sup[0] > 0


def test_target_validation_and_stats():
    with pytest.raises(ValueError, match="no features"):
        Target({}).validate(10)
    with pytest.raises(ValueError, match="out of range"):
        Target.of([3, 12]).validate(10)
    with pytest.raises(ValueError, match="more than one role"):
        Target.of([3], hold=[3]).validate(10)
    with pytest.raises(ValueError, match="> 0"):
        Target({1: -1.0}).validate(10)
    with pytest.raises(ValueError, match="unknown method"):
        solve(LinearEffectModel(torch.randn(4, 10), torch.zeros(10)), 1, method="magic")  # type: ignore[arg-type]
    e = torch.tensor([2.0, 0.0, -1.0, 1.0])
    s = target_stats(e, Target.of({0: 1.0}, suppress={2: 1.0}))
    assert s["target_effect"] == pytest.approx(1.5)
    assert s["off_target_norm"] == pytest.approx(1.0)
    assert s["target_share"] == pytest.approx(3.0 / 4.0)
    assert Target.from_dict(Target.of({1: 2.0}, hold=[3]).to_dict()) == Target.of(
        {1: 2.0}, hold=[3]
    )


def test_refine_corrects_a_biased_model():
    g = torch.Generator().manual_seed(2)
    W_true = torch.randn(20, 50, generator=g)
    b_true = torch.randn(50, generator=g).abs()
    model = LinearEffectModel(W_true, torch.zeros(50))  # wrong bias
    tgt = Target.of({0: 1.0})
    steps = refine(model, tgt, lambda v: v @ W_true + b_true, method="targeted", steps=2)
    assert len(steps) == 3
    assert steps[0].cosine < 0.999 and steps[-1].cosine > 0.999  # corrected model predicts exactly
    assert steps[-1].measured["target_share"] >= steps[0].measured["target_share"] - 1e-6


def test_paper_rule_with_zero_bias_is_the_plain_direction():
    W = torch.randn(8, 20, generator=torch.Generator().manual_seed(0))
    model = LinearEffectModel(W, torch.zeros(20))
    v = solve(model, {2: 1.0}, "sae_ts")
    assert torch.allclose(v, W[:, 2] / W[:, 2].norm(), atol=1e-6)


def test_a_target_the_model_cannot_move_is_a_clear_error():
    from sae_ts.errors import ConfigError

    W = torch.randn(8, 5)
    W[:, 3] = 0  # feature 3 was never active in the training data
    model = LinearEffectModel(W, torch.zeros(5))
    for method in ("sae_ts", "targeted"):
        with pytest.raises(ConfigError, match=r"no effect on the target features \[3\]"):
            solve(model, {3: 1.0}, method)  # type: ignore[arg-type]
    assert torch.isfinite(solve(model, {2: 1.0, 3: 1.0})).all()


def test_targeted_within_a_span_is_the_exact_maximiser_there():
    """``within=`` restricts the solution to a span; it is the best unit vector of that span."""
    g = torch.Generator().manual_seed(4)
    W, b = torch.randn(10, 30, generator=g), torch.randn(30, generator=g).abs()
    model = LinearEffectModel(W, b)
    tgt = Target.of({0: 1.0})
    rows = torch.randn(3, 10, generator=g) * torch.tensor([[1.0], [5.0], [0.2]])  # not orthonormal
    v, info = solve_with_info(model, tgt, "targeted", mu=1.0, within=rows)
    assert info["within_rank"] == 3 and abs(float(v.norm()) - 1) < 1e-5
    coef = torch.linalg.lstsq(rows.double().T, v.double()[:, None]).solution
    assert torch.allclose(rows.double().T @ coef, v.double()[:, None], atol=1e-5)  # in the span
    mm, wt = info["mu_scale"], torch.ones(30, dtype=torch.float64)
    wt[0] = 0

    def objective(x):
        e = x.double() @ W.double() + b.double()
        return float(e[0] - mm * (wt * e**2).sum())

    best = objective(v)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        x = torch.as_tensor(rng.normal(size=3)) @ rows.double()
        assert objective(x / x.norm()) <= best + 1e-6
    # one row: the solution is that row, pointed to raise the target
    one = solve(model, tgt, "targeted", within=rows[:1])
    assert torch.allclose(one.abs(), (rows[0] / rows[0].norm()).abs(), atol=1e-5)
    assert float(one @ W[:, 0]) > 0


def test_decoder_span_and_within_errors():
    from sae_ts.errors import ConfigError
    from sae_ts.solver import decoder_span

    g = torch.Generator().manual_seed(5)
    W = torch.randn(8, 20, generator=g)
    model = LinearEffectModel(W, torch.zeros(20))
    W_dec = torch.randn(20, 8, generator=g)
    rows, ids = decoder_span(model, W_dec, {3: 1.0, 7: 1.0}, k=4)
    assert ids[:2] == [3, 7] and len(ids) == 6 == len(set(ids))
    gain = (W_dec / W_dec.norm(dim=1, keepdim=True)) @ (W @ Target.of({3: 1.0, 7: 1.0}).dense(20))
    others = [i for i in torch.argsort(gain, descending=True).tolist() if i not in (3, 7)]
    assert ids[2:] == others[:4]  # the rows the model predicts to move the target most
    assert torch.allclose(rows.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.allclose(rows[0], W_dec[3] / W_dec[3].norm(), atol=1e-6)
    with pytest.raises(ConfigError, match="W_dec must be"):
        decoder_span(model, W_dec.T, {3: 1.0})
    with pytest.raises(ConfigError, match=r"feature ids out of range"):
        decoder_span(model, W_dec, {99: 1.0})
    with pytest.raises(ConfigError, match=r"within must be \[k, d_model=8\]"):
        solve(model, {3: 1.0}, within=torch.randn(2, 5))
    with pytest.raises(ConfigError, match="finite"):
        solve(model, {3: 1.0}, within=torch.full((2, 8), float("nan")))
    with pytest.raises(ConfigError, match="within is a constraint of 'targeted'"):
        solve(model, {3: 1.0}, "sae_ts", within=rows)


def test_solve_in_decoder_span_never_steers_against_a_target_latent():
    from sae_ts.solver import decoder_span, solve_in_decoder_span

    checked = fallbacks = 0
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        W, b = torch.randn(12, 30, generator=g), torch.randn(30, generator=g).abs()
        model = LinearEffectModel(W, b)
        W_dec = torch.randn(30, 12, generator=g)
        tgt = Target.of({0: 1.0, 1: 1.0, 2: 1.0}, suppress={5: 1.0})
        rows, _ = decoder_span(model, W_dec, tgt, k=0)
        plain = solve(model, tgt, within=rows)
        coef = torch.linalg.lstsq(rows.double().T, plain.double()[:, None]).solution[:, 0]
        if not ((coef[:3] < 0).any() or coef[3] > 0):
            continue  # the plain solve already points every target row the wanted way
        v, info = solve_in_decoder_span(model, W_dec, tgt)
        assert info["dropped"] and abs(float(v.norm()) - 1) < 1e-5
        for i, w in zip(info["span_ids"], info["span_weights"]):
            assert (w >= -1e-9) if i != 5 else (w <= 1e-9), (seed, info)
        assert set(info["span_ids"]) | set(info["dropped"]) == {0, 1, 2, 5}
        if "fallback" in info:  # the last target row was still wrong: that row, signed
            assert len(info["dropped"]) == 3 and "mu" not in info and "predicted" in info
            fallbacks += 1
        back = sum(
            w * W_dec[i] / W_dec[i].norm() for i, w in zip(info["span_ids"], info["span_weights"])
        )
        assert torch.allclose(back.float(), v, atol=1e-5)  # the weights reproduce the vector
        checked += 1
    assert checked >= 5 and fallbacks >= 1


def test_anchor_trades_the_anchor_against_the_target():
    """``anchor=`` adds ``κ |W a| (â · v)`` to targeted's objective: κ = 0 is plain ``targeted``,
    a large κ returns the anchor, and at a fixed μ the solution is the exact maximiser."""
    from sae_ts.errors import ConfigError

    g = torch.Generator().manual_seed(6)
    W, b = torch.randn(12, 40, generator=g), torch.randn(40, generator=g).abs()
    model = LinearEffectModel(W, b)
    tgt = Target.of({0: 1.0, 1: 0.5})
    anchor = torch.randn(12, generator=g) * 3.0
    plain = solve(model, tgt, "targeted", mu=1.0)
    assert torch.allclose(
        solve(model, tgt, "targeted", mu=1.0, anchor=anchor, anchor_weight=0.0), plain
    )
    cosines = []
    for k in (0.5, 2.0, 1e4):
        v, info = solve_with_info(model, tgt, "targeted", mu=1.0, anchor=anchor, anchor_weight=k)
        assert info["anchor_weight"] == k and abs(float(v.norm()) - 1) < 1e-5
        cosines.append(info["anchor_cosine"])
    assert cosines[0] < cosines[1] < cosines[2] and cosines[2] > 0.999, cosines

    v, info = solve_with_info(model, tgt, "targeted", mu=1.0, anchor=anchor, anchor_weight=1.0)
    t, mm = tgt.dense(40).double(), info["mu_scale"]
    wt = torch.ones(40, dtype=torch.float64)
    wt[[0, 1]] = 0
    a_hat = anchor.double() / anchor.norm()
    pull = float((W.double() @ t).norm())

    def objective(x):
        e = x.double() @ W.double() + b.double()
        return float(t @ e + pull * (a_hat @ x.double()) - mm * (wt * e**2).sum())

    best = objective(v)
    rng = np.random.default_rng(1)
    for _ in range(2000):
        x = torch.as_tensor(rng.normal(size=12))
        assert objective(x / x.norm()) <= best + 1e-6

    with pytest.raises(ConfigError, match=r"anchor must have shape \[12\]"):
        solve(model, tgt, anchor=torch.ones(5))
    with pytest.raises(ConfigError, match="finite and non-zero"):
        solve(model, tgt, anchor=torch.full((12,), float("nan")))
    with pytest.raises(ConfigError, match="finite and non-zero"):
        solve(model, tgt, anchor=torch.zeros(12))
    with pytest.raises(ConfigError, match="anchor_weight must be"):
        solve(model, tgt, anchor=anchor, anchor_weight=-1.0)
    with pytest.raises(ConfigError, match="anchor is a term of 'targeted'"):
        solve(model, tgt, "sae_ts", anchor=anchor)


def test_anchor_combines_with_within():
    """``anchor=`` with ``within=``: the solution stays in the span, a large κ returns the
    anchor's projection onto the span, and an anchor orthogonal to the span is refused."""
    from sae_ts.errors import ConfigError

    g = torch.Generator().manual_seed(8)
    W, b = torch.randn(12, 40, generator=g), torch.randn(40, generator=g).abs()
    model = LinearEffectModel(W, b)
    tgt = Target.of({0: 1.0, 1: 0.5})
    rows = torch.randn(3, 12, generator=g)
    Q, _ = torch.linalg.qr(rows.double().T)  # [12, 3] orthonormal basis of the span
    anchor = torch.randn(12, generator=g)
    for k in (0.0, 1.0, 1e4):
        v, info = solve_with_info(
            model, tgt, "targeted", mu=1.0, within=rows, anchor=anchor, anchor_weight=k
        )
        assert info["within_rank"] == 3 and abs(float(v.norm()) - 1) < 1e-5
        assert float((v.double() - Q @ (Q.T @ v.double())).norm()) < 1e-6  # in the span
    projected = Q @ (Q.T @ anchor.double())
    assert float(v.double() @ projected / projected.norm()) > 0.999  # κ = 1e4: the projection
    outside = anchor.double() - projected
    with pytest.raises(ConfigError, match="no component in the solver's space"):
        solve(model, tgt, "targeted", within=rows, anchor=outside.float())
