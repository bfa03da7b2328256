from __future__ import annotations

import pytest
import torch

import sae_ts.targets as targets
from sae_ts.targets import LatentDensity, latent_density, select_targets, text_activations
from sae_ts.testing import tiny_sae

HOOK = "blocks.1.hook_resid_post"
D_SAE = 7


def _fake_acts(pos, neg):
    """Latent 0: a big activation on one positive text only (the largest raw gap).
    Latent 1: fires weakly on every positive text and no negative one (selective).
    Latent 2: fires on 3 of 4 positives, no negative. Latent 3: fires everywhere (dense).
    Latent 4: fires on 3 of 4 positives, more strongly than latent 2, and on one negative.
    Latent 6: like latent 1 but weaker, and rarer on reference text."""
    rows = []
    for k, t in enumerate([*pos, *neg]):
        is_pos = k < len(pos)
        f = torch.zeros(2, D_SAE)
        f[0, 0] = 50.0 if k == 0 else 0.0
        f[1, 1] = 0.5 if is_pos else 0.0
        f[0, 2] = 1.0 if is_pos and k < 3 else 0.0
        f[1, 3] = 2.0
        f[0, 4] = 3.0 if (is_pos and k < 3) or k == len(pos) else 0.0
        f[1, 6] = 0.2 if is_pos else 0.0
        rows.append(([t[:3], t[3:]], f))
    return rows


def test_select_targets_ranks_by_consistency_and_drops_dense(monkeypatch):
    pos, neg = ["pos a", "pos b", "pos c", "pos d"], ["neg a", "neg b", "neg c", "neg d"]
    monkeypatch.setattr(targets, "text_activations", lambda m, s, texts, h: _fake_acts(pos, neg))
    sae = tiny_sae(8, HOOK, d_sae=D_SAE)
    rate = torch.tensor([0.0, 0.01, 0.02, 0.9, 0.01, 0.0, 0.001])
    dens = LatentDensity(rate, torch.ones(D_SAE), torch.zeros(D_SAE, dtype=torch.long), ["x"], 10)
    got = select_targets(None, sae, pos, neg, HOOK, top=4, density=dens)
    # fire gaps: latents 6 and 1: 1.0 (6 is rarer on reference text), latent 2: 0.75,
    # latent 4: 0.75 - 0.25 = 0.5, latent 0: 0.25
    assert [t.latent for t in got] == [6, 1, 2, 4]
    assert all(t.weight == pytest.approx(0.5) for t in got)
    one = got[1]
    assert one.fire_pos == 1.0 and one.fire_neg == 0.0 and one.auroc == 1.0
    assert one.density == pytest.approx(0.01) and one.reference_context is not None
    assert one.contexts[0]["label"] == "pos" and one.contexts[0]["activation"] == 0.5
    # without densities the larger gap breaks the tie
    assert [t.latent for t in select_targets(None, sae, pos, neg, HOOK, top=2)] == [1, 6]
    # without the density filter latent 3 has fire gap 0: still never chosen
    assert 3 not in [t.latent for t in select_targets(None, sae, pos, neg, HOOK, top=7)]
    # a dense latent is excluded even when selective
    rate2 = rate.clone()
    rate2[1] = 0.5
    dens2 = LatentDensity(rate2, torch.ones(D_SAE), torch.zeros(D_SAE, dtype=torch.long), ["x"], 10)
    assert [t.latent for t in select_targets(None, sae, pos, neg, HOOK, 2, dens2)] == [6, 2]
    # a manual choice keeps its weights, L2-normalised, and records the statistics
    man = select_targets(None, sae, pos, neg, HOOK, override={0: 3.0, 1: 4.0})
    assert [(t.latent, round(t.weight, 3)) for t in man] == [(0, 0.6), (1, 0.8)]
    assert man[0].gap == pytest.approx(50 / 4)
    with pytest.raises(ValueError, match="latent ids"):
        select_targets(None, sae, pos, neg, HOOK, override=[99])
    with pytest.raises(ValueError):
        select_targets(None, sae, pos, [], HOOK)


def test_latent_density_and_text_activations_on_a_tiny_model(tiny):
    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=32)
    dens = latent_density(tiny, sae, HOOK, texts=["def f(x): return x + 1. " * 20], window=32)
    assert dens.rate.shape == (32,) and ((0 <= dens.rate) & (dens.rate <= 1)).all()
    assert dens.n_tokens == len(dens.tokens) > 0
    j = int(dens.max_act.argmax())
    ctx = dens.context(j)
    assert ctx is not None and ctx["token"] in ctx["text"]
    acts = text_activations(tiny, sae, ["hello world", "a b c d"], HOOK)
    assert len(acts) == 2 and all(len(p) == f.shape[0] and f.shape[1] == 32 for p, f in acts)
    with pytest.raises(TypeError):
        text_activations(tiny, sae, "one string", HOOK)
