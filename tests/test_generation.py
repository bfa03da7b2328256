"""The one sampler and the KV-cached generation loop."""

from __future__ import annotations

import pytest
import torch

from sae_ts.generation import generate, sample
from sae_ts.models import to_tokens
from sae_ts.steering import steer

HOOK = "blocks.1.hook_resid_post"


def _vecs(d: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def test_sampling_respects_top_k_and_top_p():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]]).expand(200, -1)
    u = torch.rand(200, generator=torch.Generator().manual_seed(0))
    out = sample(logits, u, 1.0, top_k=2, top_p=None)
    assert set(out.tolist()) == {0, 1}
    out = sample(logits, u, 1.0, top_k=None, top_p=0.5)
    assert set(out.tolist()) == {0}
    assert sample(logits, u, 0.0, None, None).unique().tolist() == [0]


@pytest.mark.parametrize("positions", ["all", "from_prompt_end", 3])
def test_kv_cached_generation_matches_uncached(tiny, positions):
    toks = to_tokens(tiny, ["Once upon a time"])
    v = _vecs(tiny.cfg.d_model, 1, seed=1)[0]
    outs = []
    for cached in (True, False):
        with steer(tiny, v, HOOK, scale=4.0, positions=positions):
            outs.append(
                tiny.generate(
                    toks, max_new_tokens=8, do_sample=False, use_past_kv_cache=cached, verbose=False
                )
            )
    assert torch.equal(outs[0], outs[1])
    # sae-ts's own KV-cached loop agrees with TransformerLens's uncached generation
    with steer(tiny, v, HOOK, scale=4.0, positions=positions):
        ours = generate(tiny, toks, 8, temperature=0.0)
    assert torch.equal(ours, outs[1])
    # and steering actually changed the greedy continuation
    plain = generate(tiny, toks, 8, temperature=0.0)
    assert not torch.equal(plain, ours)


def test_sampling_is_seeded(tiny):
    toks = to_tokens(tiny, ["I think"] * 4)
    a = generate(tiny, toks, 6, top_k=50, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b = generate(tiny, toks, 6, top_k=50, top_p=0.9, generator=torch.Generator().manual_seed(3))
    c = generate(tiny, toks, 6, top_k=50, top_p=0.9, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_p_cut_keeps_tokens_until_the_mass_before_them_reaches_top_p():
    # probabilities 0.5, 0.3, 0.2: with top_p=0.5 the first token alone reaches 0.5 -> kept alone
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(500, -1)
    u = torch.rand(500, generator=torch.Generator().manual_seed(1))
    assert set(sample(logits, u, 1.0, None, 0.5).tolist()) == {0}
    assert set(sample(logits, u, 1.0, None, 0.51).tolist()) == {0, 1}


def test_transformer_lens_ignores_top_p_when_top_k_is_given(tiny):
    """The official SAE-TS loop passes top_k=50 and top_p=0.3 to TransformerLens's generate,
    which then samples from the top 50 alone (benchmarks/effects_throughput.py relies on it)."""
    toks = to_tokens(tiny, ["Once upon a time"]).expand(16, -1)
    k = min(50, tiny.cfg.d_vocab // 2)

    def gen(**kw):
        torch.manual_seed(0)
        return tiny.generate(toks, max_new_tokens=6, verbose=False, stop_at_eos=False, **kw)

    assert torch.equal(gen(top_k=k, top_p=0.3), gen(top_k=k))
    assert not torch.equal(gen(top_p=0.3), gen(top_k=k))
