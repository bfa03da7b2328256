"""The first-token prior on a tiny model, and the ridge fit on [v, PCA(prior)]."""

from __future__ import annotations

import pytest
import torch

from sae_ts.effect_model import (
    FirstTokenEffectModel,
    LinearEffectModel,
    dataset_prior,
    effect_metrics,
    fit,
    fit_ridge,
    load_effect_model,
)
from sae_ts.effects import EffectDataset
from sae_ts.errors import ArtifactError, ConfigError
from sae_ts.experiments.compare.run import DEFAULT_METHODS, METHODS, Task, build_vectors
from sae_ts.first_token import FirstTokenPrior, first_token_prior
from sae_ts.generation import _candidates
from sae_ts.solver import Target, solve, solve_with_info, target_stats
from sae_ts.steering import steer
from sae_ts.testing import tiny_loaded

HOOK = "blocks.0.hook_resid_post"
PROMPTS = ["", "hello world", "the cat"]
SAMPLING = {"temperature": 1.0, "top_k": 8, "top_p": 0.9}


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    V = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return V / V.norm(dim=-1, keepdim=True)


@torch.no_grad()
def reference_prior(lm, sae, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One vector, one prompt and one candidate token at a time, from plain forward passes."""
    out = torch.zeros(sae.W_dec.shape[0])
    for p in PROMPTS[1:]:
        toks = lm.to_tokens([p], prepend_bos=True)
        for sign, s in ((1.0, scale), (-1.0, 0.0)):
            with steer(lm, v, HOOK, scale=s):
                logits = lm(toks)[:, -1]
            vals, idx, keep = _candidates(logits, 1.0, SAMPLING["top_k"], SAMPLING["top_p"])
            probs = vals.softmax(-1) * keep
            probs = probs / probs.sum()
            for t, w in zip(idx[0].tolist(), probs[0].tolist()):
                if w == 0:
                    continue
                x = torch.cat([toks, torch.tensor([[t]])], 1)
                _, cache = lm.run_with_cache(x, names_filter=HOOK)
                out += sign * w * sae.encode(cache[HOOK][0, -1])
    return out / 2


def test_first_token_prior_matches_plain_forward_passes():
    lm, sae, _ = tiny_loaded(seed=2)
    V = unit(5, lm.cfg.d_model, 0)
    P = first_token_prior(lm, sae, HOOK, V, 6.0, PROMPTS, batch_size=2, progress=False, **SAMPLING)
    assert P.shape == (5, sae.W_dec.shape[0]) and P.abs().sum() > 0
    for i in (0, 4):
        assert torch.allclose(P[i], reference_prior(lm, sae, V[i], 6.0), atol=1e-4)
    # no steering, no change; the same call gives the same numbers
    P0 = first_token_prior(lm, sae, HOOK, V[:2], 1e-9, PROMPTS, progress=False, **SAMPLING)
    assert P0.abs().max() < 1e-5
    again = first_token_prior(
        lm, sae, HOOK, V, 6.0, PROMPTS, batch_size=2, progress=False, **SAMPLING
    )
    assert torch.equal(P, again)


def test_first_token_prior_refuses_bad_input():
    lm, sae, _ = tiny_loaded(seed=2)
    d = lm.cfg.d_model
    with pytest.raises(ConfigError, match="d_model"):
        first_token_prior(lm, sae, HOOK, torch.randn(2, 7), 1.0, PROMPTS)
    with pytest.raises(ConfigError, match="NaN"):
        first_token_prior(lm, sae, HOOK, torch.full((1, d), float("nan")), 1.0, PROMPTS)
    with pytest.raises(ConfigError, match="non-empty prompt"):
        first_token_prior(lm, sae, HOOK, unit(1, d, 0), 1.0, [""])
    with pytest.raises(ConfigError, match="scale"):
        first_token_prior(lm, sae, HOOK, unit(1, d, 0), float("nan"), PROMPTS)


def campaign(n: int = 400, seed: int = 0):
    """A tiny LM, its SAE, and synthetic effects that hold a linear part plus a part driven by
    the vectors' real first-token prior (which ridge on ``v`` alone cannot fully express)."""
    lm, sae, _ = tiny_loaded(seed=2)
    g = torch.Generator().manual_seed(seed)
    X = unit(n, lm.cfg.d_model, seed)
    rec = {"steer_hook": HOOK, "sae_hook": HOOK, "model": "tiny",
           "config": {"prompts": PROMPTS, **SAMPLING}}  # fmt: skip
    k = sae.W_dec.shape[0]
    ds = EffectDataset(X, torch.full((n,), 6.0), torch.zeros(n, k), torch.zeros(k), rec)
    P = dataset_prior(lm, sae, ds, progress=False)
    W = torch.randn(lm.cfg.d_model, k, generator=g) * 0.02
    ds.effects = X @ W + 3.0 * P + 0.01 * torch.randn(n, k, generator=g)
    return lm, sae, ds, P


def test_ridge_first_token_fits_what_the_prior_carries():
    lm, sae, ds, P = campaign()
    _, plain = fit_ridge(ds, holdout=80)
    model, rep = fit(ds, "ridge_first_token", holdout=80, prior=P)
    assert isinstance(model, FirstTokenEffectModel) and rep.method == "ridge_first_token"
    assert rep.r2 > plain.r2 + 0.1 and rep.r2 > 0.8, (plain, rep)
    # the report's R² is the whole model's prediction with the prior on the held-out vectors
    r2, _ = effect_metrics(model.predict(ds.inputs[-80:], P[-80:]), ds.effects[-80:])
    assert abs(r2 - rep.r2) < 1e-3
    # measured on the LM, the prior is the one the fit used
    got = model.predict_measured(lm, sae, ds.inputs[:3])
    assert torch.allclose(got, model.predict(ds.inputs[:3], P[:3]), atol=1e-4)
    spec = model.record["first_token"]
    assert spec["top_k"] == 8 and spec["scale"] == 6 and spec["top_p"] is None  # no top-p cut
    # without a prior: the linearisation, which the solvers plan with
    assert torch.allclose(model.predict(ds.inputs[:3]), ds.inputs[:3] @ model.W + model.b)
    # ... which is the prior's components regressed on v by ridge at the joint fit's strength
    # (W_direct + A M), and that is plain ridge at that strength
    n_fit = len(ds) - 80
    X = ds.inputs[:n_fit].double()
    Z = ((P[:n_fit] - model.mean) @ model.basis).double()
    Xc, Zc = X - X.mean(0), Z - Z.mean(0)
    A = torch.linalg.solve(Xc.T @ Xc + rep.alpha * torch.eye(X.shape[1]), Xc.T @ Zc)
    lin = model.W_direct.double() + A @ model.M.double()
    assert (lin - model.W.double()).abs().max() < 1e-3 * model.W.abs().max()
    ridge, _ = fit_ridge(ds, holdout=80, alphas=torch.tensor([rep.alpha], dtype=torch.float64))
    assert torch.equal(model.W, ridge.W) and torch.equal(model.b, ridge.b)
    v = solve(model, {0: 1.0}, method="targeted")
    assert torch.isfinite(v).all() and abs(float(v.norm()) - 1) < 1e-4


def test_first_token_model_round_trip_and_checks(tmp_path):
    _, _, ds, P = campaign(n=160)
    model, _ = fit(ds, "ridge_first_token", holdout=40, prior=P)
    stem = model.save(tmp_path / "em")
    back = load_effect_model(stem)
    assert isinstance(back, FirstTokenEffectModel)
    assert torch.allclose(back.predict(ds.inputs[:4], P[:4]), model.predict(ds.inputs[:4], P[:4]))
    assert torch.allclose(back.predict(ds.inputs[:4]), model.predict(ds.inputs[:4]))
    with pytest.raises(ValueError, match="one row per vector"):
        back.predict(ds.inputs[:4], P[:3])
    with pytest.raises(ConfigError, match="needs prior"):
        fit(ds, "ridge_first_token", holdout=40)
    with pytest.raises(ConfigError, match="takes no first-token prior"):
        fit(ds, "ridge", holdout=40, prior=P)
    with pytest.raises(ConfigError, match="one row per vector"):
        fit(ds, "ridge_first_token", holdout=40, prior=P[:-1])
    with pytest.raises(ConfigError, match="zero on every"):
        fit(ds, "ridge_first_token", holdout=40, prior=torch.zeros_like(P))
    with pytest.raises(ValueError, match="M must be"):
        FirstTokenEffectModel(model.W, model.b, {}, W_direct=model.W_direct,
                              b_direct=model.b_direct, basis=model.basis, mean=model.mean,
                              M=model.M[:-1])  # fmt: skip
    st = stem.with_name(stem.name + ".safetensors")
    st.write_bytes(st.read_bytes()[:-8])
    with pytest.raises(ArtifactError):
        load_effect_model(stem)


def test_first_token_prior_callable_is_differentiable():
    lm, sae, _ = tiny_loaded(seed=2)
    prior = FirstTokenPrior(lm, sae, HOOK, 6.0, PROMPTS, **SAMPLING)
    V = unit(3, lm.cfg.d_model, 1)
    with torch.no_grad():
        assert torch.equal(prior(V), first_token_prior(lm, sae, HOOK, V, 6.0, PROMPTS,
                                                       progress=False, **SAMPLING))  # fmt: skip
    # the autograd directional derivative against central differences
    v, u = V[0].clone().requires_grad_(True), unit(1, lm.cfg.d_model, 2)[0]
    w = torch.randn(sae.W_dec.shape[0], generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad((prior(v[None])[0] * w).sum(), v)
    with torch.no_grad():
        eps = 1e-3
        fd = ((prior((V[0] + eps * u)[None]) - prior((V[0] - eps * u)[None]))[0] * w).sum()
    assert g.abs().sum() > 0
    assert abs(float(g @ u) - float(fd) / (2 * eps)) < 2e-2 * max(1.0, abs(float(g @ u)))


def test_targeted_ascends_the_whole_first_token_model():
    lm, sae, ds, P = campaign()
    model, _ = fit(ds, "ridge_first_token", holdout=80, prior=P)
    # the target: the feature the prior moves most across the campaign
    j = int(P.abs().mean(0).argmax())
    tgt = Target.of({j: 1.0})
    v0, lin = solve_with_info(model, tgt, "targeted")
    v, info = solve_with_info(model, tgt, "targeted", lm=lm, sae=sae, ascent_steps=12)
    ft = info["first_token"]
    assert abs(float(v.norm()) - 1) < 1e-5 and ft["objective"][1] >= ft["objective"][0]
    assert ft["accepted"] >= 1 and ft["cos_to_linear"] < 1.0
    # the reported prediction is the whole model's, the prior measured at the solution
    assert info["predicted"] == pytest.approx(
        target_stats(model.predict_measured(lm, sae, v), tgt), rel=1e-4, abs=1e-5
    )
    # the objective, measured independently, rose from the linear solution's
    mm = info["mu"] * info["mu_scale"]
    w = torch.ones(model.d_sae)
    w[j] = 0.0

    def objective(x: torch.Tensor) -> float:
        e = model.predict_measured(lm, sae, x)
        return float(e[j] - mm * (w * e * e).sum())

    assert objective(v) > objective(v0)
    # no steps: the linear part's solution, scored with the whole model
    v_0, info_0 = solve_with_info(model, tgt, "targeted", lm=lm, sae=sae, ascent_steps=0)
    assert torch.equal(v_0, v0) and info_0["first_token"]["accepted"] == 0
    assert lin["mu"] == info["mu"]
    with pytest.raises(ConfigError, match="needs sae="):
        solve(model, tgt, "targeted", lm=lm)
    with pytest.raises(ConfigError, match="do not combine"):
        solve(model, tgt, "targeted", lm=lm, sae=sae, within=torch.eye(lm.cfg.d_model)[:2])
    with pytest.raises(ConfigError, match="ascent_steps"):
        solve(model, tgt, "targeted", lm=lm, sae=sae, ascent_steps=-1)
    with pytest.raises(ConfigError, match="anchor= and the first-token ascent"):
        solve(model, tgt, "targeted", lm=lm, sae=sae, anchor=torch.ones(lm.cfg.d_model))


def test_comparison_row_targeted_ft():
    lm, sae, ds, P = campaign(n=160)
    model, _ = fit(ds, "ridge_first_token", holdout=40, prior=P)
    task = Task("t", ["a pos text"], ["a neg text"], "score", "coherence")
    tgt = Target.of({int(P.abs().mean(0).argmax()): 1.0})
    got = build_vectors(lm, sae, task, HOOK, model, tgt, ["targeted", "targeted_ft"])
    assert torch.equal(got["targeted_ft"], solve(model, tgt, "targeted", lm=lm, sae=sae))
    assert torch.equal(got["targeted"], solve(model, tgt, "targeted"))
    plain = LinearEffectModel(model.W, model.b)
    with pytest.raises(ConfigError, match="needs a first-token effect model"):
        build_vectors(lm, sae, task, HOOK, plain, tgt, ["targeted_ft"])
    assert "targeted_ft" in METHODS and "targeted_ft" not in DEFAULT_METHODS
