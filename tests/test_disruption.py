"""The disruption term: next-token KL on a tiny model, and the ridge fit on [v, φ(z)]."""

from __future__ import annotations

import pytest
import torch

from sae_ts.disruption import disruption_features, next_token_kl
from sae_ts.effect_model import (
    DisruptionEffectModel,
    fit,
    fit_ridge,
    fit_ridge_disruption,
    load_effect_model,
)
from sae_ts.effects import EffectDataset
from sae_ts.errors import ArtifactError, ConfigError
from sae_ts.steering import steer
from sae_ts.testing import tiny_model

HOOK = "blocks.0.hook_resid_post"
PROMPTS = ["", "hello world", "the cat"]


@torch.no_grad()
def test_next_token_kl_matches_a_plain_forward_pass():
    model = tiny_model(seed=0)
    g = torch.Generator().manual_seed(0)
    V = torch.randn(5, model.cfg.d_model, generator=g)
    V = V / V.norm(dim=-1, keepdim=True)
    z = next_token_kl(model, HOOK, V, 4.0, PROMPTS, batch_size=2, progress=False)
    assert z.shape == (5,) and (z > 0).all()
    # the reference: full logits, one vector and one prompt at a time; "" is skipped
    for i in (0, 3):
        ref = 0.0
        for p in PROMPTS[1:]:
            toks = model.to_tokens([p], prepend_bos=True)
            lp0 = model(toks)[0, -1].log_softmax(-1)
            with steer(model, V[i], HOOK, scale=4.0):
                lp = model(toks)[0, -1].log_softmax(-1)
            ref += float((lp.exp() * (lp - lp0)).sum()) / 2
        assert abs(float(z[i]) - ref) < 1e-4 * max(1.0, ref)
    # no steering, no disruption; a larger scale disrupts more
    assert next_token_kl(model, HOOK, V[:1], 0.0, PROMPTS, progress=False).abs().max() < 1e-5
    z2 = next_token_kl(model, HOOK, V, 16.0, PROMPTS, progress=False)
    assert (z2 > z).all()


def test_next_token_kl_refuses_bad_input():
    model = tiny_model(seed=0)
    with pytest.raises(ConfigError, match="d_model"):
        next_token_kl(model, HOOK, torch.randn(2, 7), 1.0, PROMPTS)
    with pytest.raises(ConfigError, match="NaN"):
        next_token_kl(model, HOOK, torch.full((1, model.cfg.d_model), float("nan")), 1.0, PROMPTS)
    with pytest.raises(ConfigError, match="non-empty prompt"):
        next_token_kl(model, HOOK, torch.randn(1, model.cfg.d_model), 1.0, [""])


def synthetic(n=600, d=16, k=40, seed=0):
    """Effects with a linear part and an even part driven by a measured z (|v|-independent)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g) / d**0.5
    M = torch.randn(2, k, generator=g)
    b = torch.randn(k, generator=g) * 0.1
    X = torch.randn(n, d, generator=g)
    X = X / X.norm(dim=-1, keepdim=True)
    z = torch.rand(n, generator=g) * 3 + 1
    phi = disruption_features(z, 2.5, 0.87).float()
    Y = X @ W + phi @ M + b + 0.05 * torch.randn(n, k, generator=g)
    rec = {"steer_hook": HOOK, "config": {"prompts": PROMPTS}, "model": "tiny"}
    return EffectDataset(X, torch.full((n,), 4.0), Y, torch.zeros(k), rec), z


def test_ridge_disruption_explains_the_even_part_that_ridge_cannot():
    ds, z = synthetic()
    _, plain = fit_ridge(ds, holdout=100)
    model, rep = fit(ds, "ridge_disruption", holdout=100, disruption=z)
    assert isinstance(model, DisruptionEffectModel) and rep.method == "ridge_disruption"
    assert plain.r2 < 0.5 < 0.9 < rep.r2, (plain, rep)
    # the report's R² is the model's own prediction with z on the held-out vectors
    from sae_ts.effect_model import effect_metrics

    r2, _ = effect_metrics(model.predict(ds.inputs[-100:], z[-100:]), ds.effects[-100:])
    assert abs(r2 - rep.r2) < 1e-4
    # without z the model is its linear part, which the solvers use
    assert torch.allclose(model.predict(ds.inputs[:3]), ds.inputs[:3] @ model.W + model.b)
    assert model.record["disruption"] == {
        "measure": "next_token_kl", "hook": HOOK, "scale": 4.0, "prompts": PROMPTS[1:]
    }  # fmt: skip
    # z is standardised on the training part only
    assert abs(model.z_mean - float(z[:-100].double().mean())) < 1e-9


def test_disruption_model_round_trip_and_checks(tmp_path):
    ds, z = synthetic(n=200)
    model, _ = fit_ridge_disruption(ds, z, holdout=40)
    stem = model.save(tmp_path / "em_x0.2")  # a dot in the stem is not a suffix
    back = load_effect_model(stem)
    assert isinstance(back, DisruptionEffectModel)
    assert torch.allclose(back.M, model.M) and back.z_std == model.z_std
    assert torch.allclose(back.predict(ds.inputs[:4], z[:4]), model.predict(ds.inputs[:4], z[:4]))
    assert torch.allclose(back.predict(ds.inputs[0], z[0]), model.predict(ds.inputs[:1], z[:1])[0])
    with pytest.raises(ValueError, match="values of z"):
        back.predict(ds.inputs[:4], z[:3])
    with pytest.raises(ConfigError, match="needs disruption"):
        fit(ds, "ridge_disruption", holdout=40)
    with pytest.raises(ConfigError, match="takes no disruption"):
        fit(ds, "ridge", holdout=40, disruption=z)
    with pytest.raises(ConfigError, match="one per vector"):
        fit_ridge_disruption(ds, z[:-1], holdout=40)
    with pytest.raises(ConfigError, match="constant"):
        fit_ridge_disruption(ds, torch.ones(len(ds)), holdout=40)
    with pytest.raises(ValueError, match="M must be"):
        DisruptionEffectModel(model.W, model.b, {}, torch.zeros(3, model.d_sae))
    # a damaged file is refused, not half-loaded
    st = stem.with_name(stem.name + ".safetensors")
    st.write_bytes(st.read_bytes()[:-8])
    with pytest.raises(ArtifactError):
        load_effect_model(stem)


def test_predict_measured_uses_the_recorded_hook_scale_and_prompts():
    lm = tiny_model(seed=1)
    ds, _ = synthetic(n=120, d=lm.cfg.d_model)
    z = next_token_kl(lm, HOOK, ds.inputs, 4.0, PROMPTS, progress=False)
    model, _ = fit_ridge_disruption(ds, z, holdout=20)
    got = model.predict_measured(lm, ds.inputs[:3])
    assert torch.allclose(got, model.predict(ds.inputs[:3], z[:3]), atol=1e-5)
    assert torch.allclose(model.predict_measured(lm, ds.inputs[0]), got[0], atol=1e-5)


def fitted_on_tiny() -> tuple:
    """A tiny LM and a disruption model fitted on synthetic effects with the LM's real z."""
    lm = tiny_model(seed=1)
    ds, _ = synthetic(n=160, d=lm.cfg.d_model)
    z = next_token_kl(lm, HOOK, ds.inputs, 4.0, PROMPTS, progress=False)
    return lm, fit_ridge_disruption(ds, z, holdout=20)[0]


