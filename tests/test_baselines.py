from __future__ import annotations

import pytest
import torch

from sae_ts.baselines import caa_vector, find_features, mean_activations, sae_latent_vector
from sae_ts.models import to_tokens

HOOK = "blocks.1.hook_resid_post"


def _by_hand(model, text, positions):
    toks = to_tokens(model, [text])
    _, cache = model.run_with_cache(toks, names_filter=HOOK)
    a = cache[HOOK][0]
    return a[-1] if positions == "last" else a[1:].mean(0)


@pytest.mark.parametrize("positions", ["all", "last"])
def test_caa_matches_a_hand_computation(tiny, positions):
    pos = ["I love London and its red buses", "London is great"]
    neg = ["I love Paris", "Paris has the Eiffel Tower and good bread"]
    v = caa_vector(tiny, pos, neg, HOOK, positions=positions, normalize=False)
    by_hand = torch.stack([_by_hand(tiny, t, positions) for t in pos]).mean(0) - torch.stack(
        [_by_hand(tiny, t, positions) for t in neg]
    ).mean(0)
    # the tiny random model has no attention sinks, so the sink rule keeps every position
    assert torch.allclose(v, by_hand, atol=1e-4), (v - by_hand).abs().max()
    unit = caa_vector(tiny, pos, neg, HOOK, positions=positions)
    assert torch.allclose(unit, by_hand / by_hand.norm(), atol=1e-4)


def test_left_padding_does_not_change_activations(tiny):
    texts = ["a", "a much longer text with many more tokens in it"]
    batched = mean_activations(tiny, texts, HOOK, "all", batch_size=2)
    single = torch.stack([mean_activations(tiny, [t], HOOK, "all")[0] for t in texts])
    assert torch.allclose(batched, single, atol=1e-4)


def test_caa_errors(tiny):
    with pytest.raises(ValueError, match="empty"):
        caa_vector(tiny, [], ["x"], HOOK)
    with pytest.raises(TypeError):
        caa_vector(tiny, "one string", ["x"], HOOK)
    with pytest.raises(ValueError, match="positions"):
        mean_activations(tiny, ["x"], HOOK, "middle")  # type: ignore[arg-type]


def test_sae_latent_vector_and_find_features(tiny):
    from sae_ts.testing import tiny_sae

    sae = tiny_sae(tiny.cfg.d_model, HOOK, d_sae=32)
    v = sae_latent_vector(sae, {3: 1.0, 5: 1.0})
    d3, d5 = sae.W_dec[3] / sae.W_dec[3].norm(), sae.W_dec[5] / sae.W_dec[5].norm()
    assert torch.allclose(v, (d3 + d5) / (d3 + d5).norm(), atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        sae_latent_vector(sae, [99])
    with pytest.raises(ValueError, match="no features"):
        sae_latent_vector(sae, [])
    # a latent built to read a direction that only the positive texts have is found first
    pos = ["wedding bride groom", "the bride and the groom"]
    neg = ["tax return form", "the form and the return"]
    direction = caa_vector(tiny, pos, neg, HOOK)
    with torch.no_grad():
        sae.W_enc[:, 7] = direction * 5
        sae.b_enc[7] = 0.0
    found = find_features(tiny, sae, pos, neg, top=3, sink_ratio=1e9)
    assert found[0][0] == 7 and found[0][1] > 0