def test_targeted_solver_scores_its_candidates_with_the_measured_disruption():
    from sae_ts.solver import Target, solve_with_info, target_stats

    lm, model = fitted_on_tiny()
    target = Target.of({3: 1.0, 7: 0.5})
    v, info = solve_with_info(model, target, "targeted", lm=lm)
    full = model.predict_measured(lm, v)
    assert info["predicted"] == pytest.approx(target_stats(full, target), abs=1e-5)
    # every grid candidate was scored with its own measured z, not the linear part
    lin_v, lin_info = solve_with_info(model, target, "targeted")
    assert lin_info["predicted"] == pytest.approx(target_stats(model.predict(lin_v), target))
    assert info["grid"] != lin_info["grid"]
    with pytest.raises(ConfigError, match="DisruptionEffectModel"):
        from sae_ts.effect_model import LinearEffectModel

        solve_with_info(LinearEffectModel(model.W, model.b), target, lm=lm)


def test_next_token_fisher_is_the_second_order_of_the_kl():
    from sae_ts.disruption import next_token_fisher

    model = tiny_model(seed=0)
    F = next_token_fisher(model, HOOK, PROMPTS, top=10_000, progress=False)
    assert F.shape == (model.cfg.d_model,) * 2 and torch.allclose(F, F.T, atol=1e-10)
    assert torch.linalg.eigvalsh(F).min() > -1e-9  # positive semi-definite
    V = torch.randn(4, model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    V = V / V.norm(dim=-1, keepdim=True)
    s = 0.05
    kl = next_token_kl(model, HOOK, V, s, PROMPTS, progress=False).double()
    quad = 0.5 * s**2 * ((V.double() @ F) * V.double()).sum(-1)
    assert torch.allclose(kl, quad, rtol=0.05), (kl, quad)


def test_targeted_keeps_its_disruption_within_a_budget():
    from sae_ts.solver import Target, solve_with_info

    lm, model = fitted_on_tiny()
    target = Target.of({3: 1.0, 7: 0.5})
    with pytest.raises(ConfigError, match="Fisher"):
        solve_with_info(model, target, max_disruption=0.1)
    model.attach_fisher(lm, progress=False)
    free, _ = solve_with_info(model, target, lm=lm)
    z_free = float(next_token_kl(lm, HOOK, free[None], 4.0, PROMPTS, progress=False)[0])
    budget = z_free / 4
    v, info = solve_with_info(model, target, lm=lm, max_disruption=budget)
    z_v = float(next_token_kl(lm, HOOK, v[None], 4.0, PROMPTS, progress=False)[0])
    assert info["disruption_met"] and info["disruption_measured"] and info["nu"] > 0
    assert z_v <= budget and abs(info["disruption"] - z_v) < 1e-5
    assert info["predicted"]["target_effect"] > 0  # still aims at the target
    # without the LM the budget is on the second-order prediction ½ s² vᵀ F v
    w, winfo = solve_with_info(model, target, max_disruption=budget)
    assert not winfo["disruption_measured"] and float(model.predicted_disruption(w)) <= budget
    with pytest.raises(ConfigError, match="constraint of 'targeted'"):
        solve_with_info(model, target, "sae_ts", max_disruption=budget)
    with pytest.raises(ConfigError, match="> 0"):
        solve_with_info(model, target, max_disruption=0.0)
    # the Fisher matrix is saved with the model
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        back = load_effect_model(model.save(f"{tmp}/em"))
        assert isinstance(back, DisruptionEffectModel) and back.fisher is not None
        assert torch.allclose(back.fisher, model.fisher)
